//! Log lines buffered on their way out, as nginx's `access_log … buffer=32k flush=…` does.
//!
//! Serving a token logs an audit line, and giving each line its own write(2) cost about a tenth of
//! the token route's CPU time. Here lines gather and go out together: when 32 KiB have gathered,
//! when a warning or an error is logged (it goes out at once, with everything before it), every
//! [`FLUSH_EVERY`] from a background thread, when the [`super::LogGuard`] drops, and before a
//! panic's message is printed.
//! A crash (SIGKILL, out of memory) can lose at most the last [`FLUSH_EVERY`] of info lines.

use std::io::{self, BufWriter, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long an info or debug line can wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
const CAPACITY: usize = 32 * 1024;

pub struct Buffered<W: Write> {
    out: Mutex<BufWriter<W>>,
}

impl<W: Write> Buffered<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(BufWriter::with_capacity(CAPACITY, out)),
        }
    }

    /// Writes out what has gathered.
    pub fn flush(&self) {
        let _ = self.lock().flush();
    }

    /// Adds an info line (a whole line, `\n` included) to what has gathered.
    pub fn write_line(&self, line: &[u8]) {
        let _ = self.lock().write_all(line);
    }

    /// As [`Self::flush`], unless the buffer is in use (a panic inside a write must not deadlock).
    fn flush_if_free(&self) {
        if let Ok(mut out) = self.out.try_lock() {
            let _ = out.flush();
        }
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<W>> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<W: Write + Send + 'static> Buffered<W> {
    /// A buffer for the life of the process, flushed every [`FLUSH_EVERY`] and before a panic's
    /// message is printed.
    pub fn install(out: W) -> &'static Self {
        let sink: &'static Self = Box::leak(Box::new(Self::new(out)));
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                sink.flush();
            })
            .expect("a thread to flush the log");
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            sink.flush_if_free();
            previous(info);
        }));
        sink
    }
}

/// One event's writer: its line joins the buffer, and a warning or an error flushes it.
pub struct LineWriter<'a, W: Write> {
    sink: &'a Buffered<W>,
    urgent: bool,
}

impl<W: Write> Write for LineWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.sink.lock();
        out.write_all(buf)?;
        if self.urgent {
            out.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.lock().flush()
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for &'static Buffered<W> {
    type Writer = LineWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            sink: self,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        // Levels order by verbosity: WARN and ERROR are the ones at or below WARN.
        LineWriter {
            sink: self,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn info_lines_wait_for_a_flush_and_a_warning_takes_them_out_at_once() {
        let out = Shared::default();
        let sink: &'static Buffered<Shared> = Box::leak(Box::new(Buffered::new(out.clone())));
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_writer(sink));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("first");
            assert_eq!(out.text(), "", "info lines are held");
            tracing::warn!("second");
            let text = out.text();
            assert!(text.contains("first") && text.contains("second"), "{text}");
            assert!(text.find("first") < text.find("second"), "in order: {text}");

            tracing::info!("third");
            assert!(!out.text().contains("third"));
            sink.flush();
            assert!(out.text().contains("third"));
        });
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting() {
        let out = Shared::default();
        let sink: &'static Buffered<Shared> = Box::leak(Box::new(Buffered::new(out.clone())));
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_writer(sink));
        let long = "x".repeat(1000);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..40 {
                tracing::info!("{long}");
            }
        });
        let written = out.text().lines().count();
        // 32 KiB hold about 29 of these lines: the rest wait for a flush.
        assert!((20..40).contains(&written), "{written} of 40 lines written");
    }
}
