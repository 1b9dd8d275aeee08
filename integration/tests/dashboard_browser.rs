//! The status page in a real headless browser (Debian's `chromium`): it renders the members,
//! the leader and live message rates from `/api/cluster`. Skips, saying why, without chromium.

use std::process::Command;
use std::time::Duration;

use clusterfunk_integration::{start_cluster, view, wait_until};

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// The page's DOM after its scripts ran for `budget_ms` of virtual time.
fn dump_dom(browser: &str, url: &str, profile: &std::path::Path, budget_ms: u32) -> anyhow::Result<String> {
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(["--dump-dom", url])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn status_page_renders_members_leader_and_rates() -> anyhow::Result<()> {
    let Some(browser) = chromium() else {
        clusterfunk_integration::skip(
            "status_page_renders_members_leader_and_rates",
            "chromium is not installed (apt-get install chromium)",
        );
        return Ok(());
    };
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    // A harmless fault plan, so the page must show that fault injection is on.
    let nodes = start_cluster(
        exe,
        dir.path(),
        3,
        &["--name", "page", "--no-mdns", "--shards", "64", "--traffic", "200", "--faults", "delay=0ms..1ms"],
    )?;
    let leader = wait_until(Duration::from_secs(30), "3 members up with traffic", || {
        let s = nodes[0].status().ok()?;
        (view::members_in(&s, "up").len() == 3 && s["traffic"]["local"].as_u64()? > 0)
            .then(|| view::leader(&s))
            .flatten()
    })?;
    let url = format!("http://{}/", nodes[0].dashboard);
    let dom = wait_until(Duration::from_secs(60), "the page to show 3 members and a rate", || {
        let dom = dump_dom(browser, &url, &dir.path().join("profile"), 3000).ok()?;
        let rows = dom.matches("<td class=\"up\">up</td>").count();
        (rows == 3 && dom.contains(&leader) && !dom.contains("id=\"sent\">0<")).then_some(dom)
    })?;
    assert!(dom.contains("page/dev"), "cluster name shown");
    assert_eq!(dom.matches(">voter<").count(), 3, "three voters listed");
    assert!(dom.contains("<div id=\"error\" class=\"down\"></div>"), "no error shown");
    assert!(dom.contains("fault injection on: delay=0us..1000us"), "a node under fault injection says so");
    Ok(())
}
