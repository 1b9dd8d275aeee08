//! Traces across the hop: two nodes in this process over real libp2p connections, a tracing
//! layer that records every span opened. A message sent from one node to an entity on the other
//! is one trace: the receiver's `clusterfunk.handle` span has the sender's `trace_id` and the
//! sender's `clusterfunk.send` span as its parent, and the handler sees that context through
//! `clusterfunk::traceparent()`. The same holds on the local fast path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clusterfunk_integration::inproc::{keys_on, pair, Tally, Traced};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Each span opened, with its fields: those given at its start and those recorded later (the
/// trace ids are recorded right after the span opens).
type Spans = Arc<Mutex<Vec<(Id, String, HashMap<String, String>)>>>;

struct Capture(Spans);

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name().starts_with("clusterfunk.") {
            let mut f = Fields::default();
            attrs.record(&mut f);
            self.0.lock().unwrap().push((id.clone(), attrs.metadata().name().to_string(), f.0));
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, _, fields)) = spans.iter_mut().rev().find(|(i, _, _)| i == id) {
            let mut f = Fields(std::mem::take(fields));
            values.record(&mut f);
            *fields = f.0;
        }
    }
}

/// The `clusterfunk.handle` span whose trace context the handler reported, and the
/// `clusterfunk.send` span it continues.
fn spans_of(spans: &Spans, traceparent: &str) -> (HashMap<String, String>, HashMap<String, String>) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {traceparent}");
    let (trace, span) = (parts[1], parts[2]);
    let all: Vec<(String, HashMap<String, String>)> =
        spans.lock().unwrap().iter().map(|(_, n, f)| (n.clone(), f.clone())).collect();
    let handle = all
        .iter()
        .find(|(n, f)| n == "clusterfunk.handle" && f.get("span_id").map(String::as_str) == Some(span))
        .map(|(_, f)| f.clone())
        .unwrap_or_else(|| panic!("no handle span {span} among {all:?}"));
    assert_eq!(handle.get("trace_id").map(String::as_str), Some(trace));
    let parent = handle.get("parent_span_id").cloned().expect("the handle span has a parent");
    let send = all
        .iter()
        .find(|(n, f)| n == "clusterfunk.send" && f.get("span_id") == Some(&parent))
        .map(|(_, f)| f.clone())
        .unwrap_or_else(|| panic!("no send span {parent} among {all:?}"));
    (handle, send)
}

#[test]
fn a_message_is_one_trace_from_the_sender_to_the_entity_across_nodes() -> anyhow::Result<()> {
    let spans: Spans = Arc::default();
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
