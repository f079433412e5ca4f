//! Relays between the FIFOs containerd gives for a process (stdin, stdout,
//! stderr paths) and the agent's stream calls (WriteStdin, ReadStdout,
//! ReadStderr, CloseStdin): one thread per stream, each on its own agent
//! connection, because the read calls block in the agent until the process
//! writes and the agent serves each connection with a few worker threads.
//!
//! A FIFO is opened inside its thread: the open blocks until the other side
//! (ctr, CRI) opens it, which must not block the task service.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocols::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};

use crate::agent_client::{AgentAddress, AgentClient, DEFAULT_CONNECT_TIMEOUT};

/// Bytes asked per ReadStdout/ReadStderr.
const READ_CHUNK: u32 = 32 * 1024;

/// The FIFO paths of one process (empty: not connected).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The relay threads of one process.
pub struct StdioRelay {
    outputs: Vec<JoinHandle<()>>,
    stdin_done: Arc<Mutex<bool>>,
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl StdioRelay {
    /// Start the relays of process `exec_id` of container `cid`.
    pub fn start(
        address: &AgentAddress,
        call_timeout: Duration,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> StdioRelay {
        let mut outputs = Vec::new();
        let stdin_done = Arc::new(Mutex::new(paths.stdin.is_empty()));
        if !paths.stdin.is_empty() {
            let (a, c, e, p, done) = (
                address.clone(),
                cid.to_string(),
                exec_id.to_string(),
                PathBuf::from(&paths.stdin),
                stdin_done.clone(),
            );
            std::thread::spawn(move || {
                if let Err(err) = relay_stdin(&a, call_timeout, &c, &e, &p) {
                    log::warn!("{c}/{e}: stdin relay: {err}");
                }
                *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
            });
        }
        let mut streams = vec![(Stream::Stdout, &paths.stdout)];
        // With a terminal, stderr is merged into stdout by the pty.
        if !paths.terminal {
            streams.push((Stream::Stderr, &paths.stderr));
        }
        for (stream, path) in streams {
            if path.is_empty() {
                continue;
            }
            let (a, c, e, p) = (
                address.clone(),
                cid.to_string(),
                exec_id.to_string(),
                PathBuf::from(path),
            );
            outputs.push(std::thread::spawn(move || {
                if let Err(err) = relay_output(&a, stream, &c, &e, &p) {
                    log::warn!("{c}/{e}: output relay: {err}");
                }
            }));
        }
        StdioRelay {
            outputs,
            stdin_done,
        }
    }

    pub fn stdin_finished(&self) -> bool {
        *self.stdin_done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait (at most `timeout`) for stdout/stderr to reach end of stream,
    /// so that a process's last output is in the FIFOs before its exit is
    /// published. Returns whether they did.
    pub fn wait_outputs(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.outputs.iter().all(|h| h.is_finished()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// A stdin relay blocks in open(2) until containerd opens the FIFO's write
/// end; if it never will (the process is gone), opening and closing the
/// write end ourselves releases it, and it reads EOF. Nothing happens when
/// no reader waits (ENXIO) or there is no stdin.
pub fn unblock_fifo_reader(path: &str) {
    if path.is_empty() {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}

fn relay_stdin(
    address: &AgentAddress,
    call_timeout: Duration,
    cid: &str,
    exec_id: &str,
    path: &PathBuf,
) -> anyhow::Result<()> {
    let mut fifo = File::open(path).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    let client = AgentClient::connect(address, DEFAULT_CONNECT_TIMEOUT, call_timeout)?;
    let mut buf = vec![0u8; READ_CHUNK as usize];
    loop {
        let n = match fifo.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
        };
        let mut sent = 0;
        while sent < n {
            let mut req = WriteStreamRequest::new();
            req.container_id = cid.into();
            req.exec_id = exec_id.into();
            req.data = buf[sent..n].to_vec();
            let reply = client
                .agent()
                .write_stdin(client.context(), &req)
                .map_err(|e| anyhow::anyhow!("WriteStdin: {e}"))?;
            if reply.len == 0 {
                anyhow::bail!("WriteStdin accepted 0 bytes");
            }
            sent += reply.len as usize;
        }
    }
    log::debug!("{cid}/{exec_id}: stdin reached EOF; closing the process's stdin");
    let mut req = CloseStdinRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    client
        .agent()
        .close_stdin(client.context(), &req)
        .map_err(|e| anyhow::anyhow!("CloseStdin: {e}"))?;
    Ok(())
}

fn relay_output(
    address: &AgentAddress,
    stream: Stream,
    cid: &str,
    exec_id: &str,
    path: &PathBuf,
) -> anyhow::Result<()> {
    let mut fifo = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    // Reads block until the process writes: no call timeout. A dead VM ends
    // them when its vsock daemon is stopped.
    let client = AgentClient::connect(address, DEFAULT_CONNECT_TIMEOUT, Duration::ZERO)?;
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.len = READ_CHUNK;
        let ctx = ttrpc::context::Context::default();
        let reply = match stream {
            Stream::Stdout => client.agent().read_stdout(ctx, &req),
            Stream::Stderr => client.agent().read_stderr(ctx, &req),
        };
        match reply {
            Ok(r) => {
                if let Err(e) = fifo.write_all(&r.data) {
                    // The reader went away (ctr detached): keep draining so
                    // the process does not block on a full pipe.
                    log::debug!("{cid}/{exec_id}: write {}: {e}", path.display());
                }
            }
            // End of stream is reported as an error, as upstream does.
            Err(e) => {
                log::debug!("{cid}/{exec_id}: output stream ended: {e}");
                return Ok(());
            }
        }
    }
}
