//! The shared filesystem of a sandbox: virtio-fs, served on the host by
//! `virtiofsd` (one per VM) and exposed to the guest by QEMU's
//! `vhost-user-fs-pci` device under a mount tag (upstream Kata: `kataShared`).
//!
//! Like the hybrid vsock daemon, virtiofsd belongs to its VM: it is started
//! before QEMU (QEMU connects to its socket at startup) and stopped on
//! teardown; it never outlives the [`super::Vm`] that owns it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::daemon::HelperDaemon;
use super::error::VmError;

/// The mount tag upstream Kata gives its shared directory.
pub const DEFAULT_SHARED_FS_TAG: &str = "kataShared";
/// Debian's (and upstream Kata's QEMU-era) location of the C virtiofsd.
pub const DEFAULT_VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// virtiofsd's cache modes (`-o cache=`), as upstream's `virtio_fs_cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VirtioFsCache {
    None,
    #[default]
    Auto,
    Always,
}

impl VirtioFsCache {
    pub fn as_str(self) -> &'static str {
        match self {
            VirtioFsCache::None => "none",
            VirtioFsCache::Auto => "auto",
            VirtioFsCache::Always => "always",
        }
    }
}

impl std::str::FromStr for VirtioFsCache {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            // upstream also accepts "never" as a synonym of none
            "none" | "never" => Ok(VirtioFsCache::None),
            "auto" => Ok(VirtioFsCache::Auto),
            "always" => Ok(VirtioFsCache::Always),
            other => Err(format!(
                "unknown virtio-fs cache mode {other:?}: use none, auto or always"
            )),
        }
    }
}

/// A directory shared with the guest over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFs {
    /// The virtiofsd binary.
    pub daemon: PathBuf,
    /// The host directory the guest sees (virtiofsd's `source`).
    pub source: PathBuf,
    /// The guest's mount tag.
    pub tag: String,
    pub cache: VirtioFsCache,
    /// Appended to virtiofsd's command line (upstream's
    /// `virtio_fs_extra_args`).
    pub extra_args: Vec<String>,
}

impl SharedFs {
    pub fn new(source: impl Into<PathBuf>) -> Self {
        SharedFs {
            daemon: PathBuf::from(DEFAULT_VIRTIOFSD),
            source: source.into(),
            tag: DEFAULT_SHARED_FS_TAG.into(),
            cache: VirtioFsCache::Auto,
            extra_args: Vec::new(),
        }
    }

    /// virtiofsd's arguments for a given vhost-user socket.
    pub fn daemon_args(&self, socket: &Path) -> Vec<String> {
        let mut args = vec![
            format!("--socket-path={}", socket.display()),
            "-o".into(),
            format!("source={}", self.source.display()),
            "-o".into(),
            format!("cache={}", self.cache.as_str()),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running virtiofsd serving one VM. It exits by itself once QEMU
/// disconnects, but its owner stops it anyway (it may never have been
/// connected).
#[derive(Debug)]
pub struct VirtioFsDaemon {
    inner: HelperDaemon,
    pub socket: PathBuf,
}

impl VirtioFsDaemon {
    /// Start virtiofsd serving `shared.source` on `socket`, and wait (at most
    /// `timeout`) for the socket.
    pub fn start(
        shared: &SharedFs,
        socket: &Path,
        log: &Path,
        timeout: Duration,
        kill_on_parent_death: bool,
    ) -> Result<Self, VmError> {
        match std::fs::metadata(&shared.source) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(VmError::config(
                    "shared_fs",
                    format!("{} is not a directory", shared.source.display()),
                ))
            }
            Err(e) => {
                return Err(VmError::config(
                    "shared_fs",
                    format!("{}: {e}", shared.source.display()),
                ))
            }
        }
        let mut cmd = Command::new(&shared.daemon);
        cmd.args(shared.daemon_args(socket));
        let inner = HelperDaemon::spawn(
            "virtiofsd",
            cmd,
            "; install it (Debian: qemu-system-common ships /usr/lib/qemu/virtiofsd) or set virtio_fs_daemon".into(),
            vec![socket.to_owned()],
            log,
            timeout,
            kill_on_parent_death,
        )?;
        Ok(VirtioFsDaemon {
            inner,
            socket: socket.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Error if virtiofsd has exited.
    pub fn check_alive(&mut self) -> Result<(), VmError> {
        self.inner.check_alive()
    }

    /// SIGTERM, SIGKILL after one second, reap, remove the socket. Idempotent.
    pub fn stop(&mut self) {
        self.inner.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_command_line_and_cache_modes() {
        let mut fs = SharedFs::new("/run/kata-containers/shared/sb1");
        fs.cache = "always".parse().unwrap();
        fs.extra_args = vec!["--thread-pool-size=1".into()];
        assert_eq!(
            fs.daemon_args(Path::new("/run/kata-containers/sb1/virtiofsd.sock")),
            [
                "--socket-path=/run/kata-containers/sb1/virtiofsd.sock",
                "-o",
                "source=/run/kata-containers/shared/sb1",
                "-o",
                "cache=always",
                "--thread-pool-size=1"
            ]
        );
        assert_eq!("never".parse::<VirtioFsCache>(), Ok(VirtioFsCache::None));
        let err = "fast".parse::<VirtioFsCache>().unwrap_err();
        assert!(err.contains("\"fast\""), "{err}");
    }

    #[test]
    fn missing_source_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SharedFs::new(dir.path().join("absent"));
        let err = VirtioFsDaemon::start(
            &fs,
            &dir.path().join("s.sock"),
            &dir.path().join("log"),
            Duration::from_secs(1),
            true,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                VmError::Config {
                    field: "shared_fs",
                    ..
                }
            ),
            "{err}"
        );
    }
}
