//! A tracing layer that records every `clusterfunk.*` span opened, with its fields: those given
//! when it opens and those recorded later (with the `opentelemetry` feature, the trace ids are
//! recorded right after the span opens). The trace tests read it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer};

/// A span's fields by name.
pub type Fields = HashMap<String, String>;

/// The spans recorded: name and fields, in the order they opened.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<(Id, String, Fields)>>>);

impl Spans {
    /// Every span recorded so far: name and fields.
    pub fn all(&self) -> Vec<(String, Fields)> {
        self.0.lock().unwrap().iter().map(|(_, n, f)| (n.clone(), f.clone())).collect()
    }

    /// The fields of the span named `name` whose `span_id` is `span_id` (lower-case hex).
    pub fn find(&self, name: &str, span_id: &str) -> Option<Fields> {
        self.all()
            .into_iter()
            .find(|(n, f)| n == name && f.get("span_id").map(String::as_str) == Some(span_id))
            .map(|(_, f)| f)
    }
}

/// The layer that fills [`Spans`].
pub struct Capture(pub Spans);

#[derive(Default)]
struct Visitor(Fields);

impl Visit for Visitor {
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
            let mut f = Visitor::default();
            attrs.record(&mut f);
            (self.0).0.lock().unwrap().push((id.clone(), attrs.metadata().name().to_string(), f.0));
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = (self.0).0.lock().unwrap();
        // The latest span with this id: ids are reused once a span closed.
        if let Some((_, _, fields)) = spans.iter_mut().rev().find(|(i, _, _)| i == id) {
            let mut f = Visitor(std::mem::take(fields));
            values.record(&mut f);
            *fields = f.0;
        }
    }
}
