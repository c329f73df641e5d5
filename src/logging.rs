//! Where the logs go: standard error, written by a thread of its own.
//!
//! A request that records an audit event only queues the formatted line; the writer thread
//! does the `write(2)`, many lines at a time under load, so no request waits for a slow disk, pipe or journal. The queue is
//! lossless: when it is full (the output cannot keep up), the next event waits for room
//! instead of being dropped, because an audit line is evidence. At shutdown, [`Flush`] is
//! dropped after the server has stopped (see `main.rs`), and dropping it waits for the writer
//! to finish the queue, so the last grants' lines reach the log too.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use crate::config::{Log, LogFormat};

/// Lines queued for the writer before a logging request waits for room.
const QUEUE_LINES: usize = 64 * 1024;

/// Keeps the writer thread; dropping it writes out every queued line.
#[must_use = "dropping it stops the log writer"]
pub struct Flush(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber: `log.level` (or `RUST_LOG`, when set) and `log.format`,
/// written through the writer thread.
pub fn init(log: &Log) -> Flush {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("devicegate-log")
        // Buffered: under load the writer drains many queued lines per write(2), and it
        // flushes whenever the queue is empty, so a quiet gateway's lines appear at once.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let logs = tracing_subscriber::fmt()
        .with_writer(writer)
        // Colours only for a terminal: log files and journals get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match log.format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }
    Flush(guard)
}
