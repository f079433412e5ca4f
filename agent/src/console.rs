//! `agent.debug_console`: a root shell on the VM console for debugging,
//! respawned whenever it exits.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::reaper::Reaper;

const SHELLS: &[&str] = &["/bin/bash", "/bin/sh"];

/// Starts the respawn loop in a thread. Returns false when the image has no shell.
pub fn start(reaper: Reaper, console: PathBuf) -> bool {
    let Some(shell) = SHELLS.iter().copied().find(|s| Path::new(s).exists()) else {
        log::error!(
            "agent.debug_console: none of {SHELLS:?} exists in this image; no debug console"
        );
        return false;
    };
    let spawn = std::thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = Instant::now();
                match spawn_shell(&reaper, shell, &console) {
                    Ok(pid) => {
                        log::info!(
                            "debug console: {shell} started as pid {pid} on {}",
                            console.display()
                        );
                        let status = reaper.wait(pid);
                        log::info!("debug console: {shell} exited ({status:?}); respawning");
                    }
                    Err(e) => log::error!(
                        "debug console: cannot start {shell} on {}: {e}",
                        console.display()
                    ),
                }
                // a shell that dies at once (broken console) must not spin the CPU
                backoff = if started.elapsed() > Duration::from_secs(5) {
                    Duration::from_millis(100)
                } else {
                    (backoff * 2).min(Duration::from_secs(10))
                };
                std::thread::sleep(backoff);
            }
        });
    if let Err(e) = spawn {
        log::error!("debug console: cannot start its thread: {e}");
        return false;
    }
    true
}

fn spawn_shell(reaper: &Reaper, shell: &str, console: &Path) -> std::io::Result<i32> {
    let tty = OpenOptions::new().read(true).write(true).open(console)?;
    let mut cmd = Command::new(shell);
    cmd.arg("-i")
        .env(
            "TERM",
            std::env::var("TERM").unwrap_or_else(|_| "vt100".into()),
        )
        .stdin(Stdio::from(tty.try_clone()?))
        .stdout(Stdio::from(tty.try_clone()?))
        .stderr(Stdio::from(tty));
    // A new session with the console as controlling terminal, so that job
    // control and Ctrl-C work in the shell.
    // SAFETY: the closure runs in the forked child before exec and only makes
    // raw, async-signal-safe syscalls (setsid, ioctl): no allocation, no locks
    // that another thread of the parent could have held at fork time.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(reaper.spawn(&mut cmd)?.pid)
}
