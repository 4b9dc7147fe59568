//! Logging with `tracing`: JSON lines when serving, compact text for the demo.
//!
//! The JSON lines are written by [`JsonLines`], a lean formatter: one flat object per event
//! (`timestamp`, `level`, the event's fields, `target`), built in one buffer and written with one
//! call. It does the work of tracing-subscriber's JSON format at about half the cost, which matters
//! because every token served logs an audit line.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use time::OffsetDateTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The level filter from `RUST_LOG` (`info` by default): a level and `target=level` pairs, such as
/// `warn,token_broker=debug`. A static filter, which costs far less per span than `EnvFilter`.
pub fn filter(spec: Option<&str>) -> Targets {
    spec.and_then(|s| Targets::from_str(s).ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().compact().with_writer(std::io::stderr))
            .init(),
    }
}

/// One JSON object per line: `{"timestamp":…,"level":…,<fields>,"target":…}`.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":\"");
        write_timestamp(&mut line, OffsetDateTime::now_utc());
        line.push_str("\",\"level\":\"");
        line.push_str(event.metadata().level().as_str());
        line.push('"');
        event.record(&mut JsonFields { line: &mut line });
        line.push_str(",\"target\":");
        push_json_string(&mut line, event.metadata().target());
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// RFC 3339 in UTC with microseconds: `2026-11-22T00:04:45.966552Z`.
fn write_timestamp(line: &mut String, now: OffsetDateTime) {
    let _ = write!(
        line,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    );
}

struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        push_json_string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_string(self.line, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Display and Debug values (most fields, and the message) are escaped as they are written.
        self.key(field);
        self.line.push('"');
        let _ = write!(JsonEscaped(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// Writes into a JSON string's body, escaping as RFC 8259 §7 requires.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, value: &str) -> fmt::Result {
        for c in value.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// `value` as a JSON string (RFC 8259 §7).
fn push_json_string(line: &mut String, value: &str) {
    line.push('"');
    let _ = JsonEscaped(line).write_str(value);
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_event_is_one_line_of_valid_json_with_its_fields() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "token_broker::audit", subject = %"a\"b\\c\nd\u{1}", upstream = "triumph", cache_hit = true, n = 3u64, d = -2i64, ms = 1.5f64, "token served");
            tracing::warn!("second");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["target"], "token_broker::audit");
        assert_eq!(first["message"], "token served");
        assert_eq!(first["subject"], "a\"b\\c\nd\u{1}");
        assert_eq!(first["upstream"], "triumph");
        assert_eq!(first["cache_hit"], true);
        assert_eq!(first["n"], 3);
        assert_eq!(first["d"], -2);
        assert_eq!(first["ms"], 1.5);
        assert!(OffsetDateTime::parse(
            first["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "second");
    }
}
