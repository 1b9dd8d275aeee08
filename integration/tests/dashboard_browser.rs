//! The dashboard in a real headless browser (Debian's `chromium`, driven over the DevTools
//! protocol): loaded once, it lists the members, draws every shard of the map, shows rates, and
//! shows a killed node down without a reload. Screenshots of a 3-node and a 10,000-shard
//! cluster are written to `target/test-artifacts/`. Skips without chromium, except under CI,
//! where it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterfunk_integration::browser::{chromium, Browser};
use clusterfunk_integration::{logs, start_cluster, view, wait_formed, wait_until};

const T: Duration = Duration::from_secs(60);

fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts").join(name)
}

/// The grid's state as the page drew it: `<drawn>/<unassigned>` once drawn.
const GRID: &str = "(() => { const g = document.getElementById('grid'); \
                    return g.dataset.drawn ? g.dataset.drawn + '/' + g.dataset.unassigned : null })()";

#[test]
fn the_page_lists_members_draws_every_shard_and_shows_a_killed_node_down_without_reload() -> anyhow::Result<()> {
    let Some(binary) = chromium() else {
        clusterfunk_integration::skip("dashboard_browser", "chromium is not installed (apt-get install chromium)");
        return Ok(());
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    // A harmless fault plan, so the page must show that fault injection is on.
    let token = dir.path().join("token");
    std::fs::write(&token, "dashboard-test-token-0123456789\n")?;
    let tf = token.to_string_lossy().to_string();
    // A cluster name of this run's own: a run beside it (another test process) never meets it.
    let name = format!("page{}", std::process::id());
    let args = [
        "--name",
        &name,
        "--no-mdns",
        "--shards",
        "256",
        "--traffic",
        "200",
        "--faults",
        "delay=0ms..1ms",
        "--token-file",
        &tf,
    ];
    let mut nodes = start_cluster(exe, dir.path(), 3, &args)?;
    let ids = wait_formed(&nodes, 256, T)?;
    let leader = wait_until(T, "3 members up with traffic", || {
        let s = nodes[0].status().ok()?;
        (view::members_in(&s, "up").len() == 3 && s["traffic"]["local"].as_u64()? > 0)
            .then(|| view::leader(&s))
            .flatten()
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))?;

    let url = format!("http://{}/", nodes[0].dashboard);
    let mut page = Browser::open(binary, &url, 1400, 1200)?;
    // A mark the page keeps only if it is never reloaded.
    page.eval("window.__loaded_once = 42")?;

    let up = "document.querySelectorAll('#members tbody tr[data-state=up]').length";
    page.wait_for(T, "3 members up", &format!("{up} === 3"))?;
    // Every shard drawn, each with an owner (while the cluster forms some have none yet).
    page.wait_for(T, "the grid drawn with every shard owned", &format!("{GRID} === '256/0'"))?;
    page.wait_for(T, "a message rate", "+document.getElementById('sent').textContent > 0")?;
    let text = page.eval("document.body.innerText")?.as_str().unwrap_or_default().to_string();
    assert!(text.contains(&format!("{name}/dev")), "the cluster's name is shown");
    assert!(text.contains("fault injection on: delay=0us..1000us"), "a node under fault injection says so");
    assert!(text.contains(&leader[leader.len() - 6..]), "the leader is shown");
    page.wait_for(
        T,
        "the members' owned shards adding up to the map",
        "[...document.querySelectorAll('#members tbody tr')].map(r => +r.cells[6].textContent).reduce((a, b) => a + b, 0) === 256",
    )?;
    let roles =
        page.eval("[...document.querySelectorAll('#members tbody tr')].map(r => r.cells[2].textContent).join(',')")?;
    assert_eq!(roles, "voter,voter,voter");
    page.wait_for(T, "the events timeline", "document.querySelectorAll('#timeline div').length > 0")?;
    let shot = page.screenshot(&artifact("dashboard-3-nodes.png"))?;
    eprintln!("screenshot: {}", shot.display());

    // Management from the page. Without the token every action is disabled; a wrong token is
    // refused and changes nothing.
    let all_disabled = "[...document.querySelectorAll('[data-act]')].every(b => b.disabled)";
    assert_eq!(page.eval(all_disabled)?, true, "no action without the token");
    let set_token = |t: &str| {
        format!("(() => {{ const t = document.getElementById('token'); t.value = '{t}'; t.dispatchEvent(new Event('input')); return true }})()")
    };
    page.eval(&set_token("not-the-token"))?;
    page.eval("document.getElementById('stepdown').click()")?;
    page.wait_for(
        T,
        "the wrong token refused",
        "document.getElementById('actionlog').textContent.includes('step down: 401')",
    )?;
    assert_eq!(
        view::leader(&nodes[0].status()?).as_deref(),
        Some(leader.as_str()),
        "a refused step-down changes nothing"
    );
    // The right token: pin shard 0 to a node that does not own it; the grid shows it moved.
    page.eval(&set_token("dashboard-test-token-0123456789"))?;
    let owner0 = page.eval("map.nodes[map.owner[0]]")?.as_str().unwrap_or_default().to_string();
    let target = ids[..2].iter().find(|id| **id != owner0).expect("a node other than the owner").clone();
    page.eval(&format!(
        "(() => {{ document.getElementById('mvshard').value = 0; document.getElementById('mvto').value = '{target}'; \
         document.getElementById('mvbtn').click(); return true }})()"
    ))?;
    page.wait_for(
        T,
        "shard 0 drawn on its new owner, the handoff done",
        &format!("map.nodes[map.owner[0]] === '{target}' && map.handoffs.length === 0"),
    )?;
    // A rebalance plan is shown before it is committed; then committed. The leader refuses a
    // plan while a handoff is in flight and a commit once the cluster changed since the plan
    // (the pin's own rebalance may still be settling): the operator looks again, as here.
    let shown = "document.getElementById('plan').innerText.includes('Nothing moves until you commit')";
    let log = "document.getElementById('actionlog').textContent";
    let deadline = std::time::Instant::now() + T;
    let committed = loop {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no plan committed: {}", page.eval(log)?);
        page.eval(&format!("{log} = ''"))?;
        page.eval("document.getElementById('planbtn').click()")?;
        page.wait_for(T, "the plan answered", &format!("{log}.includes('plan:')"))?;
        if page.eval(shown)? != true {
            continue;
        }
        assert_eq!(page.eval("document.getElementById('commitbtn').disabled")?, false, "a shown plan can be committed");
        page.eval("document.getElementById('commitbtn').click()")?;
        let commit = page.wait_for(
            T,
            "the commit answered",
            &format!("{log}.split('\\n').find(l => l.includes('commit plan')) || null"),
        )?;
        let commit = commit.as_str().unwrap_or_default().to_string();
        if commit.ends_with(": done") {
            break commit;
        }
        assert!(commit.contains("409 the cluster changed since plan"), "only a changed cluster refuses it: {commit}");
    };
    eprintln!("{committed}");

    // Kill a node that is not the one serving the page: it shows down, without a reload.
    let victim = 2;
    nodes[victim].kill();
    let victim_id = &ids[victim];
    page.wait_for(
        T,
        "the killed node shown down",
        &format!("[...document.querySelectorAll('#members tbody tr')].some(r => r.dataset.state === 'down' && r.cells[0].title === '{victim_id}')"),
    )?;
    page.wait_for(
        T,
        "the timeline to report it",
        "[...document.querySelectorAll('#timeline div[data-kind=down]')].length > 0",
    )?;
    assert_eq!(page.eval("window.__loaded_once")?, 42, "the page was not reloaded");
    assert_eq!(page.eval(up)?, 2, "the two others stay up");
    let shot = page.screenshot(&artifact("dashboard-node-down.png"))?;
    eprintln!("screenshot: {}", shot.display());
    Ok(())
}

#[test]
fn a_ten_thousand_shard_map_is_drawn_whole_and_a_shard_can_be_inspected() -> anyhow::Result<()> {
    let Some(binary) = chromium() else {
        clusterfunk_integration::skip("dashboard_browser", "chromium is not installed (apt-get install chromium)");
        return Ok(());
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_cf-node"));
    let dir = tempfile::tempdir()?;
    let name = format!("bigmap{}", std::process::id());
    // Slower Raft and failure-detector timings than the defaults: this test is about the page,
    // and beside the rest of the suite on 2 cores a 10,000-shard cluster with the defaults
    // (50 ms heartbeats, votes timing out at 150 ms) can churn leadership and move shards for
    // a minute (docs/operations.md, "Dashboard").
    let timings = [
        "--raft-heartbeat",
        "250ms",
        "--election-timeout-min",
        "1500ms",
        "--election-timeout-max",
        "3s",
        "--lease",
        "2s",
        "--suspect-after",
        "3s",
        "--down-after",
        "6s",
    ];
    let mut args = vec!["--name", &name, "--no-mdns", "--shards", "10000", "--traffic", "50"];
    args.extend(timings);
    let nodes = start_cluster(exe, dir.path(), 3, &args)?;
    wait_formed(&nodes, 10_000, T)?;
    let url = format!("http://{}/", nodes[1].dashboard);
    let mut page = Browser::open(binary, &url, 1400, 1500)?;
    page.wait_for(T, "the 10,000-shard grid drawn, every shard owned", &format!("{GRID} === '10000/0'"))?;
    // Three owners in the legend (`<node> · <count>`), their counts adding up, each owning some.
    let state = "document.getElementById('legend').innerText + ' | ' + document.getElementById('mapinfo').textContent \
                 + ' | ' + document.getElementById('error').textContent";
    page.wait_for(
        T,
        "a legend of three owners adding up to 10,000",
        "(() => { const c = [...document.querySelectorAll('#legend > span')].map(s => +s.textContent.split('·')[1]); \
         return c.length === 3 && c.every(n => n > 0) && c.reduce((a, b) => a + b, 0) === 10000 })()",
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}; the page shows {}; the node: {}\n{}",
            page.eval(state).unwrap_or_default(),
            nodes[1].status().map(|s| s["shard_map"].to_string()).unwrap_or_default(),
            logs(&nodes)
        )
    })?;
    // Hover a cell: the tooltip names the shard, its owner and epoch.
    let at = page.eval(
        "(() => { const r = document.getElementById('grid').getBoundingClientRect(); \
         return [r.left + cell * 7.5, r.top + cell * 2.5] })()",
    )?;
    let (x, y) = (at[0].as_f64().unwrap_or(0.0), at[1].as_f64().unwrap_or(0.0));
    page.call("Input.dispatchMouseEvent", serde_json::json!({ "type": "mouseMoved", "x": x, "y": y }))?;
    let tip = page.wait_for(
        T,
        "the tooltip",
        "document.getElementById('tip').style.display === 'block' && document.getElementById('tip').textContent",
    )?;
    let expected = page.eval("'shard ' + (2 * cols + 7)")?;
    let tip = tip.as_str().unwrap_or_default().to_string();
    let first = tip.lines().next().unwrap_or_default();
    assert!(first == expected.as_str().unwrap_or("?") && tip.contains("owner") && tip.contains("epoch"), "{tip}");
    // Click it: the details panel shows what the node holds of it.
    for kind in ["mousePressed", "mouseReleased"] {
        page.call(
            "Input.dispatchMouseEvent",
            serde_json::json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
        )?;
    }
    page.wait_for(
        T,
        "the shard's details",
        "(() => { const t = document.getElementById('shard').innerText; \
         return t.includes('entities here') && t.split('\\n')[1] === String(2 * cols + 7) })()",
    )?;
    let shot = page.screenshot(&artifact("dashboard-10000-shards.png"))?;
    eprintln!("screenshot: {}", shot.display());
    Ok(())
}
