//! The server's log lines, written to stderr by a thread of their own.
//!
//! `estuary serve` logs a line per request. Written directly, each line was a `write` system
//! call on the thread handling requests, and under systemd each write also woke journald;
//! worse, a journald (or a pipe reader) that stops reading made every request wait in that
//! `write`. Here a line is appended to a buffer in memory and the `estuary-log` thread writes
//! what has gathered, at most [`WRITES_PER_SECOND`] times a second, so lines reach stderr
//! within a few milliseconds, in order, with one `write` for many.
//!
//! The buffer is bounded ([`MAX_BUFFERED`]): while stderr is not taking lines, new ones are
//! counted and dropped rather than held without limit or waited for, and a line saying how
//! many were dropped is written once stderr takes lines again. (Every certificate issued and
//! every refusal is also in the store's audit trail, which never drops.)
//!
//! The buffer is written out when the server exits normally (the [`FlushOnDrop`] guard) and
//! before a panic's message is printed ([`flush_before_panic_message`]).

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most bytes held for stderr; lines beyond are dropped and counted.
pub const MAX_BUFFERED: usize = 4 << 20;

/// How often at most the thread writes: lines wait for stderr at most this long.
const WRITES_PER_SECOND: u32 = 200;

/// How long exiting waits for stderr to take what is buffered.
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The writer handed to `tracing_subscriber::fmt().with_writer(..)`.
#[derive(Clone)]
pub struct BufferedStderr {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the first line enters an empty buffer, and at exit.
    lines_waiting: Condvar,
    /// Signalled by the thread after each write (exit waits on it).
    written: Condvar,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    dropped: u64,
    /// The thread is in a write: the buffer being empty does not mean stderr has it all.
    writing: bool,
    closing: bool,
}

/// The server's writer, once started (the panic hook flushes it).
static STARTED: OnceLock<Arc<Shared>> = OnceLock::new();

/// Starts the `estuary-log` thread writing to `sink` (stderr in the server). The guard writes
/// out what is left when dropped.
pub fn start<W: std::io::Write + Send + 'static>(
    sink: W,
) -> std::io::Result<(BufferedStderr, FlushOnDrop)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        lines_waiting: Condvar::new(),
        written: Condvar::new(),
    });
    let for_thread = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("estuary-log".into())
        .spawn(move || write_lines(&for_thread, sink))?;
    let _ = STARTED.set(Arc::clone(&shared));
    Ok((
        BufferedStderr {
            shared: Arc::clone(&shared),
        },
        FlushOnDrop { shared },
    ))
}

/// The `estuary-log` thread: waits for lines, writes what has gathered, pauses.
fn write_lines<W: std::io::Write>(shared: &Shared, mut sink: W) {
    // SCHED_BATCH (sched(7)): its wakeups do not preempt request handling; it writes when
    // that thread waits or its time slice ends, by when more lines have gathered.
    #[cfg(target_os = "linux")]
    if matches!(scheduler::get_self_policy(), Ok(scheduler::Policy::Other)) {
        let _ = scheduler::set_self_policy(scheduler::Policy::Batch, 0);
    }
    let pause = Duration::from_secs(1) / WRITES_PER_SECOND;
    let mut chunk = Vec::new();
    loop {
        let (dropped, closing) = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            while state.buffer.is_empty() && state.dropped == 0 && !state.closing {
                state = match shared.lines_waiting.wait(state) {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
            std::mem::swap(&mut chunk, &mut state.buffer);
            state.writing = true;
            (std::mem::take(&mut state.dropped), state.closing)
        };
        // A failed write (stderr closed) loses these lines; there is nowhere else to say so.
        let _ = sink.write_all(&chunk);
        if dropped > 0 {
            let _ = writeln!(
                sink,
                "estuary: {dropped} log line(s) dropped: stderr was not taking lines (over {} MiB waiting)",
                MAX_BUFFERED >> 20
            );
        }
        let _ = sink.flush();
        chunk.clear();
        if chunk.capacity() > 64 << 10 {
            chunk.shrink_to(64 << 10);
        }
        if let Ok(mut state) = shared.state.lock() {
            state.writing = false;
        }
        shared.written.notify_all();
        if closing {
            return;
        }
        std::thread::sleep(pause);
    }
}

impl Shared {
    /// Has the thread write what is buffered now, waiting up to `timeout` for it.
    fn flush(&self, timeout: Duration, closing: bool) {
        let deadline = Instant::now() + timeout;
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.closing |= closing;
        self.lines_waiting.notify_all();
        while !state.buffer.is_empty() || state.writing {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            state = match self.written.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
    }
}

/// Writes out the buffered lines when dropped (the end of `main`).
pub struct FlushOnDrop {
    shared: Arc<Shared>,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.flush(EXIT_FLUSH_TIMEOUT, true);
    }
}

/// Called by the panic hook: the lines logged before a panic come before its message.
pub fn flush_before_panic_message() {
    if let Some(shared) = STARTED.get() {
        shared.flush(Duration::from_millis(500), false);
    }
}

/// One event's writer; the formatter writes each line with a single `write_all`.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let Ok(mut state) = self.shared.state.lock() else {
            return Ok(line.len());
        };
        if state.buffer.len() + line.len() > MAX_BUFFERED {
            state.dropped += 1;
            return Ok(line.len());
        }
        let was_empty = state.buffer.is_empty();
        state.buffer.extend_from_slice(line);
        drop(state);
        // Only the first line wakes the thread; it takes the others with it.
        if was_empty {
            self.shared.lines_waiting.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use tracing_subscriber::fmt::MakeWriter as _;

    /// A sink the test reads, which can be made to stall.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        stalled: Arc<Mutex<()>>,
    }

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _stall = self.stalled.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(sink: &Sink) -> String {
        String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_arrive_in_order_and_the_guard_writes_the_rest() {
        let sink = Sink::default();
        let (writer, guard) = start(sink.clone()).unwrap();
        for i in 0..1000 {
            writer
                .make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text(&sink), expected);
    }

    #[test]
    fn lines_arrive_without_an_exit() {
        let sink = Sink::default();
        let (writer, _guard) = start(sink.clone()).unwrap();
        writer.make_writer().write_all(b"hello\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while text(&sink).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(text(&sink), "hello\n");
    }

    /// A stderr that stops taking lines costs at most the buffer and never a wait; the lines
    /// dropped are counted and reported once it takes lines again.
    #[test]
    fn a_stalled_stderr_drops_and_counts_instead_of_blocking() {
        let sink = Sink::default();
        let stall = sink.stalled.lock().unwrap();
        let (writer, guard) = start(sink.clone()).unwrap();
        // The first line may be taken by the thread (which then waits on the stall).
        writer.make_writer().write_all(b"first\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let line = vec![b'x'; 1023];
        let started = Instant::now();
        let mut writes = 0;
        while writes < 2 * (MAX_BUFFERED / 1024) {
            let mut w = writer.make_writer();
            w.write_all(&line).unwrap();
            w.write_all(b"\n").unwrap();
            writes += 1;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(stall);
        drop(guard);
        let out = text(&sink);
        assert!(out.starts_with("first\n"), "{}", &out[..20]);
        assert!(out.contains("log line(s) dropped"), "no drop notice");
        assert!(
            out.len() <= MAX_BUFFERED + 4096 + 200,
            "{} bytes",
            out.len()
        );
    }
}
