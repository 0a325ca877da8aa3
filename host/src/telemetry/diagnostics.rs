//! The OpenTelemetry SDK's own warnings — spans dropped by a full queue, an
//! exporter that failed — on standard error, so no span is lost silently.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

/// Installs, as the process's `tracing` subscriber, a reporter of the
/// OpenTelemetry SDK's warnings and errors to standard error. Call once,
/// early; a no-op if a subscriber is already installed.
pub fn report_to_stderr() {
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Reporter));
}

struct Reporter;

/// Writes `line` to standard error in one `write`. The driver and its
/// workers share standard error and say what they lost while shutting down
/// at once; `eprintln!` writes a line in pieces, which then interleave.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let line = format!("{line}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

impl<S: Subscriber> Layer<S> for Reporter {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target().starts_with("opentelemetry") && *metadata.level() <= Level::WARN
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        say(format_args!(
            "wtrace (pid {}): opentelemetry {}: {}{}",
            std::process::id(),
            event.metadata().level().as_str().to_ascii_lowercase(),
            line.name.unwrap_or_default(),
            line.rest
        ));
    }
}

#[derive(Default)]
struct Line {
    name: Option<String>,
    rest: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "name" => self.name = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "message" => {
                let _ = write!(self.rest, ": {}", format!("{value:?}").trim_matches('"'));
            }
            other => {
                let _ = write!(self.rest, " {other}={value:?}");
            }
        }
    }
}
