//! Traces across the hop (docs/architecture.md §14): every message carries a W3C trace context
//! (`traceparent`), and the handler runs inside a span that continues it, so one request is one
//! trace from the caller to the entity, across nodes.
//!
//! - A send (`Sharded::send`, `send_to_replicas`) opens a `clusterfunk.send` span: a child of the
//!   message being handled on this thread (a handler sending on), else of a new trace. Its
//!   context goes into the envelope (`Envelope::trace`, an appended optional field: a build
//!   before it skips it).
//! - The receiver runs the handler inside a `clusterfunk.handle` span, a child of the sender's;
//!   [`traceparent`] gives the handler its context (to hand to an OpenTelemetry propagator, or a
//!   downstream HTTP call).
//!
//! Both spans carry `trace_id`, `span_id` and `parent_span_id` (lower-case hex) as fields, so a
//! subscriber joins the two sides by `trace_id`. A peer's `traceparent` that is not exactly the
//! W3C form (version 00, non-zero ids) is ignored (a new trace starts): it never refuses the
//! message, and nothing of it is logged but the parsed ids.
//!
//! With the feature `opentelemetry` and a `tracing_opentelemetry` layer, the ids are
//! OpenTelemetry's and each span's OpenTelemetry parent is set explicitly (module `otel`).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A W3C trace context: the trace, this span, and the flags (bit 0: sampled); `remote` when it
/// came over the wire (parsed from a peer's envelope), not from a send on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) flags: u8,
    pub(crate) remote: bool,
}

thread_local! {
    static CURRENT: Cell<Option<TraceContext>> = const { Cell::new(None) };
}

/// The W3C `traceparent` of the message being handled, inside a sharded entity's handler (on its
/// thread, while the handler's synchronous part runs): `00-<trace id>-<span id>-<flags>`. `None`
/// outside a handler, and inside the future a handler returns (`ResponseActFuture`): read it in
/// the handler and move it into the future to continue the trace there.
///
/// ```
/// assert_eq!(clusterfunk::traceparent(), None); // not inside a handler
/// ```
pub fn traceparent() -> Option<String> {
    CURRENT.with(|c| c.get()).map(|t| t.traceparent())
}

/// 64 random bits (not for secrets: ids only). `RandomState` is seeded per process from the OS;
/// a counter makes every call differ.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    match h.finish() {
        0 => 1,
        n => n,
    }
}

/// A span named `$name` with the trace fields: given at once when the context is known
/// (`$ctx`, `$parent`), or left empty to be recorded once OpenTelemetry gave the ids (`empty`).
macro_rules! trace_span {
    ($name:literal, $entity:expr, $ctx:expr, $parent:expr) => {
        tracing::info_span!(
            $name,
            entity = $entity,
            trace_id = %format_args!("{:032x}", $ctx.trace_id),
            span_id = %format_args!("{:016x}", $ctx.span_id),
            parent_span_id = $parent.map(|p: u64| format!("{p:016x}")),
        )
    };
    ($name:literal, $entity:expr, empty) => {
        tracing::info_span!(
            $name,
            entity = $entity,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        )
    };
}

impl TraceContext {
    /// A new trace, sampled.
    pub(crate) fn root() -> TraceContext {
        let trace_id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
        TraceContext { trace_id, span_id: random_u64(), flags: 1, remote: false }
    }

    /// A span of the same trace below this one, on this node.
    pub(crate) fn child(&self) -> TraceContext {
        TraceContext { span_id: random_u64(), remote: false, ..*self }
    }

    /// The handler's context below the sender's, or a new trace.
    fn below(parent: Option<TraceContext>) -> TraceContext {
        match parent {
            Some(p) => p.child(),
            None => TraceContext::root(),
        }
    }

    /// The context a send starts from: a child of the handler's on this thread, else a new trace.
    fn for_send() -> (TraceContext, Option<u64>) {
        match CURRENT.with(|c| c.get()) {
            Some(parent) => (parent.child(), Some(parent.span_id)),
            None => (TraceContext::root(), None),
        }
    }

    /// `00-<32 hex>-<16 hex>-<2 hex>`.
    pub(crate) fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// Parses a peer's W3C `traceparent` of version 00; anything else (another length,
    /// upper-case or non-hex digits, an all-zero id, version ff) is `None`.
    pub(crate) fn parse(s: &str) -> Option<TraceContext> {
        let b = s.as_bytes();
        if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || &s[..2] != "00" {
            return None;
        }
        let hex = |part: &str| part.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        let (t, p, f) = (&s[3..35], &s[36..52], &s[53..55]);
        if !(hex(t) && hex(p) && hex(f)) {
            return None;
        }
        let trace_id = u128::from_str_radix(t, 16).ok().filter(|v| *v != 0)?;
        let span_id = u64::from_str_radix(p, 16).ok().filter(|v| *v != 0)?;
        let flags = u8::from_str_radix(f, 16).ok()?;
        Some(TraceContext { trace_id, span_id, flags, remote: true })
    }

    /// Opens the span a send runs in and gives the context the message carries: the
    /// OpenTelemetry span's when an OpenTelemetry layer records it (feature `opentelemetry`),
    /// else a child of the handler's context on this thread, else a new trace.
    pub(crate) fn open_send(entity: &'static str) -> (TraceContext, tracing::Span) {
        #[cfg(feature = "opentelemetry")]
        return otel::open_send(entity);
        #[cfg(not(feature = "opentelemetry"))]
        {
            let (ctx, parent) = TraceContext::for_send();
            (ctx, trace_span!("clusterfunk.send", entity, ctx, parent))
        }
    }

    /// Opens the span a handler runs in, continuing `parent` (the sender's context, if it sent
    /// one), and gives the handler's context: with an OpenTelemetry layer (feature
    /// `opentelemetry`) the span's own, a child of the sender's span.
    pub(crate) fn handle_span(parent: Option<TraceContext>, entity: &'static str) -> (TraceContext, tracing::Span) {
        #[cfg(feature = "opentelemetry")]
        return otel::open_handle(parent, entity);
        #[cfg(not(feature = "opentelemetry"))]
        {
            let ctx = TraceContext::below(parent);
            (ctx, trace_span!("clusterfunk.handle", entity, ctx, parent.map(|p| p.span_id)))
        }
    }
}

/// The bridge to OpenTelemetry (feature `opentelemetry`, docs/architecture.md §14). Each span
/// is opened with empty trace fields and given its OpenTelemetry parent explicitly (so the
/// fields name the parent the exporter records), then started: its ids are OpenTelemetry's.
/// When the span is disabled or no OpenTelemetry layer records it, the ids are clusterfunk's own,
/// recorded on the same span.
#[cfg(feature = "opentelemetry")]
mod otel {
    use super::TraceContext;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use opentelemetry::Context;
    use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

    fn of(sc: &SpanContext) -> Option<TraceContext> {
        sc.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
            remote: sc.is_remote(),
        })
    }

    /// Records the trace fields of a span opened with them empty.
    fn record(span: &tracing::Span, ctx: TraceContext, parent_span: Option<u64>) {
        span.record("trace_id", tracing::field::display(format_args!("{:032x}", ctx.trace_id)));
        span.record("span_id", tracing::field::display(format_args!("{:016x}", ctx.span_id)));
        if let Some(p) = parent_span {
            span.record("parent_span_id", tracing::field::display(format_args!("{p:016x}")));
        }
    }

    /// Sets the parent `cx` gives as the span's and starts it: its OpenTelemetry context and its
    /// parent's span id, or `None` when the span is disabled (`cx` is then not built) or no
    /// OpenTelemetry layer records it.
    fn start(span: &tracing::Span, cx: impl FnOnce() -> Context) -> Option<(TraceContext, Option<u64>)> {
        if span.is_disabled() {
            return None;
        }
        let cx = cx();
        let parent = of(cx.span().span_context());
        let parent = match span.set_parent(cx) {
            Ok(()) => parent,
            Err(SetParentError::LayerNotFound | SetParentError::SpanDisabled) => return None,
            Err(e) => {
                // Another layer started the span first: it is in OpenTelemetry under a parent
                // this code did not choose, so no parent is recorded.
                tracing::debug!(error = %e, "a clusterfunk span could not be given its OpenTelemetry parent");
                None
            }
        };
        let ctx = of(span.context().span().span_context())?;
        Some((ctx, parent.filter(|p| p.trace_id == ctx.trace_id).map(|p| p.span_id)))
    }

    /// The send's span, a child of the caller's OpenTelemetry context: the one current on this
    /// thread (entering a span makes its context current, by the layer's default), else the
    /// current tracing span's (a layer built without context activation).
    pub(super) fn open_send(entity: &'static str) -> (TraceContext, tracing::Span) {
        let span = trace_span!("clusterfunk.send", entity, empty);
        let caller = || {
            let current = Context::current();
            if current.span().span_context().is_valid() {
                current
            } else {
                tracing::Span::current().context()
            }
        };
        let (ctx, parent) = start(&span, caller).unwrap_or_else(TraceContext::for_send);
        record(&span, ctx, parent);
        (ctx, span)
    }

    /// The handler's span, a child of the sender's span (remote when it came over the wire),
    /// or a root when the sender sent none: never of whatever context is current on the
    /// entity's thread.
    pub(super) fn open_handle(parent: Option<TraceContext>, entity: &'static str) -> (TraceContext, tracing::Span) {
        let span = trace_span!("clusterfunk.handle", entity, empty);
        let cx = || match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id.to_be_bytes()),
                SpanId::from_bytes(p.span_id.to_be_bytes()),
                TraceFlags::new(p.flags),
                p.remote,
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let (ctx, parent_span) =
            start(&span, cx).unwrap_or_else(|| (TraceContext::below(parent), parent.map(|p| p.span_id)));
        record(&span, ctx, parent_span);
        (ctx, span)
    }
}

/// Makes `ctx` the handler's context on this thread until dropped (even if the handler panics);
/// restores what was there before.
pub(crate) struct Current(Option<TraceContext>);

impl Current {
    pub(crate) fn set(ctx: TraceContext) -> Current {
        Current(CURRENT.with(|c| c.replace(Some(ctx))))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_a_malformed_one_is_ignored() {
        let t = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        assert_eq!(t.flags, 1);
        assert_eq!(t.traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_send_inside_a_handler_continues_its_trace() {
        let (outside, parent) = TraceContext::for_send();
        assert_eq!(parent, None, "outside a handler a send starts a trace");
        let handler = outside.child();
        {
            let _in = Current::set(handler);
            assert_eq!(traceparent(), Some(handler.traceparent()));
            let (send, parent) = TraceContext::for_send();
            assert_eq!(send.trace_id, outside.trace_id, "the same trace");
            assert_eq!(parent, Some(handler.span_id), "below the handler's span");
            assert_ne!(send.span_id, handler.span_id, "a span of its own");
        }
        assert_eq!(traceparent(), None, "cleared after the handler");
        assert_ne!(TraceContext::root().trace_id, TraceContext::root().trace_id);
    }
}
