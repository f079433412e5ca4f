//! Choosing the accelerator: KVM only when a real guest kernel boots under
//! it, TCG otherwise.
//!
//! Opening `/dev/kvm` proves little: on some hosts (nested virtualisation,
//! broken CPU models) KVM opens and even runs a real-mode boot sector, yet a
//! Linux kernel hangs right after its real-mode setup or dies with "KVM
//! internal error: emulation failure". So the probe boots the very kernel the
//! VM will use, without an initrd, under KVM: a working KVM gets it through
//! the whole boot to the "cannot mount root" panic, which with `panic=-1` and
//! `-no-reboot` makes QEMU exit by itself within about a second. Anything
//! else within [`KVM_PROBE_TIMEOUT`] means TCG.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::{kill_with_parent, stop_child, tail_file, wait_timeout};

/// Upper bound of the KVM probe. A working KVM boots a kernel to its root
/// mount panic in well under a second; the bound leaves room for slow hosts
/// while keeping the cost of the fallback (paid once per process) small.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the kernel prints first once it runs in 64-bit mode; its presence
/// tells "kernel started" from "stuck in the real-mode setup".
const KERNEL_BANNER: &str = "Linux version";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if [`probe_kvm`] succeeds, else TCG with a warning on stderr.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel` option (`Auto` must be resolved first).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Auto => "auto-unresolved",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: use auto, kvm or tcg"
            )),
        }
    }
}

/// Outcome of one KVM probe.
#[derive(Debug, Clone)]
pub struct KvmProbe {
    pub kvm_usable: bool,
    /// Why KVM was judged (un)usable, for the warning and for logs.
    pub reason: String,
    pub elapsed: Duration,
}

/// Boot `kernel` under KVM with `qemu` and report whether it worked, within
/// `bound` (plus the time to kill QEMU). Uncached; see [`resolve_accel`].
pub fn probe_kvm(qemu: &Path, kernel: &Path, bound: Duration) -> KvmProbe {
    probe_boot(qemu, kernel, Accel::Kvm, bound)
}

/// The probe's boot check under any accelerator. With `Accel::Tcg` it
/// verifies the probe's success path on hosts where KVM does not work;
/// `kvm_usable` then means "the guest booted".
pub fn probe_boot(qemu: &Path, kernel: &Path, accel: Accel, bound: Duration) -> KvmProbe {
    let started = Instant::now();
    let name = accel.qemu_name().to_uppercase();
    let done = |kvm_usable: bool, reason: String| KvmProbe {
        kvm_usable,
        reason,
        elapsed: started.elapsed(),
    };

    if accel == Accel::Kvm {
        if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            return done(false, format!("cannot open /dev/kvm: {e}"));
        }
    }
    let accel_args: &[&str] = match accel {
        Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg => &["-accel", "tcg"],
        Accel::Auto => return done(false, "probe_boot needs kvm or tcg".into()),
    };
    let dir = match tempfile::Builder::new().prefix("kata-kvm-probe-").tempdir() {
        Ok(d) => d,
        Err(e) => return done(false, format!("cannot create a temporary directory: {e}")),
    };
    let console = dir.path().join("console.log");
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35", "-m", "256"])
        .args(accel_args)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        // No initrd and no root=: the kernel panics at the root mount, and
        // panic=-1 reboots at once, which -no-reboot turns into a QEMU exit.
        // ignore_loglevel: the banner is a KERN_NOTICE message, which a kernel
        // built with a low default console loglevel would hide.
        .args(["-append", "console=ttyS0 panic=-1 ignore_loglevel"])
        .arg("-chardev")
        .arg(format!(
            "file,id=probe0,path={}",
            super::qemu::qemu_escape(&console)
        ))
        .args(["-serial", "chardev:probe0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    kill_with_parent(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return done(false, format!("cannot run {}: {e}", qemu.display())),
    };
    let waited = wait_timeout(&mut child, bound);
    let stderr_text = |child: &mut std::process::Child| {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s.lines().last().unwrap_or("").to_string()
    };
    // Another waiter (the containerd-shim crate's SIGCHLD reaper, in the
    // shim) may reap QEMU first: it has exited then, status unknown.
    let waited = match waited {
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(Some(None)),
        other => other.map(|s| s.map(Some)),
    };
    match waited {
        Ok(Some(status)) => {
            let log = tail_file(&console, 10_000);
            match judge_exit(status, &log) {
                Ok(()) => done(true, format!("a guest kernel booted under {name}")),
                Err(how) => {
                    let err = stderr_text(&mut child);
                    done(
                        false,
                        format!("QEMU with {name} {how} before the guest booted: {err}"),
                    )
                }
            }
        }
        Ok(None) => {
            let _ = stop_child(&mut child, None, Duration::ZERO);
            let log = tail_file(&console, 10_000);
            let err = stderr_text(&mut child);
            let stage = if log.contains(KERNEL_BANNER) {
                "booting"
            } else {
                "starting"
            };
            let detail = if err.contains("KVM internal error") || err.contains("emulation failure")
            {
                format!(" ({})", err.trim())
            } else {
                String::new()
            };
            done(
                false,
                format!("guest kernel hung {stage} under {name} for {bound:?}{detail}"),
            )
        }
        Err(e) => {
            let _ = stop_child(&mut child, None, Duration::ZERO);
            done(false, format!("cannot wait for QEMU: {e}"))
        }
    }
}

/// Whether a probe QEMU that exited by itself ran the kernel: the
/// root-mount panic (KERN_EMERG, printed whatever the loglevel) or the
/// banner in its console, and a clean exit when its status is known
/// (`None`: reaped by another waiter). `Err` says how it ended otherwise.
fn judge_exit(status: Option<std::process::ExitStatus>, console: &str) -> Result<(), String> {
    let ran = console.contains(KERNEL_BANNER) || console.contains("Kernel panic");
    match status {
        Some(s) if s.success() && ran => Ok(()),
        Some(s) => Err(format!("exited with {s}")),
        None if ran => Ok(()),
        None => Err(format!("exited ({})", super::REAPED_ELSEWHERE)),
    }
}

static PROBE: OnceLock<KvmProbe> = OnceLock::new();

/// In the state root (`/run/kata-containers`, a tmpfs: a reboot, which may
/// change KVM, forgets it): the verdict of the last KVM probe on this host.
pub const PROBE_CACHE_FILE: &str = "accel-probe.json";

/// A file as the probe saw it: a package upgrade or a rebuilt kernel gives
/// another identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileIdentity {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    fn of(path: &Path) -> Result<FileIdentity, String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(FileIdentity {
            path: path.display().to_string(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// What a probe's verdict depends on: the host kernel (and so its KVM
/// module), QEMU, the guest kernel the probe booted, and `/dev/kvm` itself
/// (absent, or its device number and inode).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeKey {
    pub host_kernel: String,
    pub qemu: FileIdentity,
    pub guest_kernel: FileIdentity,
    pub dev_kvm: Option<(u64, u64)>,
}

impl ProbeKey {
    pub fn of(qemu: &Path, kernel: &Path) -> Result<ProbeKey, String> {
        use std::os::unix::fs::MetadataExt;
        let uts = nix::sys::utsname::uname().map_err(|e| format!("uname: {e}"))?;
        Ok(ProbeKey {
            host_kernel: format!(
                "{} {}",
                uts.release().to_string_lossy(),
                uts.version().to_string_lossy()
            ),
            qemu: FileIdentity::of(qemu)?,
            guest_kernel: FileIdentity::of(kernel)?,
            dev_kvm: std::fs::metadata("/dev/kvm")
                .ok()
                .map(|m| (m.rdev(), m.ino())),
        })
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ProbeRecord {
    key: ProbeKey,
    kvm_usable: bool,
    reason: String,
}

/// The cached verdict for `key` in `file`, if it is for that key; an
/// unreadable or foreign record is no verdict (the probe runs again).
pub fn cached_probe(file: &Path, key: &ProbeKey) -> Option<KvmProbe> {
    let text = std::fs::read(file).ok()?;
    let record: ProbeRecord = serde_json::from_slice(&text).ok()?;
    (record.key == *key).then(|| KvmProbe {
        kvm_usable: record.kvm_usable,
        reason: format!("{} (cached in {})", record.reason, file.display()),
        elapsed: Duration::ZERO,
    })
}

/// Records `probe` for `key` in `file`, atomically (a reader sees the old
/// record or the new one).
pub fn store_probe(file: &Path, key: &ProbeKey, probe: &KvmProbe) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let record = ProbeRecord {
        key: key.clone(),
        kvm_usable: probe.kvm_usable,
        reason: probe.reason.clone(),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, &record)?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// The KVM verdict for this host: from `cache` when it holds one for the
/// same key, else a probe, recorded there. Returns the verdict and whether
/// a probe ran.
pub fn probe_kvm_cached(qemu: &Path, kernel: &Path, cache: Option<&Path>) -> (KvmProbe, bool) {
    let key = cache.and_then(|_| {
        ProbeKey::of(qemu, kernel)
            .map_err(|e| log::warn!("accel: KVM probe verdict not cached: {e}"))
            .ok()
    });
    if let (Some(file), Some(key)) = (cache, &key) {
        if let Some(p) = cached_probe(file, key) {
            log::info!(
                "accel: KVM probe verdict from {}: kvm_usable={}",
                file.display(),
                p.kvm_usable
            );
            return (p, false);
        }
    }
    let probe = probe_kvm(qemu, kernel, KVM_PROBE_TIMEOUT);
    log::info!(
        "accel: KVM probe ran in {:?}: kvm_usable={} ({})",
        probe.elapsed,
        probe.kvm_usable,
        probe.reason
    );
    if let (Some(file), Some(key)) = (cache, &key) {
        if let Err(e) = store_probe(file, key, &probe) {
            log::warn!(
                "accel: cannot record the KVM probe verdict in {}: {e}",
                file.display()
            );
        }
    }
    (probe, true)
}

/// Resolve `requested` to `Kvm` or `Tcg`. `Auto` asks
/// [`probe_kvm_cached`] once per process (with the first kernel asked
/// about; `cache` keeps the verdict for the host, so one probe serves every
/// sandbox until QEMU, the kernel or KVM change, and `kata-runtime check`
/// probes afresh) and prints a warning on stderr when it falls back to TCG.
pub fn resolve_accel(
    requested: Accel,
    qemu: &Path,
    kernel: &Path,
    cache: Option<&Path>,
) -> (Accel, Option<KvmProbe>) {
    match requested {
        Accel::Kvm | Accel::Tcg => (requested, None),
        Accel::Auto => {
            let mut first = false;
            let probe = PROBE.get_or_init(|| {
                first = true;
                probe_kvm_cached(qemu, kernel, cache).0
            });
            if first && !probe.kvm_usable {
                eprintln!(
                    "warning: KVM is not usable ({}); using TCG, which is much slower",
                    probe.reason
                );
            }
            (
                if probe.kvm_usable {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                },
                Some(probe.clone()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stand-ins for QEMU and the kernel: files that cannot run, so a probe
    /// that runs reports "cannot run" (not usable) at once.
    fn fake_host(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let qemu = dir.join("qemu-system-x86_64");
        let kernel = dir.join("vmlinuz");
        std::fs::write(&qemu, b"not a qemu").unwrap();
        std::fs::write(&kernel, b"not a kernel").unwrap();
        (qemu, kernel, dir.join("state").join(PROBE_CACHE_FILE))
    }

    #[test]
    fn a_recorded_verdict_for_the_same_key_is_used_without_probing() {
        let d = tempfile::tempdir().unwrap();
        let (qemu, kernel, cache) = fake_host(d.path());
        let key = ProbeKey::of(&qemu, &kernel).unwrap();
        let recorded = KvmProbe {
            kvm_usable: true,
            reason: "a guest kernel booted under KVM".into(),
            elapsed: Duration::from_millis(900),
        };
        store_probe(&cache, &key, &recorded).unwrap();
        // A probe would fail here (the "QEMU" cannot run): usable means cached.
        let (p, probed) = probe_kvm_cached(&qemu, &kernel, Some(&cache));
        assert!(!probed);
        assert!(p.kvm_usable, "{p:?}");
        assert!(p.reason.contains("cached in"), "{}", p.reason);
    }

    #[test]
    fn a_changed_qemu_a_corrupt_record_or_no_cache_probes_again() {
        let d = tempfile::tempdir().unwrap();
        let (qemu, kernel, cache) = fake_host(d.path());
        let key = ProbeKey::of(&qemu, &kernel).unwrap();
        let usable = KvmProbe {
            kvm_usable: true,
            reason: "booted".into(),
            elapsed: Duration::ZERO,
        };
        store_probe(&cache, &key, &usable).unwrap();
        std::fs::write(&qemu, b"an upgraded qemu, another size").unwrap();
        let (p, probed) = probe_kvm_cached(&qemu, &kernel, Some(&cache));
        assert!(probed && !p.kvm_usable, "{p:?}");
        // The fresh verdict replaced the stale one.
        let (p, probed) = probe_kvm_cached(&qemu, &kernel, Some(&cache));
        assert!(!probed && !p.kvm_usable, "{p:?}");

        std::fs::write(&cache, b"{ torn").unwrap();
        let (_, probed) = probe_kvm_cached(&qemu, &kernel, Some(&cache));
        assert!(probed, "a corrupt record is no verdict");
        let (_, probed) = probe_kvm_cached(&qemu, &kernel, None);
        assert!(probed, "no cache: always a probe");
    }

    #[test]
    fn the_key_changes_with_the_guest_kernel() {
        let d = tempfile::tempdir().unwrap();
        let (qemu, kernel, _) = fake_host(d.path());
        let a = ProbeKey::of(&qemu, &kernel).unwrap();
        let other = d.path().join("other-kernel");
        std::fs::write(&other, b"x").unwrap();
        let b = ProbeKey::of(&qemu, &other).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, ProbeKey::of(&qemu, &kernel).unwrap());
        assert!(ProbeKey::of(&d.path().join("missing"), &kernel).is_err());
    }
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn a_probe_reaped_elsewhere_is_judged_by_its_console() {
        let booted = "[    0.000000] Linux version 6.1\n---[ end Kernel panic - not syncing: VFS";
        let ok = ExitStatus::from_raw(0);
        let failed = ExitStatus::from_raw(1 << 8);
        assert_eq!(judge_exit(Some(ok), booted), Ok(()));
        assert!(judge_exit(Some(failed), booted)
            .unwrap_err()
            .contains("exited with"));
        assert!(judge_exit(Some(ok), "").is_err(), "no kernel output");
        // Status stolen by another waiter (ECHILD): the console decides.
        assert_eq!(judge_exit(None, booted), Ok(()));
        assert!(judge_exit(None, "SeaBIOS")
            .unwrap_err()
            .contains(crate::hypervisor::REAPED_ELSEWHERE));
    }
}
