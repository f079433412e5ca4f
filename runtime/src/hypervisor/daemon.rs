//! Host helper processes a VM depends on (the vhost-user back-ends
//! vhost-device-vsock and virtiofsd). They log to a file, are ready once
//! their sockets exist, and do not exit with QEMU (they wait for the next
//! front-end), so their owner stops them and removes their sockets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::error::VmError;
use super::process::{kill_with_parent, stop_child, tail_file, POLL};

const LOG_TAIL_LINES: usize = 20;

#[derive(Debug)]
pub(crate) struct HelperDaemon {
    name: &'static str,
    child: Child,
    sockets: Vec<PathBuf>,
    log: PathBuf,
}

impl HelperDaemon {
    /// Spawns `cmd` with stdout and stderr in `log` and waits (at most
    /// `timeout`) for every socket in `sockets` to appear. `hint` follows a
    /// spawn error (how to install the program).
    pub(crate) fn spawn(
        name: &'static str,
        mut cmd: Command,
        hint: String,
        sockets: Vec<PathBuf>,
        log: &Path,
        timeout: Duration,
        kill_on_parent_death: bool,
    ) -> Result<Self, VmError> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| VmError::io(format!("cannot create {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| VmError::io("dup log fd", e))?;
        cmd.stdin(Stdio::null()).stdout(log_file).stderr(log_err);
        if kill_on_parent_death {
            kill_with_parent(&mut cmd);
        }
        let child = cmd.spawn().map_err(|source| VmError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            hint,
            source,
        })?;
        let mut daemon = HelperDaemon {
            name,
            child,
            sockets,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            daemon.check_alive()?;
            if daemon.sockets.iter().all(|s| s.exists()) {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                daemon.stop();
                let names: Vec<String> = daemon
                    .sockets
                    .iter()
                    .map(|s| s.display().to_string())
                    .collect();
                return Err(VmError::Timeout {
                    what: format!("{name} to create {}", names.join(" and ")),
                    after: timeout,
                    console_log: None,
                    console_tail: String::new(),
                    stderr_tail: tail_file(log, LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the daemon has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), VmError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(VmError::HelperDaemonExited {
                name: self.name,
                status: status.to_string(),
                log_tail: tail_file(&self.log, LOG_TAIL_LINES),
            }),
            Ok(None) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Err(VmError::HelperDaemonExited {
                name: self.name,
                status: super::REAPED_ELSEWHERE.into(),
                log_tail: tail_file(&self.log, LOG_TAIL_LINES),
            }),
            Err(e) => Err(VmError::io(format!("cannot poll {}", self.name), e)),
        }
    }

    /// SIGTERM, SIGKILL after one second, reap, remove the sockets. Idempotent.
    pub(crate) fn stop(&mut self) {
        let _ = stop_child(
            &mut self.child,
            Some(Signal::SIGTERM),
            Duration::from_secs(1),
        );
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

impl Drop for HelperDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}
