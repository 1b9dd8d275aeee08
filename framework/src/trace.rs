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

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A W3C trace context: the trace, this span, and the flags (bit 0: sampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) flags: u8,
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

impl TraceContext {
    /// A new trace, sampled.
    pub(crate) fn root() -> TraceContext {
        let trace_id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
        TraceContext { trace_id, span_id: random_u64(), flags: 1 }
    }

    /// A span of the same trace below this one.
    pub(crate) fn child(&self) -> TraceContext {
        TraceContext { span_id: random_u64(), ..*self }
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

    /// Parses a W3C `traceparent` of version 00; anything else (another length, upper-case or
    /// non-hex digits, an all-zero id, version ff) is `None`.
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
        Some(TraceContext { trace_id, span_id, flags })
    }

    /// Opens the span a send runs in and gives the context the message carries: the
    /// OpenTelemetry span's when an OpenTelemetry layer records it (its parent is the caller's
    /// span, as OpenTelemetry decides), else a child of the handler's context on this thread,
    /// else a new trace.
    pub(crate) fn open_send(entity: &'static str) -> (TraceContext, tracing::Span) {
        let span = tracing::info_span!(
            "clusterfunk.send",
            entity,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        #[cfg(feature = "opentelemetry")]
        if let Some(ctx) = otel::ids(&span) {
            let parent = otel::parent_of(ctx.trace_id);
            ctx.record(&span, parent);
            return (ctx, span);
        }
        let (ctx, parent) = TraceContext::for_send();
        ctx.record(&span, parent);
        (ctx, span)
    }

    /// Opens the span a handler runs in, continuing `parent` (the sender's context, if it sent
    /// one), and gives the handler's context. With an OpenTelemetry layer, the span's
    /// OpenTelemetry parent is the sender's span and the context is the span's own.
    pub(crate) fn handle_span(parent: Option<TraceContext>, entity: &'static str) -> (TraceContext, tracing::Span) {
        let span = tracing::info_span!(
            "clusterfunk.handle",
            entity,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        let own = || match parent {
            Some(p) => p.child(),
            None => TraceContext::root(),
        };
        #[cfg(feature = "opentelemetry")]
        let ctx = {
            if let Some(p) = parent {
                otel::set_parent(&span, p);
            }
            otel::ids(&span).unwrap_or_else(own)
        };
        #[cfg(not(feature = "opentelemetry"))]
        let ctx = own();
        ctx.record(&span, parent.map(|p| p.span_id));
        (ctx, span)
    }

    /// Records this context on its span: `trace_id`, `span_id`, `parent_span_id` (lower-case hex).
    fn record(&self, span: &tracing::Span, parent_span: Option<u64>) {
        span.record("trace_id", tracing::field::display(format_args!("{:032x}", self.trace_id)));
        span.record("span_id", tracing::field::display(format_args!("{:016x}", self.span_id)));
        if let Some(p) = parent_span {
            span.record("parent_span_id", tracing::field::display(format_args!("{p:016x}")));
        }
    }
}

/// The bridge to OpenTelemetry (feature `opentelemetry`): the ids of a span as the
/// `tracing_opentelemetry` layer sees them, and a remote parent set on a span before it starts.
#[cfg(feature = "opentelemetry")]
mod otel {
    use super::TraceContext;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    fn of(sc: &SpanContext) -> Option<TraceContext> {
        sc.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
        })
    }

    /// The OpenTelemetry context of `span` (this starts it), if an OpenTelemetry layer records
    /// it; `None` without such a layer or when the span is disabled.
    pub(super) fn ids(span: &tracing::Span) -> Option<TraceContext> {
        of(span.context().span().span_context())
    }

    /// The span id of the parent OpenTelemetry gives a span of `trace_id` opened here: the
    /// caller's current span, else the OpenTelemetry context attached on this thread.
    pub(super) fn parent_of(trace_id: u128) -> Option<u64> {
        ids(&tracing::Span::current())
            .or_else(|| of(opentelemetry::Context::current().span().span_context()))
            .filter(|p| p.trace_id == trace_id)
            .map(|p| p.span_id)
    }

    /// Makes the span a child of the (remote) sender's span. Without an OpenTelemetry layer
    /// this does nothing.
    pub(super) fn set_parent(span: &tracing::Span, parent: TraceContext) {
        let sc = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.span_id.to_be_bytes()),
            TraceFlags::new(parent.flags),
            true,
            TraceState::NONE,
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
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
