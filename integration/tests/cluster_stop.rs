//! A whole-cluster stop is not a failure: SIGTERM to every node of a serving 3-node cluster at
//! once (what Ctrl-C on `demo --local 3` does) ends every process with exit code 0, logs no
//! ERROR, and takes about a second at most (the leader does not try to hand over to peers that
//! are leaving too).

use std::time::{Duration, Instant};

use clusterfunk_integration::{logs, start_cluster, wait_formed, wait_until};

#[test]
fn sigterm_to_every_node_at_once_stops_cleanly() -> anyhow::Result<()> {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    let mut nodes =
        start_cluster(exe, dir.path(), 3, &["--name", "stop", "--no-mdns", "--shards", "64", "--traffic", "20"])?;
    wait_formed(&nodes, 64, Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let started = Instant::now();
    // Log lines carry RFC 3339 UTC times: the ones from the stop on sort at or after this.
    let stop_at = rfc3339_now();
    for n in &mut nodes {
        assert!(n.signal(libc::SIGTERM), "the node runs");
    }
    let codes = wait_until(Duration::from_secs(20), "every node exited", || {
        let codes: Vec<Option<i32>> = nodes.iter_mut().map(|n| n.exited()).collect::<Option<_>>()?;
        Some(codes)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    let took = started.elapsed();
    eprintln!("whole-cluster stop: {took:?}, exit codes {codes:?}");
    assert!(codes.iter().all(|c| *c == Some(0)), "exit codes {codes:?}\n{}", logs(&nodes));
    for n in &nodes {
        let log = std::fs::read_to_string(n.log_path())?;
        // ERRORs before the stop (openraft logs a replication RPC that timed out on a starved
        // machine as one) are not the stop's: shown, not counted.
        let (before, during): (Vec<&str>, Vec<&str>) = log
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .partition(|l| l.get(..stop_at.len()).is_some_and(|t| t < stop_at.as_str()));
        if !before.is_empty() {
            eprintln!("ERRORs before the stop (not the stop's):\n{}", before.join("\n"));
        }
        assert!(during.is_empty(), "a normal stop logged ERRORs (stop at {stop_at}):\n{}", during.join("\n"));
        let saw = log.contains("every member is leaving") || log.contains("handed off");
        assert!(saw, "the node left by the whole-cluster path or after handing off:\n{}", n.log_tail(20));
    }
    Ok(())
}

/// Now as the nodes' log lines start: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    let (days, secs) = (d.as_secs() / 86_400, d.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        d.subsec_micros()
    )
}
