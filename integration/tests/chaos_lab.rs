//! The CI subset of the chaos lab: every scenario marked `[ci]` in `chaos --list`, each once
//! with a short hold (`--quick`), on real processes in network namespaces. Root only: without it
//! the tests say why and skip. The full matrix is `chaos --all` (README).

use std::path::Path;
use std::sync::Mutex;

use clusterfunk_integration::chaos::{linear::Verdict, scenarios};
use clusterfunk_integration::netns;

/// The lab's names derive from the process id: one lab at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenario(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = netns::unavailable() {
        clusterfunk_integration::skip(&format!("the chaos scenario {name}"), &why.to_string());
        return;
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-kv"));
    let r = scenarios::run(exe, name, 1, true).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    eprintln!("{}  ops={:?} lost_to_moves={} notes={:?}", r.line(), r.ops, r.lost_to_moves, r.notes);
    assert_eq!(r.overlap, 0, "{name}: a shard was served on two nodes at once");
    assert_eq!(r.lost, 0, "{name}: acknowledged writes lost without a move");
    assert_eq!(r.verdict, Verdict::Yes, "{name}: not shown linearizable (unknown is a failure): {:?}", r.notes);
    assert_eq!(r.recovery.unrecovered, 0, "{name}: keys never answered again: {:?}", r.notes);
    assert!(r.passed());
    assert!(r.ops.1 > 100, "{name}: too few answered operations to mean anything: {:?}", r.ops);
}

#[test]
fn the_ci_subset_is_what_these_tests_run() {
    let ci: Vec<&str> = scenarios::all().iter().filter(|s| s.ci).map(|s| s.name).collect();
    assert_eq!(
        ci,
        [
            "leader-kill",
            "owner-kill",
            "leader-minority",
            "restart-all",
            "sigstop-owner",
            "dup-reorder",
            "garbage-frames",
            "wrong-secret",
            "slow-disk-leader",
        ]
    );
}

#[test]
fn leader_kill() {
    scenario("leader-kill");
}

#[test]
fn owner_kill() {
    scenario("owner-kill");
}

#[test]
fn leader_minority() {
    scenario("leader-minority");
}

#[test]
fn restart_all() {
    scenario("restart-all");
}

#[test]
fn sigstop_owner() {
    scenario("sigstop-owner");
}

#[test]
fn dup_reorder() {
    scenario("dup-reorder");
}

#[test]
fn slow_disk_leader() {
    scenario("slow-disk-leader");
}

#[test]
fn garbage_frames() {
    scenario("garbage-frames");
}

#[test]
fn wrong_secret() {
    scenario("wrong-secret");
}
