//! Two nodes in two network namespaces on one bridge find each other by mDNS alone (no seeds)
//! and form one cluster. Needs root; elsewhere it skips and says why.

use std::time::Duration;

use clusterfunk_integration::netns::{self, Lab};
use clusterfunk_integration::{logs, view, wait_until, NodeProc};

#[test]
fn two_namespaces_discover_each_other_by_mdns() -> anyhow::Result<()> {
    if let Some(why) = netns::unavailable() {
        clusterfunk_integration::skip("two_namespaces_discover_each_other_by_mdns", &why.to_string());
        return Ok(());
    }
    let lab = Lab::new(2)?;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    let mut nodes: Vec<NodeProc> = (0..2)
        .map(|i| {
            let ip = &lab.ips[i];
            let mut n = NodeProc::new(
                exe,
                dir.path().join(format!("n{i}")),
                format!("{ip}:7000"),
                format!("{ip}:8080"),
                &["--name", "mdns", "--env", "test", "--shards", "32"],
            );
            n.prefix = lab.exec_prefix(i);
            n
        })
        .collect();
    nodes[0].start_with(&["--bootstrap"])?;
    nodes[1].start()?;
    let agreed = wait_until(Duration::from_secs(30), "both nodes up in one cluster with one map", || {
        let (a, b) = (nodes[0].status().ok()?, nodes[1].status().ok()?);
        let up = view::members_in(&a, "up");
        (up.len() == 2
            && view::members_in(&b, "up") == up
            && view::leader(&a).is_some()
            && view::leader(&a) == view::leader(&b)
            && view::map(&a) == view::map(&b)
            && view::owners(&a) == (up.clone(), 32))
            .then_some(up)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;
    eprintln!("formed by mDNS: {agreed:?}");
    drop(nodes);
    drop(lab);
    Ok(())
}
