//! A minimal QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! QMP is line-delimited JSON: the server greets with `{"QMP": {...}}`, the
//! client must send `qmp_capabilities` before anything else, and then every
//! `{"execute": ...}` gets exactly one `{"return": ...}` or `{"error": ...}`,
//! with asynchronous `{"event": ...}` lines interleaved at any point.
//! Every read and write is bounded by the client's timeout.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?} waiting for the QMP {what}")]
    Timeout { what: String, after: Duration },
    #[error("QMP socket I/O failed during {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection closed by QEMU during {0}")]
    Closed(String),
    #[error("QMP protocol error during {what}: {detail}")]
    Protocol { what: String, detail: String },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpStatus {
    /// QEMU's run state: "running", "paused", "shutdown", "internal-error"...
    pub status: String,
    pub running: bool,
}

pub struct QmpClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    greeting: Value,
    events: Vec<Value>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connect, read the greeting and negotiate capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Self::from_stream(stream, timeout)
    }

    /// Same as [`QmpClient::connect`] on an already connected stream.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| QmpError::Io { what, source }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("setup"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io("setup"))?;
        let writer = stream.try_clone().map_err(io("setup"))?;
        let mut client = QmpClient {
            reader: BufReader::new(stream),
            writer,
            timeout,
            greeting: Value::Null,
            events: Vec::new(),
        };
        let greeting = client.read_message("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                what: "greeting".into(),
                detail: format!("expected a {{\"QMP\": ...}} greeting, got {greeting}"),
            });
        }
        client.greeting = greeting;
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// The server's greeting (QEMU version and capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Asynchronous events received so far (e.g. `SHUTDOWN` with its reason).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Run one command and return its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let line = Self::request_line(command, arguments);
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io_error(command, source))?;
        self.read_reply(command)
    }

    /// Hand QEMU the descriptor `fd` under `name` (QMP `getfd`, the fd as
    /// SCM_RIGHTS ancillary data): later commands name it, e.g.
    /// `netdev_add` with `"fd": name`. QEMU keeps its own copy.
    pub fn pass_fd(&mut self, name: &str, fd: std::os::fd::RawFd) -> Result<(), QmpError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let line = Self::request_line("getfd", Some(json!({ "fdname": name })));
        let fds = [fd];
        let iov = [std::io::IoSlice::new(line.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let sent = sendmsg::<()>(
            self.writer.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| self.io_error("getfd", e.into()))?;
        if sent != line.len() {
            // The fd went with the first bytes; the rest is plain data.
            self.writer
                .write_all(&line.as_bytes()[sent..])
                .map_err(|source| self.io_error("getfd", source))?;
        }
        self.read_reply("getfd").map(drop)
    }

    fn request_line(command: &str, arguments: Option<Value>) -> String {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        line
    }

    fn read_reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let msg = self.read_message(command)?;
            if msg.get("event").is_some() {
                self.events.push(msg);
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.into(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol {
                what: command.into(),
                detail: format!("unexpected message {msg}"),
            });
        }
    }

    /// Waits up to `within` for an event named `name` whose `data` satisfies
    /// `matches`; one already received counts (and is taken off the list).
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Result<Value, QmpError> {
        let is_it = |e: &Value| {
            e.get("event").and_then(Value::as_str) == Some(name)
                && matches(e.get("data").unwrap_or(&Value::Null))
        };
        if let Some(i) = self.events.iter().position(is_it) {
            return Ok(self.events.remove(i));
        }
        let deadline = std::time::Instant::now() + within;
        let result = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Err(QmpError::Timeout {
                    what: format!("event {name}"),
                    after: within,
                });
            }
            if let Err(source) = self.reader.get_ref().set_read_timeout(Some(left)) {
                break Err(QmpError::Io {
                    what: format!("event {name}"),
                    source,
                });
            }
            match self.read_message(name) {
                Ok(msg) if is_it(&msg) => break Ok(msg),
                Ok(msg) if msg.get("event").is_some() => self.events.push(msg),
                Ok(msg) => {
                    break Err(QmpError::Protocol {
                        what: format!("event {name}"),
                        detail: format!("unexpected message {msg}"),
                    })
                }
                Err(QmpError::Timeout { .. }) => continue,
                Err(e) => break Err(e),
            }
        };
        let _ = self.reader.get_ref().set_read_timeout(Some(self.timeout));
        result
    }

    pub fn query_status(&mut self) -> Result<QmpStatus, QmpError> {
        let ret = self.execute("query-status", None)?;
        let status = ret.get("status").and_then(Value::as_str);
        let running = ret.get("running").and_then(Value::as_bool);
        match (status, running) {
            (Some(status), Some(running)) => Ok(QmpStatus {
                status: status.into(),
                running,
            }),
            _ => Err(QmpError::Protocol {
                what: "query-status".into(),
                detail: format!("unexpected reply {ret}"),
            }),
        }
    }

    /// Ask QEMU to exit. QEMU may close the socket right after (or even
    /// before we read) its reply; both count as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed(_)) => Ok(()),
            Err(QmpError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn io_error(&self, what: &str, source: std::io::Error) -> QmpError {
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => QmpError::Timeout {
                what: format!("reply to {what}"),
                after: self.timeout,
            },
            std::io::ErrorKind::BrokenPipe => QmpError::Closed(what.into()),
            _ => QmpError::Io {
                what: what.into(),
                source,
            },
        }
    }

    fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|source| self.io_error(what, source))?;
            if n == 0 {
                return Err(QmpError::Closed(what.into()));
            }
            if !line.trim().is_empty() {
                break;
            }
        }
        serde_json::from_str(line.trim()).map_err(|e| QmpError::Protocol {
            what: what.into(),
            detail: format!("invalid JSON {:?}: {e}", line.trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake QMP server: greets, then answers each request line with the
    /// next scripted reply (several lines allowed), recording the requests.
    fn fake_server(
        listener: UnixListener,
        replies: Vec<Vec<String>>,
    ) -> std::thread::JoinHandle<Vec<Value>> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            writer.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n").unwrap();
            let mut reader = BufReader::new(stream);
            let mut requests = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                requests.push(serde_json::from_str(&line).unwrap());
                for l in reply {
                    writer.write_all(l.as_bytes()).unwrap();
                    writer.write_all(b"\r\n").unwrap();
                }
            }
            requests
        })
    }

    #[test]
    fn handshake_status_events_errors_and_quit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = fake_server(
            listener,
            vec![
                vec![r#"{"return": {}}"#.into()],
                vec![
                    r#"{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}"#.into(),
                    r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#.into(),
                ],
                vec![r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#.into()],
                vec![r#"{"return": {}}"#.into(), r#"{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#.into()],
            ],
        );
        let mut qmp = QmpClient::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);
        assert_eq!(
            qmp.query_status().unwrap(),
            QmpStatus {
                status: "running".into(),
                running: true
            }
        );
        assert_eq!(
            qmp.events().len(),
            1,
            "the RESUME event is kept, not mistaken for the reply"
        );
        match qmp.execute("nope", Some(json!({"x": 1}))) {
            Err(QmpError::Command { command, class, .. }) => {
                assert_eq!(command, "nope");
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        qmp.quit().unwrap();
        let requests = server.join().unwrap();
        let names: Vec<&str> = requests
            .iter()
            .map(|r| r["execute"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["qmp_capabilities", "query-status", "nope", "quit"]);
        assert_eq!(requests[2]["arguments"]["x"], 1);
    }

    #[test]
    fn silent_server_times_out_and_bad_greeting_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let keep = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(2));
            drop(s);
        });
        let started = std::time::Instant::now();
        let err = QmpClient::connect(&path, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        keep.join().unwrap();

        let path = dir.path().join("bad.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"hello\": 1}\n").unwrap();
        });
        let err = QmpClient::connect(&path, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
        t.join().unwrap();

        let err =
            QmpClient::connect(&dir.path().join("none.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
