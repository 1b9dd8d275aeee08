//! Traces across the hop, seen by an OpenTelemetry exporter (feature `opentelemetry`): two nodes
//! in this process over real libp2p connections, a subscriber with the `tracing_opentelemetry`
//! layer exporting to the SDK's in-memory exporter. A user's span around a send, the send's span
//! and the receiving node's handler span are one OpenTelemetry trace, each the parent of the next;
//! the same when the caller's context is an OpenTelemetry context it attached, and on the local
//! path. The trace fields a plain subscriber sees name the same ids as the exporter, and an
//! unsampled caller's message is not sampled on the other node either.

use std::time::{Duration, Instant};

use clusterfunk_integration::inproc::{keys_on, pair, Tally, Traced};
use clusterfunk_integration::spans::{Capture, Spans};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider as _,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Waits until the exporter holds a finished span named `name` of `trace` (a span is exported
/// when it ends: a handler's after its message was answered).
fn wait_span(exporter: &InMemorySpanExporter, trace: TraceId, name: &str) -> SpanData {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = exporter.get_finished_spans().expect("the in-memory exporter answers");
        if let Some(s) = spans.iter().find(|s| s.span_context.trace_id() == trace && s.name == name) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "no finished span {name} of trace {trace} among {spans:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The handler's `traceparent()` is the exported handler span's context.
fn assert_is(tp: &str, span: &SpanData) {
    let want = format!("00-{}-{}-01", span.span_context.trace_id(), span.span_context.span_id());
    assert_eq!(tp, want, "the handler's traceparent is its OpenTelemetry span");
}

/// The fields a plain subscriber recorded on the exported span name the exporter's ids: its
/// trace, itself, and the parent the exporter records.
fn assert_fields(spans: &Spans, span: &SpanData) {
    let id = span.span_context.span_id().to_string();
    let fields =
        spans.find(&span.name, &id).unwrap_or_else(|| panic!("no {} span {id} among {:?}", span.name, spans.all()));
    assert_eq!(fields.get("trace_id"), Some(&span.span_context.trace_id().to_string()), "{fields:?}");
    let parent = (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
    assert_eq!(fields.get("parent_span_id"), parent.as_ref(), "the recorded parent is the exported one: {fields:?}");
}

fn trace_of(tp: &str) -> TraceId {
    TraceId::from_hex(tp.split('-').nth(1).expect("a traceparent")).expect("hex")
}

#[test]
fn an_opentelemetry_exporter_sees_one_trace_from_the_caller_to_the_entity_across_nodes() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let tracer = provider.tracer("otel-test");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer.clone());
    let spans = Spans::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer).with(Capture(spans.clone())))?;
    actix_rt::System::new().block_on(async move {
        let dir = tempfile::tempdir()?;
        let (a, b) = pair(dir.path(), &format!("otel-{}", std::process::id())).await?;
        let sharded = a.sharded::<Tally>();
        let remote = keys_on(&a, b.node_id(), 0, 1)[0];

        // A user's tracing span around the send: request -> clusterfunk.send -> clusterfunk.handle.
        let served_before = b.status().traffic.served;
        let request = tracing::info_span!("request");
        let tp = async { sharded.send(&remote, Traced).await }
            .instrument(request.clone())
            .await?
            .expect("the handler runs under a trace context");
        drop(request);
        assert!(b.status().traffic.served > served_before, "the message crossed to b and was served there");
        let trace = trace_of(&tp);
        let (req, send, handle) = (
            wait_span(&exporter, trace, "request"),
            wait_span(&exporter, trace, "clusterfunk.send"),
            wait_span(&exporter, trace, "clusterfunk.handle"),
        );
        assert_eq!(req.parent_span_id, SpanId::INVALID, "the user's span is the root");
        assert_eq!(send.parent_span_id, req.span_context.span_id(), "the send is a child of the caller's span");
        assert_eq!(handle.parent_span_id, send.span_context.span_id(), "the handler is a child of the send");
        assert!(handle.parent_span_is_remote, "its parent came over the wire");
        assert_is(&tp, &handle);
        assert_fields(&spans, &send);
        assert_fields(&spans, &handle);

        // An OpenTelemetry context the caller attached, inside a tracing span of its own: the
        // attached context is the parent (as the layer itself picks a new span's parent).
        let outer = tracer.start("outer");
        let outer_id = outer.span_context().span_id();
        let cx = opentelemetry::Context::current_with_span(outer);
        let fut = {
            let _in = tracing::info_span!("around").entered();
            let _attached = cx.clone().attach();
            sharded.send(&remote, Traced)
        };
        let tp = fut.await?.expect("a trace context");
        cx.span().end();
        let trace = trace_of(&tp);
        assert_eq!(trace, cx.span().span_context().trace_id(), "the send continued the attached context's trace");
        let send = wait_span(&exporter, trace, "clusterfunk.send");
        let handle = wait_span(&exporter, trace, "clusterfunk.handle");
        assert_eq!(send.parent_span_id, outer_id);
        assert_eq!(handle.parent_span_id, send.span_context.span_id());
        assert_is(&tp, &handle);
        assert_fields(&spans, &send);
        assert_fields(&spans, &handle);

        // An unsampled caller: the message carries flags 00 and the other node samples nothing
        // of it. The next (sampled) message to the same instance is handled after it, so once
        // that one's span is exported, the unsampled one's would have been.
        let unsampled = SpanContext::new(
            TraceId::from(0x5eed_u128),
            SpanId::from(0xcafe_u64),
            TraceFlags::default(),
            true,
            TraceState::NONE,
        );
        let fut = {
            let _attached = opentelemetry::Context::new().with_remote_span_context(unsampled.clone()).attach();
            sharded.send(&remote, Traced)
        };
        let tp = fut.await?.expect("a trace context");
        assert!(tp.starts_with(&format!("00-{}-", unsampled.trace_id())) && tp.ends_with("-00"), "{tp}");
        let after = async { sharded.send(&remote, Traced).await }.instrument(tracing::info_span!("request")).await?;
        wait_span(&exporter, trace_of(&after.expect("a context")), "clusterfunk.handle");
        let leaked: Vec<_> = exporter
            .get_finished_spans()?
            .into_iter()
            .filter(|s| s.span_context.trace_id() == unsampled.trace_id())
            .collect();
        assert!(leaked.is_empty(), "an unsampled caller's message was sampled: {leaked:#?}");

        // The local fast path is the same trace shape.
        let local = keys_on(&a, a.node_id(), 0, 1)[0];
        let request = tracing::info_span!("request");
        let tp = async { sharded.send(&local, Traced).await }.instrument(request.clone()).await?.expect("a context");
        drop(request);
        let trace = trace_of(&tp);
        let req = wait_span(&exporter, trace, "request");
        let send = wait_span(&exporter, trace, "clusterfunk.send");
        let handle = wait_span(&exporter, trace, "clusterfunk.handle");
        assert_eq!(send.parent_span_id, req.span_context.span_id());
        assert_eq!(handle.parent_span_id, send.span_context.span_id());
        assert!(!handle.parent_span_is_remote, "on the local path the parent is in this process");
        assert_is(&tp, &handle);
        assert_fields(&spans, &send);
        assert_fields(&spans, &handle);
        Ok::<_, anyhow::Error>(())
    })?;
    provider.shutdown()?;
    Ok(())
}
