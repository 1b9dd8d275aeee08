//! The sharded KV example as a user tries it: three nodes, PUT on one, GET/CAS/DELETE on the
//! others; every answer names the node and shard that served it.

use std::time::Duration;

use clusterfunk_integration::{http, start_cluster, wait_formed, NodeProc};
use serde_json::Value;

fn call(n: &NodeProc, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http(&n.service().expect("the KV API's address"), method, path, body).expect("http");
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn put_on_one_node_read_on_the_others() -> anyhow::Result<()> {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cf-kv"));
    let dir = tempfile::tempdir()?;
    let nodes = start_cluster(
        exe,
        dir.path(),
        3,
        &["--name", "kvtest", "--no-mdns", "--shards", "64", "--http", "127.0.0.1:0"],
    )?;
    wait_formed(&nodes, 64, Duration::from_secs(30))?;

    let (code, put) = call(&nodes[0], "PUT", "/kv/greeting", r#""hello""#);
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["value"], "hello");
    let write_id = put["write_id"].clone();
    assert!(write_id.is_string());
    for n in &nodes[1..] {
        let (code, got) = call(n, "GET", "/kv/greeting", "");
        assert_eq!((code, &got["value"], &got["write_id"]), (200, &Value::from("hello"), &write_id), "{got}");
        assert_eq!((&got["node"], &got["shard"]), (&put["node"], &put["shard"]), "the same entity answers");
    }
    let (code, failed) = call(&nodes[1], "POST", "/kv/greeting/cas", r#"{"expect": "nope", "value": "x"}"#);
    assert_eq!((code, &failed["value"]), (409, &Value::from("hello")), "{failed}");
    let (code, swapped) = call(&nodes[2], "POST", "/kv/greeting/cas", r#"{"expect": "hello", "value": "world"}"#);
    assert_eq!((code, &swapped["value"]), (200, &Value::from("world")), "{swapped}");
    assert_ne!(swapped["write_id"], write_id, "each write has its own id");
    let (code, _) = call(&nodes[0], "DELETE", "/kv/greeting", "");
    assert_eq!(code, 200);
    let (code, gone) = call(&nodes[1], "GET", "/kv/greeting", "");
    assert_eq!(code, 404, "{gone}");
    assert!(gone["node"].is_string() && gone["shard"].is_u64(), "a 404 still says who answered: {gone}");
    let (code, _) = call(&nodes[2], "POST", "/kv/fresh/cas", r#"{"expect": null, "value": "first"}"#);
    assert_eq!(code, 200, "CAS from absent");

    // A cross-site form post cannot write: forms send these content types, never JSON.
    for ct in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"] {
        for (method, path, body) in [
            ("POST", "/kv/fresh/cas", r#"{"expect": "first", "value": "forged"}"#),
            ("POST", "/kv/fresh/append", r#""forged""#),
            ("PUT", "/kv/fresh", r#""forged""#),
        ] {
            let code = raw(&nodes[0], method, path, ct, body.as_bytes());
            assert_eq!(code, 415, "{method} {path} as {ct}");
        }
    }
    let (_, fresh) = call(&nodes[1], "GET", "/kv/fresh", "");
    assert_eq!((&fresh["value"], fresh["set"].as_array().map(Vec::len)), (&Value::from("first"), Some(0)), "{fresh}");
    // What a key stores is bounded; over it, nothing is stored.
    let big = serde_json::Value::from("x".repeat(clusterfunk_kv::MAX_VALUE + 1)).to_string();
    let code = raw(&nodes[0], "PUT", "/kv/fresh", "application/json", big.as_bytes());
    assert_eq!(code, 413, "a value over the bound");
    let long = serde_json::Value::from("y".repeat(clusterfunk_kv::MAX_ELEMENT + 1)).to_string();
    assert_eq!(raw(&nodes[0], "POST", "/kv/fresh/append", "application/json", long.as_bytes()), 413);
    let (_, fresh) = call(&nodes[2], "GET", "/kv/fresh", "");
    assert_eq!((&fresh["value"], fresh["set"].as_array().map(Vec::len)), (&Value::from("first"), Some(0)), "{fresh}");
    Ok(())
}

/// One request with the given content type; returns the status code.
fn raw(n: &NodeProc, method: &str, path: &str, content_type: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let addr = n.service().expect("the KV API's address");
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        addr,
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).expect("send");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
