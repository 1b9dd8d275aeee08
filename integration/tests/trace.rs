//! Traces across the hop: two nodes in this process over real libp2p connections, a tracing
//! layer that records every span opened. A message sent from one node to an entity on the other
//! is one trace: the receiver's `clusterfunk.handle` span has the sender's `trace_id` and the
//! sender's `clusterfunk.send` span as its parent, and the handler sees that context through
//! `clusterfunk::traceparent()`. The same holds on the local fast path.

use std::collections::HashMap;

use clusterfunk_integration::inproc::{keys_on, pair, Tally, Traced};
use clusterfunk_integration::spans::{Capture, Spans};
use tracing_subscriber::layer::SubscriberExt;

/// The `clusterfunk.handle` span whose trace context the handler reported, and the
/// `clusterfunk.send` span it continues.
fn spans_of(spans: &Spans, traceparent: &str) -> (HashMap<String, String>, HashMap<String, String>) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {traceparent}");
    let (trace, span) = (parts[1], parts[2]);
    let all = spans.all();
    let handle =
        spans.find("clusterfunk.handle", span).unwrap_or_else(|| panic!("no handle span {span} among {all:?}"));
    assert_eq!(handle.get("trace_id").map(String::as_str), Some(trace));
    let parent = handle.get("parent_span_id").cloned().expect("the handle span has a parent");
    let send = spans.find("clusterfunk.send", &parent).unwrap_or_else(|| panic!("no send span {parent} among {all:?}"));
    (handle, send)
}

#[test]
fn a_message_is_one_trace_from_the_sender_to_the_entity_across_nodes() -> anyhow::Result<()> {
    let spans = Spans::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture(spans.clone())))?;
    actix_rt::System::new().block_on(async move {
        let dir = tempfile::tempdir()?;
        let (a, b) = pair(dir.path(), "trace").await?;
        let sharded = a.sharded::<Tally>();

        // Across the hop: a key b owns, sent from a.
        let remote = keys_on(&a, b.node_id(), 0, 1)[0];
        let served_before = b.status().traffic.served;
        let tp = sharded.send(&remote, Traced).await?.expect("the handler runs under a trace context");
        assert!(b.status().traffic.served > served_before, "the message crossed to b and was served there");
        let (handle, send) = spans_of(&spans, &tp);
        assert_eq!(handle.get("trace_id"), send.get("trace_id"), "one trace across the hop");
        assert!(!send.contains_key("parent_span_id"), "the send started the trace");
        assert_eq!(send.get("entity"), handle.get("entity"), "both sides name the entity type alike");

        // The local fast path continues the trace the same way.
        let local = keys_on(&a, a.node_id(), 0, 1)[0];
        let tp_local = sharded.send(&local, Traced).await?.expect("a trace context");
        let (handle, send) = spans_of(&spans, &tp_local);
        assert_eq!(handle.get("trace_id"), send.get("trace_id"));
        assert_ne!(tp_local.split('-').nth(1), tp.split('-').nth(1), "two sends, two traces");
        Ok::<_, anyhow::Error>(())
    })
}
