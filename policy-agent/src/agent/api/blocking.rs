//! One request and its reply over the agent's socket, without an async runtime (the CNI
//! plugin is a short-lived process), under one total deadline and a size cap.
//!
//! The plugin runs inside the container runtime's ADD, so it must never outlive its own
//! `timeoutSeconds` nor grow without bound, whatever sits on the other end of the socket:
//! every step (connect, send, each read) only waits for what is left of the deadline, and
//! the reply is read in chunks into a buffer that never exceeds [`MAX_REPLY_BYTES`].

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use socket2::{Domain, SockAddr, Socket, Type};

use super::EndpointCallError;

/// The longest reply the plugin accepts, newline included: 1 MiB. The agent's answer to an
/// endpoint request is one short JSON object (well under a kilobyte), so anything near
/// this is not the agent speaking; the cap bounds the plugin's memory.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// How long to wait before connecting again while the agent's accept queue is full: short,
/// so a connect that becomes possible is not delayed much, and bounded by the deadline.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// How much of the reply one read takes: the agent's answer fits in one.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Which step of a call was under way when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connecting to the socket.
    Connecting,
    /// Writing the request.
    Sending,
    /// Reading the reply.
    Reading,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connecting => "connecting",
            Self::Sending => "sending the request",
            Self::Reading => "reading the reply",
        })
    }
}

/// One call: the socket it talks to and the instant by which it must be over.
struct Call {
    /// The socket, as errors show it.
    shown: String,
    /// The whole call's budget, as errors show it.
    timeout: Duration,
    /// When the budget runs out; `None` when `timeout` is too large to add to now (it then
    /// never runs out, as asked).
    deadline: Option<Instant>,
}

impl Call {
    fn new(path: &Path, timeout: Duration) -> Self {
        Self {
            shown: path.display().to_string(),
            timeout,
            deadline: Instant::now().checked_add(timeout),
        }
    }

    /// What is left of the budget; an error once nothing is (a zero timeout means "no
    /// timeout" to the socket options, so it must never reach them).
    fn remaining(&self, stage: Stage) -> Result<Duration, EndpointCallError> {
        let Some(deadline) = self.deadline else {
            return Ok(Duration::MAX);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out(stage));
        }
        Ok(left)
    }

    fn timed_out(&self, stage: Stage) -> EndpointCallError {
        EndpointCallError::TimedOut {
            path: self.shown.clone(),
            timeout: self.timeout,
            stage,
        }
    }

    /// An I/O error of `stage`; a socket timeout is the deadline running out.
    fn failed(&self, stage: Stage, source: io::Error) -> EndpointCallError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timed_out(stage),
            _ => EndpointCallError::Io {
                path: self.shown.clone(),
                stage,
                source,
            },
        }
    }

    fn closed(&self) -> EndpointCallError {
        EndpointCallError::Closed {
            path: self.shown.clone(),
        }
    }
}

/// Sends `request` (one line) to the socket at `path` and returns the reply line, all
/// within `timeout`.
pub fn call(path: &Path, request: &[u8], timeout: Duration) -> Result<Vec<u8>, EndpointCallError> {
    let call = Call::new(path, timeout);
    let mut conn = connect(path, &call)?;
    send(&mut conn, request, &call)?;
    receive(&mut conn, &call)
}

/// Connects without blocking past the deadline: a unix socket's connect blocks while the
/// listener's accept queue is full (an agent that no longer accepts), so it is made
/// non-blocking and retried until it succeeds or the deadline passes.
fn connect(path: &Path, call: &Call) -> Result<UnixStream, EndpointCallError> {
    let unreachable = |source| EndpointCallError::Unreachable {
        path: call.shown.clone(),
        source,
    };
    let address = SockAddr::unix(path).map_err(unreachable)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(unreachable)?;
    socket.set_nonblocking(true).map_err(unreachable)?;
    loop {
        match socket.connect(&address) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = call.remaining(Stage::Connecting)?;
                std::thread::sleep(left.min(CONNECT_RETRY_INTERVAL));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreachable(e)),
        }
    }
    // Connected: from here on the socket timeouts bound each blocking step.
    socket
        .set_nonblocking(false)
        .map_err(|e| call.failed(Stage::Connecting, e))?;
    Ok(socket.into())
}

/// Writes the whole request, each write waiting at most for what is left of the deadline.
fn send(conn: &mut UnixStream, request: &[u8], call: &Call) -> Result<(), EndpointCallError> {
    let mut rest = request;
    while !rest.is_empty() {
        conn.set_write_timeout(Some(call.remaining(Stage::Sending)?))
            .map_err(|e| call.failed(Stage::Sending, e))?;
        match conn.write(rest) {
            Ok(0) => return Err(call.closed()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(call.failed(Stage::Sending, e)),
        }
    }
    Ok(())
}

/// Reads the reply up to its newline (or the end of the connection). Each read waits at
/// most for what is left of the deadline, so a reply that trickles in forever still ends
/// with it; a reply that reaches [`MAX_REPLY_BYTES`] without ending is refused unread.
fn receive(conn: &mut UnixStream, call: &Call) -> Result<Vec<u8>, EndpointCallError> {
    let mut reply = Vec::new();
    let mut chunk = [0; READ_CHUNK_BYTES];
    loop {
        let room = MAX_REPLY_BYTES - reply.len();
        if room == 0 {
            return Err(EndpointCallError::Oversized {
                path: call.shown.clone(),
                limit: MAX_REPLY_BYTES,
            });
        }
        conn.set_read_timeout(Some(call.remaining(Stage::Reading)?))
            .map_err(|e| call.failed(Stage::Reading, e))?;
        let n = match conn.read(&mut chunk[..room.min(READ_CHUNK_BYTES)]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(call.failed(Stage::Reading, e)),
        };
        if n == 0 {
            // The agent writes its answer and a newline; an answer cut short by the end of
            // the connection is still parsed (and refused if incomplete).
            return if reply.is_empty() {
                Err(call.closed())
            } else {
                Ok(reply)
            };
        }
        let got = &chunk[..n];
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            reply.extend_from_slice(&got[..end]);
            return Ok(reply);
        }
        reply.extend_from_slice(got);
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener, path::PathBuf, thread};

    use super::*;

    /// How long the tests give a call: short, they wait for it to run out.
    const TEST_TIMEOUT: Duration = Duration::from_millis(300);
    /// How far past its deadline a call may return: scheduling, not a benchmark.
    const MARGIN: Duration = Duration::from_secs(2);

    /// A fresh directory for a test's socket, removed when the test ends (also on failure).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "policy-agent-api-test-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("agent.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves one connection at `path` with `answer`, which gets the request line.
    fn serve_once(path: &Path, answer: impl FnOnce(UnixStream) + Send + 'static) {
        let listener = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            answer(conn);
        });
    }

    fn timed(path: &Path) -> (Result<Vec<u8>, EndpointCallError>, Duration) {
        let start = Instant::now();
        let result = call(path, b"{\"request\":\"status\"}\n", TEST_TIMEOUT);
        (result, start.elapsed())
    }

    #[test]
    fn the_reply_line_is_returned_without_its_newline() {
        let dir = TempDir::new("reply");
        serve_once(&dir.socket(), |mut conn| {
            conn.write_all(b"{\"result\":\"deleted\"}\nignored")
                .unwrap();
        });
        let (result, _) = timed(&dir.socket());
        assert_eq!(result.unwrap(), b"{\"result\":\"deleted\"}");
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let dir = TempDir::new("missing");
        let (result, _) = timed(&dir.socket());
        assert!(
            matches!(result, Err(EndpointCallError::Unreachable { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_silent_agent_runs_into_the_deadline() {
        let dir = TempDir::new("silent");
        serve_once(&dir.socket(), |_conn| thread::sleep(TEST_TIMEOUT + MARGIN));
        let (result, elapsed) = timed(&dir.socket());
        assert!(
            matches!(
                result,
                Err(EndpointCallError::TimedOut {
                    stage: Stage::Reading,
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(
            elapsed >= TEST_TIMEOUT && elapsed < TEST_TIMEOUT + MARGIN,
            "{elapsed:?}"
        );
    }

    #[test]
    fn a_reply_that_trickles_in_forever_runs_into_the_deadline() {
        let dir = TempDir::new("drip");
        serve_once(&dir.socket(), |mut conn| {
            // Each byte well within the timeout: only the total deadline stops it.
            while conn.write_all(b" ").is_ok() {
                thread::sleep(TEST_TIMEOUT / 10);
            }
        });
        let (result, elapsed) = timed(&dir.socket());
        assert!(
            matches!(result, Err(EndpointCallError::TimedOut { .. })),
            "{result:?}"
        );
        assert!(elapsed < TEST_TIMEOUT + MARGIN, "{elapsed:?}");
    }

    #[test]
    fn a_reply_longer_than_the_cap_is_refused_at_the_cap() {
        let dir = TempDir::new("flood");
        serve_once(&dir.socket(), |mut conn| {
            let block = [b'x'; READ_CHUNK_BYTES];
            while conn.write_all(&block).is_ok() {}
        });
        let (result, elapsed) = timed(&dir.socket());
        assert!(
            matches!(
                result,
                Err(EndpointCallError::Oversized {
                    limit: MAX_REPLY_BYTES,
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(elapsed < TEST_TIMEOUT, "it does not wait: {elapsed:?}");
    }

    #[test]
    fn a_reply_of_exactly_the_cap_is_accepted() {
        let dir = TempDir::new("cap");
        serve_once(&dir.socket(), |mut conn| {
            let mut reply = vec![b'x'; MAX_REPLY_BYTES - 1];
            reply.push(b'\n');
            conn.write_all(&reply).unwrap();
        });
        let (result, _) = timed(&dir.socket());
        assert_eq!(result.unwrap().len(), MAX_REPLY_BYTES - 1);
    }

    #[test]
    fn a_hangup_without_an_answer_is_closed() {
        let dir = TempDir::new("hangup");
        serve_once(&dir.socket(), |conn| {
            // Read first: a unix socket closed with unread data resets the connection.
            std::io::BufRead::read_line(&mut std::io::BufReader::new(conn), &mut String::new())
                .unwrap();
        });
        let (result, _) = timed(&dir.socket());
        assert!(
            matches!(result, Err(EndpointCallError::Closed { .. })),
            "{result:?}"
        );
    }

    /// An agent that stopped accepting: once its queue is full, connect itself must give up
    /// at the deadline.
    #[test]
    fn a_full_accept_queue_runs_into_the_deadline_while_connecting() {
        let dir = TempDir::new("backlog");
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener
            .bind(&SockAddr::unix(dir.socket()).unwrap())
            .unwrap();
        // A backlog of 0 admits one connection that nobody accepts; the next one waits.
        listener.listen(0).unwrap();
        let _queued = UnixStream::connect(dir.socket()).unwrap();
        let (result, elapsed) = timed(&dir.socket());
        assert!(
            matches!(
                result,
                Err(EndpointCallError::TimedOut {
                    stage: Stage::Connecting,
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(
            elapsed >= TEST_TIMEOUT && elapsed < TEST_TIMEOUT + MARGIN,
            "{elapsed:?}"
        );
    }
}
