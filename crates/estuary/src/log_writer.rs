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
//! counted and dropped rather than held without limit or waited for, and a warning saying how
//! many were dropped is logged once stderr takes lines again. Writes are cut at line ends and
//! kept to one pipe buffer's atomic size, so lines are never split or interleaved. (Every
//! certificate issued and every refusal is also in the store's audit trail, which never
//! drops.)
//!
//! The buffer is written out when the server exits (the [`FlushOnDrop`] guard) and when it
//! panics ([`flush_before_panic_message`]). The error it exits with and a panic's message go
//! through the buffer too ([`queue_last_words`]), so that a stderr that is not taking lines
//! cannot hold either forever.

use std::sync::atomic::Ordering;
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
    /// Signalled by the thread after each write and when it ends (flushes wait on it).
    written: Condvar,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    dropped: u64,
    /// Bytes ever appended to the buffer, and bytes the thread has finished with (written,
    /// or lost to a failed write): a flush waits for the second to reach the first as it was
    /// when the flush began.
    appended: u64,
    done: u64,
    closing: bool,
    /// The thread has ended: lines go straight to stderr.
    thread_gone: bool,
}

/// The largest write: one pipe buffer's atomic unit (PIPE_BUF, pipe(7)), cut at a line's end,
/// so that a write interrupted by the process's exit never leaves half a line behind. A
/// longer line is written alone.
const MAX_WRITE: usize = 4096;

/// The writing thread's name.
const THREAD_NAME: &str = "estuary-log";

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
        .name(THREAD_NAME.into())
        .spawn(move || {
            let _gone = ThreadGone(&for_thread);
            write_lines(&for_thread, sink);
        })?;
    let _ = STARTED.set(Arc::clone(&shared));
    Ok((
        BufferedStderr {
            shared: Arc::clone(&shared),
        },
        FlushOnDrop { shared },
    ))
}

/// Marks the thread as ended, however it ends (a panic included).
struct ThreadGone<'a>(&'a Shared);

impl Drop for ThreadGone<'_> {
    fn drop(&mut self) {
        // Lines still buffered (the thread is ending by a panic) go to stderr directly, as
        // everything logged from now on does.
        let left = match self.0.state.lock() {
            Ok(mut state) => {
                state.thread_gone = true;
                std::mem::take(&mut state.buffer)
            }
            Err(_) => Vec::new(),
        };
        self.0.written.notify_all();
        if !left.is_empty() {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&left);
        }
    }
}

/// What became of a line given to the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    /// Buffered; the thread writes it. The count of bytes ever appended, with it.
    Kept(u64),
    /// The buffer was full: dropped and counted.
    Dropped,
    /// The thread has ended: the caller writes the line to stderr.
    ThreadGone,
}

/// The `estuary-log` thread: waits for lines, writes what has gathered, pauses.
fn write_lines<W: std::io::Write>(shared: &Shared, mut sink: W) {
    // SCHED_BATCH: its wake-ups do not preempt request handling; it writes when that thread
    // waits or its time slice ends, by when more lines have gathered.
    if estuary_store::thread_policy::adjustable() {
        estuary_store::thread_policy::set_batch(true);
    }
    let pause = Duration::from_secs(1) / WRITES_PER_SECOND;
    let mut chunk = Vec::new();
    loop {
        let closing = {
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
            let dropped = std::mem::take(&mut state.dropped);
            if dropped > 0 {
                // After the lines that were kept: the dropped ones came after them.
                let notice = dropped_notice(dropped);
                state.appended += notice.len() as u64;
                chunk.extend_from_slice(notice.as_bytes());
            }
            state.closing
        };
        write_chunk(shared, &mut sink, &chunk);
        chunk.clear();
        if chunk.capacity() > 64 << 10 {
            chunk.shrink_to(64 << 10);
        }
        if closing {
            return;
        }
        std::thread::sleep(pause);
    }
}

/// The line that says how many lines were dropped, shaped like the log's own lines.
fn dropped_notice(dropped: u64) -> String {
    let now = time::OffsetDateTime::now_utc();
    let time = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "{time}  WARN {dropped} log line(s) dropped: stderr was not taking lines (over {} MiB waiting)\n",
        MAX_BUFFERED >> 20
    )
}

/// Writes `chunk` in line-aligned pieces of at most [`MAX_WRITE`] bytes, recording each piece
/// as done. A stderr that would block (a non-blocking pipe) is waited for; one that fails
/// loses the rest of the chunk (there is nowhere left to say so).
fn write_chunk<W: std::io::Write>(shared: &Shared, sink: &mut W, chunk: &[u8]) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let piece_len = piece_length(rest);
        let (mut piece, after) = rest.split_at(piece_len);
        let mut failed = false;
        while !piece.is_empty() {
            match sink.write(piece) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => piece = &piece[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let _ = sink.flush();
        let finished = if failed { rest.len() } else { piece_len };
        if let Ok(mut state) = shared.state.lock() {
            state.done += finished as u64;
        }
        shared.written.notify_all();
        if failed {
            return;
        }
        rest = after;
    }
}

/// The length of the next piece to write: whole lines up to [`MAX_WRITE`] bytes, or one
/// longer line whole.
fn piece_length(rest: &[u8]) -> usize {
    if rest.len() <= MAX_WRITE {
        return rest.len();
    }
    match rest[..MAX_WRITE].iter().rposition(|b| *b == b'\n') {
        Some(last_newline) => last_newline + 1,
        None => rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |newline| newline + 1),
    }
}

/// How far past [`MAX_BUFFERED`] the server's last words ([`queue_last_words`]) may go: they
/// are kept when ordinary lines are being dropped (a few panic messages with backtraces fit),
/// but a loop of panics still cannot hold memory without bound.
const LAST_WORDS_ROOM: usize = 1 << 20;

/// How long a panicking thread tries for the buffer's lock before printing its message
/// directly (it may hold that lock itself, if it panicked inside the writer).
const LAST_WORDS_LOCK_WAIT: Duration = Duration::from_millis(100);

impl Shared {
    /// Appends whole lines to the buffer, or counts them as dropped if the buffer would then
    /// exceed `limit`.
    fn append(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        line: &[u8],
        limit: usize,
    ) -> Appended {
        if state.thread_gone {
            return Appended::ThreadGone;
        }
        if state.buffer.len() + line.len() > limit {
            state.dropped += 1;
            estuary_server::metrics::LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
            return Appended::Dropped;
        }
        let was_empty = state.buffer.is_empty();
        state.buffer.extend_from_slice(line);
        state.appended += line.len() as u64;
        let appended = state.appended;
        drop(state);
        // Only the first line wakes the thread; it takes the others with it.
        if was_empty {
            self.lines_waiting.notify_one();
        }
        Appended::Kept(appended)
    }

    /// See [`queue_last_words`].
    fn queue_last_words(&self, text: &str) -> Option<u64> {
        // The log thread's own panic: its buffer would never be written.
        if std::thread::current().name() == Some(THREAD_NAME) {
            return None;
        }
        let deadline = Instant::now() + LAST_WORDS_LOCK_WAIT;
        let state = loop {
            match self.state.try_lock() {
                Ok(state) => break state,
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return None,
            }
        };
        let mut line = text.to_owned();
        if !line.ends_with('\n') {
            line.push('\n');
        }
        match self.append(state, line.as_bytes(), MAX_BUFFERED + LAST_WORDS_ROOM) {
            Appended::Kept(through) => Some(through),
            Appended::Dropped | Appended::ThreadGone => None,
        }
    }

    /// Whether the thread has written (or lost to a failed write) the first `through` bytes
    /// ever appended.
    fn written_through(&self, through: u64) -> bool {
        self.state.lock().is_ok_and(|state| state.done >= through)
    }
}

/// Queues the server's last words (the error it exits with, a panic's message) behind its log
/// lines, instead of writing them to stderr directly: they reach stderr in order after the
/// lines before them, and a stderr that is not taking lines (a stalled journald, a full pipe)
/// can hold neither the exit (the flush at exit waits at most 2 s) nor a panicking thread
/// forever (a tokio worker blocked in a panic message would stop serving). They are kept when
/// ordinary lines are being dropped, up to [`LAST_WORDS_ROOM`] beyond the buffer's size.
///
/// `Some(through)` when queued ([`written_through`] tells when it is out); `None` if the writer
/// is not running, its lock could not be had, this is its own thread, or there was no room:
/// the caller then writes to stderr itself.
pub fn queue_last_words(text: &str) -> Option<u64> {
    STARTED
        .get()
        .and_then(|shared| shared.queue_last_words(text))
}

/// Whether what [`queue_last_words`] queued (`through`) has reached stderr.
pub fn written_through(through: u64) -> bool {
    STARTED
        .get()
        .is_some_and(|shared| shared.written_through(through))
}

/// Writes `text` to stderr from a thread of its own, waiting at most `timeout` for it: for
/// the exit error when the log's flush ran out of time (a stderr that is not reading must not
/// hold the exit forever).
pub fn write_to_stderr_within(text: &str, timeout: Duration) {
    let (done, finished) = std::sync::mpsc::channel();
    let text = text.to_owned();
    let writer = std::thread::Builder::new().spawn(move || {
        use std::io::Write;
        let _ = std::io::stderr().write_all(text.as_bytes());
        let _ = done.send(());
    });
    if writer.is_ok() {
        let _ = finished.recv_timeout(timeout);
    }
}

/// A panic's payload as text, when it is a `String` or a `&str` (what `panic!` makes).
pub fn panic_payload_text<'a>(info: &'a std::panic::PanicHookInfo<'_>) -> Option<&'a str> {
    let payload = info.payload();
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}

/// A panic's message as Rust's default hook prints it (thread, place, payload, and the
/// backtrace if `RUST_BACKTRACE` asks for one).
pub fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let message = panic_payload_text(info).unwrap_or("Box<dyn Any>");
    let thread = std::thread::current();
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "an unknown place".into());
    let backtrace = std::backtrace::Backtrace::capture();
    let tail = match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => format!("stack backtrace:\n{backtrace}"),
        _ => "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace".into(),
    };
    format!(
        "thread '{}' panicked at {location}:\n{message}\n{tail}",
        thread.name().unwrap_or("<unnamed>")
    )
}

impl Shared {
    /// Has the thread write the lines buffered now, waiting up to `timeout` for them (not for
    /// lines logged meanwhile). `closing`: the thread writes what is left, including a notice
    /// of dropped lines, and ends; this waits for its end.
    fn flush(&self, timeout: Duration, closing: bool) {
        let deadline = Instant::now() + timeout;
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.closing |= closing;
        let target = state.appended;
        self.lines_waiting.notify_all();
        while !state.thread_gone && (closing || state.done < target) {
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
        let Ok(state) = self.shared.state.lock() else {
            return Ok(line.len());
        };
        if self.shared.append(state, line, MAX_BUFFERED) == Appended::ThreadGone {
            // After the thread (at exit): straight to stderr, as before it existed.
            return std::io::stderr().write(line);
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
        let dropped_before = estuary_server::metrics::LOG_LINES_DROPPED.load(Ordering::Relaxed);
        let (writer, guard) = start(sink.clone()).unwrap();
        // The first line may be taken by the thread (which then waits on the stall).
        writer.make_writer().write_all(b"first\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let line = vec![b'x'; 1023];
        let started = Instant::now();
        let mut writes = 0;
        let mut line = line;
        line.push(b'\n');
        while writes < 2 * (MAX_BUFFERED / 1024) {
            writer.make_writer().write_all(&line).unwrap();
            writes += 1;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // The metric (`estuary_log_lines_dropped_total`) counts them too.
        assert!(
            estuary_server::metrics::LOG_LINES_DROPPED.load(Ordering::Relaxed) - dropped_before
                >= (MAX_BUFFERED / 1024) as u64 / 2
        );
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
        // Whole lines only.
        assert!(out
            .lines()
            .all(|l| l == "first" || l.len() == 1023 || l.contains("log line(s) dropped")));
    }

    /// The server's last words come after its lines, are kept when the buffer is full, and
    /// never wait for a stderr that is not taking lines.
    #[test]
    fn last_words_follow_the_lines_and_never_wait() {
        let sink = Sink::default();
        let stall = sink.stalled.lock().unwrap();
        let (writer, guard) = start(sink.clone()).unwrap();
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        for _ in 0..2 * (MAX_BUFFERED / 1024) {
            writer.make_writer().write_all(&line).unwrap();
        }
        let started = Instant::now();
        let through = writer.shared.queue_last_words("error: the last words");
        assert!(through.is_some());
        assert!(started.elapsed() < Duration::from_secs(1));
        // Not out yet: stderr is not taking lines.
        assert!(!writer.shared.written_through(through.unwrap_or(0)));
        // The log thread's own panic message is not queued behind lines it will never write.
        let shared = Arc::clone(&writer.shared);
        let from_log_thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || shared.queue_last_words("thread 'estuary-log' panicked"))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(from_log_thread, None);
        drop(stall);
        writer.shared.flush(Duration::from_secs(5), false);
        assert!(writer.shared.written_through(through.unwrap_or(0)));
        drop(guard);
        let out = text(&sink);
        let lines: Vec<&str> = out.lines().collect();
        let last_words = lines.iter().position(|l| *l == "error: the last words");
        assert!(last_words.is_some(), "the last words were dropped");
        // Before them: the lines, and the notice of those dropped, which comes before the last
        // words when the log thread took the full buffer before they were queued.
        assert!(lines[..last_words.unwrap_or(0)]
            .iter()
            .all(|l| l.len() == 1023 || l.contains("log line(s) dropped")));
    }

    /// A panic's message as the default hook prints it (payload, place, thread).
    #[test]
    fn panic_message_names_the_thread_the_place_and_the_payload() {
        static CAUGHT: Mutex<Option<String>> = Mutex::new(None);
        const MARKER: &str = "log_writer test panic 7f3a";
        let previous = Arc::new(std::panic::take_hook());
        let delegate = Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() == Some(&MARKER) {
                *CAUGHT.lock().unwrap() = Some(panic_message(info));
            } else {
                delegate(info);
            }
        }));
        let outcome = std::thread::Builder::new()
            .name("panicky".into())
            .spawn(|| std::panic::panic_any(MARKER))
            .unwrap()
            .join();
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| previous(info)));
        assert!(outcome.is_err());
        let message = CAUGHT.lock().unwrap().take().unwrap();
        assert!(
            message.starts_with("thread 'panicky' panicked at crates/estuary/src/log_writer.rs:"),
            "{message}"
        );
        assert!(message.contains(&format!(":\n{MARKER}\n")), "{message}");
    }

    /// Writes are cut at line ends, at most one pipe buffer each (a long line alone).
    #[test]
    fn writes_are_whole_lines_of_at_most_a_pipe_buffer() {
        let text: Vec<u8> = (0..200)
            .flat_map(|i| format!("line {i} {}\n", "x".repeat(i * 7)).into_bytes())
            .chain(std::iter::repeat_n(b'y', 9000).chain([b'\n']))
            .collect();
        let mut rest = &text[..];
        let mut pieces = 0;
        while !rest.is_empty() {
            let n = piece_length(rest);
            let piece = &rest[..n];
            assert!(piece.ends_with(b"\n"));
            assert!(n <= MAX_WRITE || !piece[..n - 1].contains(&b'\n'));
            rest = &rest[n..];
            pieces += 1;
        }
        assert!(pieces > 30);
    }

    /// A sink that answers WouldBlock now and then (a non-blocking pipe) loses nothing.
    #[test]
    fn a_would_block_stderr_is_waited_for() {
        #[derive(Clone, Default)]
        struct Choppy {
            bytes: Arc<Mutex<Vec<u8>>>,
            calls: Arc<Mutex<u32>>,
        }
        impl std::io::Write for Choppy {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let mut calls = self.calls.lock().unwrap();
                *calls += 1;
                if calls.is_multiple_of(3) {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                let n = b.len().min(100);
                self.bytes.lock().unwrap().extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Choppy::default();
        let (writer, guard) = start(sink.clone()).unwrap();
        let expected: String = (0..300).map(|i| format!("line {i}\n")).collect();
        for line in expected.lines() {
            writer
                .make_writer()
                .write_all(format!("{line}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        assert_eq!(
            String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap(),
            expected
        );
    }
}
