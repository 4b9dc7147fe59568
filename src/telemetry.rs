//! Logging with `tracing`: JSON lines when serving, compact text for the demo.

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
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
                    .json()
                    .flatten_event(true)
                    .with_span_list(false)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().compact().with_writer(std::io::stderr))
            .init(),
    }
}
