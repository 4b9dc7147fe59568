//! Logging with `tracing`: JSON lines when serving, compact text for the demo.
//!
//! The JSON lines are written by [`JsonLines`], a lean formatter: one flat object per event
//! (`timestamp`, `level`, the event's fields, `target`), built in a reused per-thread String.
//! It does the work of tracing-subscriber's JSON format at a fraction of the cost, which matters
//! because every token served logs an audit line. The lines then gather in [`Buffered`] and go to
//! stderr in batches.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

pub mod audit;
mod buffered;
pub mod traces;
pub use buffered::{Buffered, FLUSH_EVERY};

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
        // The WebSocket client logs whole handshake requests at trace level, the token in
        // `Authorization` included: never below info, whatever RUST_LOG says.
        .with_target("tungstenite", LevelFilter::INFO)
        .with_target("tokio_tungstenite", LevelFilter::INFO)
}

/// Flushes the buffered log lines when dropped: hold it for as long as the program runs.
#[must_use = "log lines still buffered are written when the guard drops"]
pub struct LogGuard(Option<&'static Buffered<std::io::Stderr>>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(sink) = self.0 {
            sink.flush();
        }
    }
}

/// Installs the global subscriber. JSON lines go to standard error through [`Buffered`]; the
/// demo's text lines, read by a person, are written at once.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => {
            let sink = Buffered::install(std::io::stderr());
            let _ = JSON_SINK.set(sink);
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .event_format(JsonLines)
                        .with_writer(sink),
                )
                .init();
            LogGuard(Some(sink))
        }
        LogFormat::Text => {
            registry
                .with(tracing_subscriber::fmt::layer().compact().with_writer(std::io::stderr))
                .init();
            LogGuard(None)
        }
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
        with_line(|line| {
            json_line(line, event);
            writer.write_str(line)
        })
    }
}

/// Runs `write` with an empty String to build a line in: a plain String (the Writer dispatches
/// every small write dynamically), kept per thread so no line allocates.
fn with_line<R>(write: impl FnOnce(&mut String) -> R) -> R {
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    }
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            line.clear();
            write(&mut line)
        }
        // A value's Display that logs: format that inner event on its own.
        Err(_) => write(&mut String::new()),
    })
}

/// The JSON lines' sink, once [`init`] has installed it: the audit line of a token served is
/// written into it directly (see [`audit`]).
static JSON_SINK: OnceLock<&'static Buffered<std::io::Stderr>> = OnceLock::new();

// Writing into a String cannot fail; only a value's own Debug or Display can, and then the line
// keeps what it wrote of that value, still valid JSON.
fn json_line(line: &mut String, event: &Event<'_>) {
    line.push_str("{\"timestamp\":\"");
    write_timestamp(line, SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(event.metadata().level().as_str());
    line.push('"');
    event.record(&mut JsonFields { line });
    line.push_str(",\"target\":");
    push_json_string(line, event.metadata().target());
    line.push_str("}\n");
}

/// RFC 3339 in UTC with microseconds: `2026-11-22T00:04:45.966552Z`. The text up to the second
/// is worked out once a second on each thread (the calendar date from the clock cost most of the
/// line's timestamp); the microseconds are written on every line.
fn write_timestamp(line: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let second = SECOND
        .try_with(|cached| match cached.get() {
            (at, text) if at == seconds => text,
            _ => {
                let text = second_text(seconds);
                cached.set((seconds, text));
                text
            }
        })
        .unwrap_or_else(|_| second_text(seconds));
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    text[..20].copy_from_slice(&second);
    put_digits(&mut text[20..26], since_epoch.subsec_micros());
    // ASCII digits and separators: always UTF-8 (appended whole, not char by char).
    line.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// `2026-11-22T00:04:45.`: the second `seconds` after the epoch, in UTC.
fn second_text(seconds: u64) -> [u8; 20] {
    let at = i64::try_from(seconds)
        .ok()
        .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Fixed-width digits written directly: `write!` with padding costs more than the rest of the line.
    let mut text = *b"0000-00-00T00:00:00.";
    put_digits(&mut text[0..4], at.year().clamp(0, 9999) as u32);
    put_digits(&mut text[5..7], u32::from(u8::from(at.month())));
    put_digits(&mut text[8..10], u32::from(at.day()));
    put_digits(&mut text[11..13], u32::from(at.hour()));
    put_digits(&mut text[14..16], u32::from(at.minute()));
    put_digits(&mut text[17..19], u32::from(at.second()));
    text
}

/// `value`'s last `digits.len()` decimal digits, zero-padded.
fn put_digits(digits: &mut [u8], mut value: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        // Names are identifiers (sometimes dotted), which need no escaping: the check that says
        // so is the one every value passes, and only an odd name is escaped.
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
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
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

impl Write for JsonEscaped<'_> {
    fn write_str(&mut self, value: &str) -> fmt::Result {
        // Only ASCII bytes need escaping, so runs between them are copied whole (still valid UTF-8).
        let bytes = value.as_bytes();
        // Most values need no escaping: a pass eight bytes at a time says so.
        if !needs_escape(bytes) {
            self.0.push_str(value);
            return Ok(());
        }
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.push_str(&value[run..i]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{b:04x}");
            } else {
                self.0.push_str(escape);
            }
            run = i + 1;
        }
        self.0.push_str(&value[run..]);
        Ok(())
    }
}

/// Whether `bytes` hold a control character, a quote or a backslash: the bytes a JSON string
/// must escape. Eight at a time, with the classic word tricks (a zero byte in `w ^ "…"` is a
/// quote; `w - 0x20…20` borrows into a byte's top bit only below 0x20); each test is exact as to
/// whether such a byte exists, which is all this answers.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const TOPS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & TOPS;
    let mut words = bytes.chunks_exact(8);
    let mut found = 0;
    for word in &mut words {
        let w = u64::from_ne_bytes(word.try_into().unwrap_or_default());
        found |= below(w, 0x20) | below(w ^ (ONES * u64::from(b'"')), 1) | below(w ^ (ONES * u64::from(b'\\')), 1);
    }
    found != 0 || words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
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

    /// Collects what is written, for a test to read.
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

    /// The lines [`JsonLines`] writes for the events `log` makes.
    pub(super) fn json_lines_of(log: impl FnOnce()) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn each_event_is_one_line_of_valid_json_with_its_fields() {
        let text = json_lines_of(|| {
            tracing::info!(target: "token_broker::audit", subject = %"a\"b\\c\nd\u{1}", upstream = "triumph", cache_hit = true, n = 3u64, d = -2i64, ms = 1.5f64, "odd \"name\"" = 4u64, "token served");
            tracing::warn!("second");
        });
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
        assert_eq!(first["odd \"name\""], 4);
        assert!(OffsetDateTime::parse(
            first["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "second");
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_wherever_it_stands() {
        // Each byte value at each position of strings long enough to span words and a remainder.
        for len in 1..=19 {
            for at in 0..len {
                for b in 0..=0x7fu8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let expected = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&bytes), expected, "byte {b:#x} at {at} of {len}");
                }
            }
        }
        // Bytes of multi-byte characters never need escaping, next to the ones that do or not.
        assert!(!needs_escape("héllo wörld — ✓ 𝄞 plain".as_bytes()));
        assert!(needs_escape("héllo wörld — ✓ 𝄞\"".as_bytes()));
    }

    proptest::proptest! {
        #[test]
        fn lines_are_valid_json_whatever_the_values(value in "\\PC*|[\\x00-\\x7f]*") {
            let mut line = String::new();
            push_json_string(&mut line, &value);
            let parsed: String = serde_json::from_str(&line).unwrap();
            proptest::prop_assert_eq!(parsed, value);
        }
    }

    #[test]
    fn timestamps_are_fixed_width_rfc3339_in_utc() {
        let mut text = String::new();
        let at = time::macros::datetime!(2026-01-02 03:04:05.000067 UTC);
        write_timestamp(&mut text, at.into());
        assert_eq!(text, "2026-01-02T03:04:05.000067Z");
    }

    proptest::proptest! {
        // One thread keeps the text of the last second it wrote: whatever the order of the
        // instants, each line has its own.
        #[test]
        fn every_timestamp_is_its_own_instant_whatever_the_thread_wrote_before(
            instants in proptest::collection::vec((0u64..253_402_300_800, 0u32..1_000_000, 0u64..3), 1..40)
        ) {
            for (seconds, micros, step) in instants {
                // Neighbouring seconds too: the cached one, the next, across midnight or a year.
                for seconds in [seconds, seconds + step, seconds] {
                    let at = OffsetDateTime::from_unix_timestamp(seconds as i64).unwrap()
                        + time::Duration::microseconds(i64::from(micros));
                    let mut text = String::new();
                    write_timestamp(&mut text, at.into());
                    let expected = format!(
                        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                        at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute(), at.second(), at.microsecond()
                    );
                    proptest::prop_assert_eq!(text, expected);
                }
            }
        }
    }
}
