//! The KVM probe: bounded in time, cached, and in agreement with a direct,
//! longer boot attempt under KVM on this host (whatever the host is).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runtime::hypervisor::{
    probe_boot, probe_kvm, probe_kvm_cached, resolve_accel, Accel, KVM_PROBE_TIMEOUT,
    PROBE_CACHE_FILE,
};

/// Boot the kernel under KVM for twice the probe's bound, independently of
/// the library: does the kernel reach its root-mount panic (QEMU exits by
/// itself with -no-reboot) and print its banner?
fn direct_kvm_boot(kernel: &std::path::Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-append", "console=ttyS0 panic=-1"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + KVM_PROBE_TIMEOUT * 2;
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    exited.is_some_and(|s| s.success()) && console.contains("Linux version")
}

#[test]
#[ignore = "needs QEMU, busybox-static, cpio and a guest kernel: run by cargo xtask test unit"]
fn kvm_probe_is_bounded_cached_and_consistent() {
    let kernel = common::test_kernel();
    let qemu = std::path::Path::new("qemu-system-x86_64");

    let t = Instant::now();
    let probe = probe_kvm(qemu, &kernel, KVM_PROBE_TIMEOUT);
    let took = t.elapsed();
    eprintln!("probe: {probe:?} in {took:?}");
    assert!(
        took <= KVM_PROBE_TIMEOUT + Duration::from_secs(1),
        "probe took {took:?}"
    );
    assert!(!probe.reason.is_empty());

    let direct = direct_kvm_boot(&kernel);
    assert_eq!(
        probe.kvm_usable, direct,
        "probe ({}) disagrees with a direct KVM boot",
        probe.reason
    );

    let (accel, p1) = resolve_accel(Accel::Auto, qemu, &kernel, None);
    assert_eq!(accel, if direct { Accel::Kvm } else { Accel::Tcg });
    assert_eq!(p1.unwrap().kvm_usable, direct);
    // Second resolution: cached, no new boot.
    let t = Instant::now();
    let (again, _) = resolve_accel(Accel::Auto, qemu, &kernel, None);
    assert_eq!(again, accel);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "not cached: {:?}",
        t.elapsed()
    );
    // Explicit choices are not probed.
    let (explicit, probed) = resolve_accel(Accel::Tcg, qemu, &kernel, None);
    assert!(explicit == Accel::Tcg && probed.is_none());

    // Across processes: the verdict is kept for the host, keyed by what it
    // depends on, so the next sandbox does not boot a probe VM again.
    let qemu_abs = which_qemu();
    let state = tempfile::tempdir().unwrap();
    let cache = state.path().join(PROBE_CACHE_FILE);
    let (first, probed) = probe_kvm_cached(&qemu_abs, &kernel, Some(&cache));
    assert!(probed && cache.is_file());
    assert_eq!(first.kvm_usable, direct, "{first:?}");
    let t = Instant::now();
    let (second, probed) = probe_kvm_cached(&qemu_abs, &kernel, Some(&cache));
    assert!(!probed, "the second start probed again: {second:?}");
    assert_eq!(second.kvm_usable, direct);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}

fn which_qemu() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|p| p.is_file())
        })
        .expect("qemu-system-x86_64 on PATH")
}

#[test]
#[ignore = "needs QEMU, busybox-static, cpio and a guest kernel: run by cargo xtask test unit"]
fn probe_success_path_boots_under_tcg() {
    // On hosts where KVM does not work the KVM probe only ever fails; the same
    // check under TCG must recognise a kernel that boots to its root panic.
    let kernel = common::test_kernel();
    let qemu = std::path::Path::new("qemu-system-x86_64");
    let probe = probe_boot(qemu, &kernel, Accel::Tcg, Duration::from_secs(60));
    assert!(probe.kvm_usable, "{probe:?}");
    assert!(probe.reason.contains("booted under TCG"), "{probe:?}");
    // A file that is not a kernel never "boots".
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    let probe = probe_boot(qemu, &junk, Accel::Tcg, Duration::from_secs(10));
    assert!(!probe.kvm_usable, "{probe:?}");
}
