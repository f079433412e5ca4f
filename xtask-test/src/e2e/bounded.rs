//! Running host commands with a time bound, capturing what they said.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What one command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub command: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
    pub timed_out: bool,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    pub(crate) fn status_text(&self) -> String {
        match (self.timed_out, self.code, self.signal) {
            (true, ..) => format!(
                "timed out after {:.1}s and was killed",
                self.took.as_secs_f64()
            ),
            (_, Some(c), _) => format!("exit status {c}"),
            (_, None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        }
    }

    /// Command, status and both streams: what a failure report needs.
    pub fn describe(&self) -> String {
        format!(
            "`{}`: {} after {} ms\n  stdout: {}\n  stderr: {}",
            self.command,
            self.status_text(),
            self.took.as_millis(),
            quote_block(&self.stdout),
            quote_block(&self.stderr)
        )
    }

    /// Fails unless the command exited 0.
    pub fn require_success(self) -> Result<Outcome> {
        if !self.success() {
            bail!("{}", self.describe());
        }
        Ok(self)
    }
}

pub(super) fn quote_block(s: &str) -> String {
    let t = s.trim_end();
    if t.is_empty() {
        "(empty)".into()
    } else {
        format!("{t:?}")
    }
}

pub(super) fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// A command started with captured output, to be waited on with a bound.
pub struct Running {
    pub(super) command: String,
    pub(super) child: Child,
    pub(super) started: Instant,
    pub(super) readers: Vec<JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn spawn(cmd: Command, stdin: Option<Vec<u8>>) -> Result<Running> {
        let piped = stdin.is_some();
        let (running, pipe) = Running::spawn_inner(cmd, piped)?;
        if let (Some(data), Some(mut pipe)) = (stdin, pipe) {
            // A thread, so that a child that never reads cannot block us;
            // dropping the pipe is the EOF the child waits for.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        Ok(running)
    }

    /// Like [`Running::spawn`], handing back the stdin pipe: the caller
    /// decides when EOF happens by dropping it.
    pub fn spawn_with_stdin(cmd: Command) -> Result<(Running, std::process::ChildStdin)> {
        let (running, pipe) = Running::spawn_inner(cmd, true)?;
        Ok((running, pipe.expect("piped")))
    }

    pub(super) fn spawn_inner(
        mut cmd: Command,
        piped_stdin: bool,
    ) -> Result<(Running, Option<std::process::ChildStdin>)> {
        let command = describe_command(&cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run `{command}`"))?;
        let stdin = child.stdin.take();
        let mut readers = Vec::new();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        for mut pipe in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            readers.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            }));
        }
        Ok((
            Running {
                command,
                child,
                started,
                readers,
            },
            stdin,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (without reaping it for good).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait(mut self, timeout: Duration) -> Result<Outcome> {
        let left = timeout.saturating_sub(self.started.elapsed());
        let waited = host_support::process::wait_timeout(&mut self.child, left)?;
        let timed_out = waited.is_none();
        let status = match waited {
            Some(status) => status,
            None => host_support::process::stop_child(&mut self.child, None, Duration::ZERO)?,
        };
        let took = self.started.elapsed();
        // The streams end when every holder of the pipes is gone; a process
        // the child left behind may keep them open, so do not wait forever.
        let mut streams = Vec::new();
        for reader in self.readers.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            streams.push(if reader.is_finished() {
                reader.join().unwrap_or_default()
            } else {
                b"(stream still open)".to_vec()
            });
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(Outcome {
            command: self.command,
            code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(&streams[0]).into_owned(),
            stderr: String::from_utf8_lossy(&streams[1]).into_owned(),
            took,
            timed_out,
        })
    }
}

pub fn run_bounded(cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Outcome> {
    Running::spawn(cmd, stdin)?.wait(timeout)
}
