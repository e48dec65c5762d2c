//! Logging through `tracing`: JSON lines in production, readable text for a terminal; the level comes
//! from `RUST_LOG` (default `info`, with the drivers at `warn`). The lines of one flush carry its span
//! (`flush{id scores events attempt}`), so they can be found together.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber writing to `writer`. Call once; later calls are ignored.
pub fn init<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,scylla=warn,async_nats=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // `"span": {"name": "flush", "id": 42, "scores": 50, ...}` on every line of one flush.
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
