//! `agent.debug_console`: a root shell for debugging.
//!
//! - With `agent.debug_console_vport=N` (what the runtime sets for
//!   `debug_console_enabled = true`, N = 1026): a listener on AF_VSOCK port N
//!   (any CID). Each connection gets its own shell on a new pseudo-terminal,
//!   as session leader with the pty as controlling terminal; bytes are copied
//!   both ways between the connection and the pty. When the connection ends
//!   the shell's process group is killed; when the shell exits the connection
//!   is closed. `kata-runtime exec <sandbox-id>` is the host end.
//! - Without a port: one shell on the VM console, respawned whenever it exits.
//!
//! Nothing here is fatal to the agent (PID 1): errors are logged and end at
//! most one session.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};

use crate::reaper::Reaper;

const SHELLS: &[&str] = &["/bin/bash", "/bin/sh"];

/// The first shell of [`SHELLS`] that exists, or None (logged).
fn find_shell() -> Option<&'static str> {
    let shell = SHELLS.iter().copied().find(|s| Path::new(s).exists());
    if shell.is_none() {
        log::error!("debug console: none of {SHELLS:?} exists in this image; no debug console");
    }
    shell
}

/// Runs `f` in a named thread; false (logged) when it cannot start.
fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    match std::thread::Builder::new().name(name.into()).spawn(f) {
        Ok(_) => true,
        Err(e) => {
            log::error!("debug console: cannot start thread {name}: {e}");
            false
        }
    }
}

/// Doubles `backoff` up to 10 s, back to 100 ms after a run of 5 s or more
/// (something that fails at once must not spin the CPU).
fn next_backoff(backoff: Duration, started: Instant) -> Duration {
    if started.elapsed() > Duration::from_secs(5) {
        Duration::from_millis(100)
    } else {
        (backoff * 2).min(Duration::from_secs(10))
    }
}

/// Serial mode: starts the respawn loop on `console` in a thread. Returns
/// false when the image has no shell.
pub fn start(reaper: Reaper, console: PathBuf) -> bool {
    let Some(shell) = find_shell() else {
        return false;
    };
    thread("debug-console", move || {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let spawned = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&console)
                .and_then(|tty| spawn_shell(&reaper, shell, tty.into(), &["-i"]));
            match spawned {
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
            backoff = next_backoff(backoff, started);
            std::thread::sleep(backoff);
        }
    })
}

/// Vsock mode: listens on AF_VSOCK `port` (any CID) in a thread and serves
/// one shell per connection. Returns false when the image has no shell.
pub fn start_vsock(reaper: Reaper, port: u32) -> bool {
    let Some(shell) = find_shell() else {
        return false;
    };
    thread("debug-console", move || {
        // The vsock transport may still be probing when init starts: retry
        // (also after the listener breaks), saying so once.
        let mut backoff = Duration::from_millis(100);
        let mut logged = false;
        loop {
            let started = Instant::now();
            match listen_vsock(port) {
                Ok(listener) => {
                    log::info!("debug console: {shell} served on vsock port {port}");
                    logged = false;
                    serve(&listener, &reaper, shell);
                }
                Err(e) if !logged => {
                    log::error!("debug console: cannot listen on vsock port {port}: {e}; retrying");
                    logged = true;
                }
                Err(_) => {}
            }
            backoff = next_backoff(backoff, started);
            std::thread::sleep(backoff);
        }
    })
}

fn listen_vsock(port: u32) -> nix::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    socket::listen(&fd, socket::Backlog::new(4)?)?;
    Ok(fd)
}

/// Accepts connections on `listener` until accept fails persistently.
fn serve(listener: &OwnedFd, reaper: &Reaper, shell: &'static str) {
    let mut failures = 0;
    while failures < 100 {
        match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                failures = 0;
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                let reaper = reaper.clone();
                thread("debug-console-session", move || {
                    if let Err(e) = session(conn, &reaper, shell) {
                        log::error!("debug console session: {e}");
                    }
                });
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => {}
            Err(e) => {
                // e.g. EMFILE: wait rather than spin
                log::warn!("debug console: accept: {e}");
                failures += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    log::error!("debug console: accept keeps failing; listening again");
}

/// Spawns `shell` (tracked by the reaper) as session leader with `tty` as
/// its controlling terminal and stdin, stdout and stderr.
fn spawn_shell(reaper: &Reaper, shell: &str, tty: OwnedFd, args: &[&str]) -> std::io::Result<i32> {
    let mut cmd = Command::new(shell);
    cmd.args(args)
        .env(
            "TERM",
            std::env::var("TERM").unwrap_or_else(|_| "vt100".into()),
        )
        .stdin(Stdio::from(tty.try_clone()?))
        .stdout(Stdio::from(tty.try_clone()?))
        .stderr(Stdio::from(tty));
    // A new session with the terminal as controlling terminal, so that job
    // control and Ctrl-C work in the shell.
    // SAFETY: the closure runs in the forked child before exec and only makes
    // raw, async-signal-safe syscalls (setsid, ioctl): no allocation, no locks
    // that another thread of the parent could have held at fork time.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(reaper.spawn(&mut cmd)?.pid)
}

/// Copies `from` to `to` until `from` ends or either side fails.
fn pump(mut from: File, mut to: File) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO on a pty master: no slave is open any more (the shell is gone)
            Err(_) => return,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// One console session: a shell on a new pty, relayed to `conn` (a
/// connected stream socket) until either side ends; the shell is reaped.
fn session(conn: OwnedFd, reaper: &Reaper, shell: &str) -> std::io::Result<()> {
    let pty = nix::pty::openpty(
        None::<&nix::pty::Winsize>,
        None::<&nix::sys::termios::Termios>,
    )?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    let pid = spawn_shell(reaper, shell, pty.slave, &[])?;
    log::info!("debug console: session with {shell} as pid {pid}");
    let input = (conn.try_clone()?, pty.master.try_clone()?);
    let input_reaper = reaper.clone();
    // connection -> shell; when the connection ends, so does the shell
    let input = std::thread::Builder::new()
        .name("debug-console-input".into())
        .spawn(move || {
            pump(input.0.into(), input.1.into());
            input_reaper.kill_group(pid, Signal::SIGKILL);
        });
    if input.is_err() {
        reaper.kill_group(pid, Signal::SIGKILL);
    }
    // shell -> connection, until the pty has no slave left (EIO) or the
    // connection fails
    pump(pty.master.into(), conn.try_clone()?.into());
    // wakes the input side (its read returns 0), which kills the shell if
    // it still runs
    let _ = socket::shutdown(conn.as_fd().as_raw_fd(), socket::Shutdown::Both);
    if let Ok(input) = input {
        let _ = input.join();
    }
    let status = reaper.wait(pid);
    log::info!("debug console: session ended ({shell} {status:?})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Reads from the console until `done` holds for what was read (or EOF).
    fn read_until(conn: &mut UnixStream, done: impl Fn(&str) -> bool) -> String {
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !done(&String::from_utf8_lossy(&seen)) {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "reading the console: {e}; so far {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// A session on one end of a socket pair; the receiver hears when it ends.
    fn start_session(reaper: &Reaper) -> (UnixStream, std::sync::mpsc::Receiver<()>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let reaper = reaper.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            session(guest.into(), &reaper, "/bin/sh").unwrap();
            let _ = tx.send(());
        });
        (host, rx)
    }

    fn ended(rx: std::sync::mpsc::Receiver<()>) {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the session did not end within 20 s");
    }

    #[test]
    fn a_session_runs_a_shell_on_a_terminal_and_ends_with_it() {
        let reaper = Reaper::for_tests();
        let (mut host, t) = start_session(&reaper);
        // stdin is a terminal, the shell leads its own session (field 6 of
        // /proc/PID/stat) and has a controlling terminal (field 7)
        host.write_all(b"set -- $(cat /proc/$$/stat); test -t 0 && test \"$6\" = $$ && test \"$7\" != 0; echo tty-$((6*7))-$?\n")
            .unwrap();
        // the pty echoes the line as typed: only the shell prints tty-42
        let out = read_until(&mut host, |s| s.contains("tty-42-"));
        assert!(out.contains("tty-42-0"), "{out:?}");
        host.write_all(b"exit\n").unwrap();
        // the shell exits: the session closes the connection (EOF)
        read_until(&mut host, |_| false);
        ended(t);
    }

    #[test]
    fn the_shell_is_killed_when_the_connection_ends() {
        let reaper = Reaper::for_tests();
        let (mut host, t) = start_session(&reaper);
        host.write_all(b"echo pid-$((0+$$))-end\n").unwrap();
        let pid = |s: &str| {
            s.split("pid-")
                .filter_map(|p| p.split_once("-end"))
                .find_map(|(n, _)| n.parse::<i32>().ok())
        };
        let out = read_until(&mut host, |s| pid(s).is_some());
        let pid = pid(&out).unwrap_or_else(|| panic!("no pid in {out:?}"));
        drop(host);
        // the session returns only after the shell was reaped
        ended(t);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "shell {pid} still runs"
        );
    }
}
