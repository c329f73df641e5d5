//! Where the logs go: standard error, written by a thread of its own.
//!
//! A request that records an audit event formats its line and queues it; the writer thread
//! does the `write(2)`, many lines at a time under load, so no request waits for a slow disk,
//! pipe or journal. The queue is lossless: when it is full (the output cannot keep up), the next
//! event waits for room instead of being dropped, because an audit line is evidence. At
//! shutdown, [`Flush`] is dropped after the server has stopped (see `main.rs`), and dropping it
//! waits until the writer has written every queued line ([`FLUSH_LIMIT`] at most, so an output
//! that no longer takes anything cannot keep the process from exiting).

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Log, LogFormat};

/// Lines queued for the writer before a logging request waits for room.
pub const QUEUE_LINES: usize = 64 * 1024;

/// How long the last lines may take to be written at shutdown.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(30);

enum Msg {
    Line(Vec<u8>),
    /// Everything queued before it is written: flush, report, and stop.
    Stop,
}

/// The `MakeWriter` of the subscriber: each event's formatted line goes into the queue.
#[derive(Clone)]
pub struct Queue(SyncSender<Msg>);

/// The io side of [`Queue`]: what one event writes, sent as one message.
pub struct QueuedLine<'a>(&'a SyncSender<Msg>);

impl Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // `send` waits for room when the queue is full; it fails only once the writer has
        // stopped (after shutdown), and then the line goes straight to the output.
        if let Err(mpsc::SendError(Msg::Line(line))) = self.0.send(Msg::Line(buf.to_vec())) {
            std::io::stderr().write_all(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine(&self.0)
    }
}

/// Keeps the writer thread; dropping it writes out every queued line.
#[must_use = "dropping it stops the log writer"]
pub struct Flush {
    queue: SyncSender<Msg>,
    done: Receiver<()>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        if self.queue.send(Msg::Stop).is_ok() {
            match self.done.recv_timeout(FLUSH_LIMIT) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
                Err(RecvTimeoutError::Timeout) => {
                    eprintln!("log lines still queued after {FLUSH_LIMIT:?}: the output is stuck");
                }
            }
        }
    }
}

/// A queue of `capacity` lines written to `sink` by a thread of its own.
pub fn queue<W: Write + Send + 'static>(sink: W, capacity: usize) -> (Queue, Flush) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let (done_tx, done) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("devicegate-log".into())
        .spawn(move || write_lines(rx, sink, done_tx));
    if let Err(e) = spawned {
        // No thread, no log: say so where it would have gone.
        eprintln!("cannot start the log writer thread: {e}");
    }
    (Queue(tx.clone()), Flush { queue: tx, done })
}

/// The writer thread: drains the queue into a buffer and flushes it whenever the queue is
/// empty, so a quiet gateway's lines appear at once and a busy one's go out many per write.
fn write_lines<W: Write>(rx: Receiver<Msg>, sink: W, done: mpsc::Sender<()>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut next = rx.recv().ok();
    while let Some(msg) = next {
        match msg {
            Msg::Line(line) => {
                let _ = out.write_all(&line);
            }
            Msg::Stop => break,
        }
        next = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(_) => {
                let _ = out.flush();
                rx.recv().ok()
            }
        };
    }
    let _ = out.flush();
    let _ = done.send(());
}

/// Installs the global subscriber: `log.level` (or `RUST_LOG`, when set) and `log.format`,
/// written through the writer thread.
pub fn init(log: &Log) -> Flush {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, flush) = queue(std::io::stderr(), QUEUE_LINES);
    let logs = tracing_subscriber::fmt()
        .with_writer(writer)
        // Colours only for a terminal: log files and journals get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match log.format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }
    flush
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that takes a millisecond per KiB, as a slow pipe or journal does.
    #[derive(Clone, Default)]
    struct Slow(Arc<Mutex<Vec<u8>>>);

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_micros(buf.len() as u64));
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Four threads log `per_thread` lines of ~200 bytes each, then the guard is dropped at
    /// once, as `main` does when the server has stopped: what the output received.
    fn log_then_stop(capacity: usize, per_thread: usize) -> String {
        let sink = Slow::default();
        let (queue, flush) = super::queue(sink.clone(), capacity);
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(180));
                        queue.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        drop(flush);
        // Bound first: the lock guard must end before `sink` does.
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        written
    }

    /// 16 000 lines (~3.2 MB, ~3 s of output) are all queued when the guard is dropped: the drop
    /// waits for every one of them. A writer that gave up after a second, as some non-blocking
    /// writers do, would lose most of them.
    #[test]
    fn stopping_writes_out_the_whole_queue() {
        let written = log_then_stop(16_000, 4_000);
        assert_eq!(written.lines().count(), 16_000);
        assert!(written.ends_with('\n'));
    }

    /// A queue of 16 lines in front of the slow output: loggers wait for room instead of
    /// dropping lines, and every thread's lines arrive in its order.
    #[test]
    fn a_full_queue_makes_loggers_wait_and_loses_nothing() {
        let written = log_then_stop(16, 500);
        assert_eq!(written.lines().count(), 2_000);
        for t in 0..4 {
            let mine: Vec<usize> = written
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .filter_map(|r| r.split(' ').next()?.parse().ok())
                .collect();
            assert_eq!(mine, (0..500).collect::<Vec<_>>(), "thread {t}");
        }
    }
}
