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

/// Resolve `requested` to `Kvm` or `Tcg`. `Auto` probes once per process
/// (with the first kernel asked about) and prints a warning on stderr when it
/// falls back to TCG.
pub fn resolve_accel(requested: Accel, qemu: &Path, kernel: &Path) -> (Accel, Option<KvmProbe>) {
    match requested {
        Accel::Kvm | Accel::Tcg => (requested, None),
        Accel::Auto => {
            let mut fresh = false;
            let probe = PROBE.get_or_init(|| {
                fresh = true;
                probe_kvm(qemu, kernel, KVM_PROBE_TIMEOUT)
            });
            if fresh && !probe.kvm_usable {
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
