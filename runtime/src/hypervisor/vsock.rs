//! The host end of the agent channel (guest AF_VSOCK port 1024).
//!
//! Two backends:
//! - vhost-vsock (`/dev/vhost-vsock`): the host connects with AF_VSOCK to
//!   `guest-cid:1024` directly.
//! - hybrid vsock: QEMU's `vhost-user-vsock-pci` served by the rust-vmm
//!   `vhost-device-vsock` daemon, which exposes the guest's ports through one
//!   unix socket (`uds-path`). A host connection writes `CONNECT <port>\n`
//!   and reads `OK <host-port>\n`; after that the stream is the guest's port.
//!   If nothing listens on that port yet, the daemon closes the connection
//!   (or never answers while the guest's driver is not up), so callers retry.
//!
//! Plus plain unix sockets, for an agent run in service mode on the host.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::daemon::HelperDaemon;
use super::error::VmError;

/// The port the agent listens on in the guest (upstream Kata's value).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Where the agent can be reached from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// `unix:///path`: a unix socket the agent listens on (service mode).
    Unix(PathBuf),
    /// `hvsock:///path/vsock.sock:1024`: hybrid vsock (`CONNECT` handshake).
    HybridVsock { uds_path: PathBuf, port: u32 },
    /// `vsock://CID:1024`: AF_VSOCK through vhost-vsock.
    Vsock { cid: u32, port: u32 },
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddress::Unix(p) => write!(f, "unix://{}", p.display()),
            AgentAddress::HybridVsock { uds_path, port } => {
                write!(f, "hvsock://{}:{port}", uds_path.display())
            }
            AgentAddress::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

impl std::str::FromStr for AgentAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use unix:///path, hvsock:///path/vsock.sock:PORT or vsock://CID:PORT";
        let port = |p: &str| {
            p.parse::<u32>()
                .map_err(|_| format!("bad port {p:?} in agent address {s:?}: {usage}"))
        };
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "agent address {s:?} needs an absolute path: {usage}"
                ));
            }
            Ok(AgentAddress::Unix(PathBuf::from(path)))
        } else if let Some(rest) = s.strip_prefix("hvsock://") {
            let (path, p) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("agent address {s:?} lacks the guest port: {usage}"))?;
            if !path.starts_with('/') {
                return Err(format!(
                    "agent address {s:?} needs an absolute path: {usage}"
                ));
            }
            Ok(AgentAddress::HybridVsock {
                uds_path: PathBuf::from(path),
                port: port(p)?,
            })
        } else if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, p) = rest
                .split_once(':')
                .ok_or_else(|| format!("agent address {s:?} lacks the port: {usage}"))?;
            let cid = cid
                .parse::<u32>()
                .map_err(|_| format!("bad CID {cid:?} in agent address {s:?}: {usage}"))?;
            Ok(AgentAddress::Vsock {
                cid,
                port: port(p)?,
            })
        } else {
            Err(format!("unknown agent address {s:?}: {usage}"))
        }
    }
}

impl AgentAddress {
    /// Open one stream to the agent. `timeout` bounds the connection and the
    /// hybrid vsock handshake; the returned fd is blocking and has no
    /// timeouts left on it (ttrpc applies its own per call).
    pub fn connect(&self, timeout: Duration) -> std::io::Result<OwnedFd> {
        match self {
            AgentAddress::Unix(path) => Ok(UnixStream::connect(path)?.into()),
            AgentAddress::HybridVsock { uds_path, port } => {
                Ok(hybrid_vsock_connect(uds_path, *port, timeout)?.into())
            }
            AgentAddress::Vsock { cid, port } => vsock_connect(*cid, *port, timeout),
        }
    }
}

/// Hybrid vsock handshake on `uds_path`: `CONNECT port\n` -> `OK <n>\n`.
pub fn hybrid_vsock_connect(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds_path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: anything after the newline already belongs to the guest.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!(
                        "hybrid vsock {}: connection closed after CONNECT {port} (nothing listens on guest port {port} yet){}",
                        uds_path.display(),
                        if line.is_empty() { String::new() } else { format!(", partial reply {:?}", String::from_utf8_lossy(&line)) }
                    ),
                ))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= 64 => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "hybrid vsock reply line too long"))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("hybrid vsock {}: no reply to CONNECT {port} within {timeout:?}", uds_path.display()),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    let reply = String::from_utf8_lossy(&line);
    if !reply.starts_with("OK ") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!(
                "hybrid vsock {}: CONNECT {port} answered {reply:?}",
                uds_path.display()
            ),
        ));
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// AF_VSOCK connect with a bounded connect time (vsock's own connect timeout
/// socket option), then back to plain blocking I/O.
pub fn vsock_connect(cid: u32, port: u32, timeout: Duration) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SO_VM_SOCKETS_CONNECT_TIMEOUT (level AF_VSOCK, option 6) takes a timeval.
    // The field types are inferred: musl deprecates naming time_t and
    // suseconds_t (they are to become 64-bit there).
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    // SAFETY: valid fd, pointer and length of a timeval.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::AF_VSOCK,
            6,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(cid, port),
    )?;
    Ok(fd)
}

/// Where the release installs its `vhost-device-vsock`.
pub const RELEASE_VSOCK_DAEMON: &str = "/opt/kata/libexec/vhost-device-vsock";

/// Find the `vhost-device-vsock` binary when the configuration names none:
/// `$PATH`, then `~/.cargo/bin`, then the release's.
pub fn find_vsock_daemon() -> Option<PathBuf> {
    host_support::program::which("vhost-device-vsock")
        .or_else(|| Some(PathBuf::from(RELEASE_VSOCK_DAEMON)).filter(|p| p.is_file()))
}

/// Install hint for errors about the daemon. The release's build carries
/// fixes for daemon threads that die on early or abandoned connections
/// (`vhost-device-vsock/patches/`), so a plain `cargo install` of the crate
/// is not what to point at.
pub(crate) const VSOCK_DAEMON_HINT: &str =
    "install the kata-containers-static release (it ships /opt/kata/libexec/vhost-device-vsock) or build it with `cargo xtask release`, and set vhost_user_vsock_daemon";

/// A running `vhost-device-vsock` serving one VM. It does not exit when QEMU
/// does (it waits for the next front-end), so its owner must stop it.
#[derive(Debug)]
pub struct HybridVsockDaemon {
    inner: HelperDaemon,
    /// vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    /// Unix socket host programs connect to (`CONNECT <port>`).
    pub uds_path: PathBuf,
}

impl HybridVsockDaemon {
    /// Start the daemon and wait (at most `timeout`) for both sockets.
    ///
    /// Command line: `vhost-device-vsock --guest-cid CID --socket SOCKET --uds-path UDS`.
    pub fn start(
        binary: &Path,
        guest_cid: u32,
        socket: &Path,
        uds_path: &Path,
        log: &Path,
        timeout: Duration,
        kill_on_parent_death: bool,
    ) -> Result<Self, VmError> {
        let mut cmd = Command::new(binary);
        cmd.arg("--guest-cid")
            .arg(guest_cid.to_string())
            .arg("--socket")
            .arg(socket)
            .arg("--uds-path")
            .arg(uds_path);
        let inner = HelperDaemon::spawn(
            "vhost-device-vsock",
            cmd,
            format!("; {VSOCK_DAEMON_HINT}"),
            vec![socket.to_owned(), uds_path.to_owned()],
            log,
            timeout,
            kill_on_parent_death,
        )?;
        Ok(HybridVsockDaemon {
            inner,
            socket: socket.to_owned(),
            uds_path: uds_path.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Error if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<(), VmError> {
        self.inner.check_alive()
    }

    /// SIGTERM, SIGKILL after one second, reap, remove its sockets. Idempotent.
    pub fn stop(&mut self) {
        self.inner.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    #[test]
    fn agent_addresses_round_trip() {
        for s in [
            "unix:///run/agent.sock",
            "hvsock:///run/kata/x/vsock.sock:1024",
            "vsock://3:1024",
        ] {
            let a: AgentAddress = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "hvsock:///a/b.sock:1024".parse::<AgentAddress>().unwrap(),
            AgentAddress::HybridVsock {
                uds_path: "/a/b.sock".into(),
                port: 1024
            }
        );
        for bad in [
            "tcp://1.2.3.4:5",
            "unix://relative",
            "hvsock:///a/b.sock",
            "vsock://x:1024",
            "vsock://3",
        ] {
            let err = bad.parse::<AgentAddress>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    /// A fake hybrid vsock endpoint: reads the CONNECT line, answers with
    /// `reply` (None: closes), then echoes one line back.
    fn fake_endpoint(
        listener: UnixListener,
        reply: Option<&'static str>,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut writer = stream;
            if let Some(r) = reply {
                // Reply and the guest's first bytes in one write: the client
                // must not swallow what follows the newline.
                writer
                    .write_all(format!("{r}\nGUEST-HELLO\n").as_bytes())
                    .unwrap();
                let mut echo = String::new();
                reader.read_line(&mut echo).unwrap();
                writer.write_all(echo.as_bytes()).unwrap();
            }
            line
        })
    }

    #[test]
    fn hybrid_handshake_ok_then_raw_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let server = fake_endpoint(UnixListener::bind(&path).unwrap(), Some("OK 1073741824"));
        let stream = hybrid_vsock_connect(&path, 1024, Duration::from_secs(5)).unwrap();
        assert_eq!(
            stream.read_timeout().unwrap(),
            None,
            "timeouts are cleared for ttrpc"
        );
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert_eq!(first, "GUEST-HELLO\n");
        (&stream).write_all(b"ping\n").unwrap();
        let mut echo = String::new();
        reader.read_line(&mut echo).unwrap();
        assert_eq!(echo, "ping\n");
        assert_eq!(server.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn hybrid_handshake_refusals_and_silence() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed.sock");
        let server = fake_endpoint(UnixListener::bind(&closed).unwrap(), None);
        let err = hybrid_vsock_connect(&closed, 1024, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(
            err.to_string()
                .contains("nothing listens on guest port 1024"),
            "{err}"
        );
        server.join().unwrap();

        let garbage = dir.path().join("garbage.sock");
        let server = fake_endpoint(
            UnixListener::bind(&garbage).unwrap(),
            Some("ERR no such port"),
        );
        let err = hybrid_vsock_connect(&garbage, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("ERR no such port"), "{err}");
        drop(server);

        let silent = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&silent).unwrap();
        let hold = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(2));
            drop(s);
        });
        let started = Instant::now();
        let err = hybrid_vsock_connect(&silent, 1024, Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.join().unwrap();

        let err = hybrid_vsock_connect(
            &dir.path().join("absent.sock"),
            1024,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
