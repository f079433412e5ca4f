//! Does a kernel reach userspace? Boots it under QEMU with a tiny initrd made
//! by the project's own cpio writer, whose `/init` prints a marker and powers
//! off, and reads the serial console. Used by `test kernel` (our kernel must
//! boot to init) and `bench kernel` (time to init, ours against Debian's).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use runtime::hypervisor::{Accel, BootMedia, QemuConfig, Vm, VsockBackend};

use xtask::context::Ctx;

pub const INIT_MARKER: &str = "KATA-XTASK-INIT-REACHED";
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The probe initrd: busybox, `/init` that prints the marker and the kernel
/// version, then powers off.
pub fn probe_initrd(ctx: &Ctx, dest: &Path) -> Result<()> {
    let busybox = ctx.debian_member("busybox", &ctx.versions.busybox.debian)?;
    let work = tempfile::tempdir()?;
    let root = work.path();
    for d in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir(root.join(d))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    symlink("busybox", root.join("bin/sh"))?;
    let init = format!(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox echo {INIT_MARKER}\n/bin/busybox cat /proc/version\n/bin/busybox poweroff -f\n"
    );
    std::fs::write(root.join("init"), init)?;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    nix::sys::stat::mknod(
        &root.join("dev/console"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(5, 1),
    )
    .context("mknod /dev/console (needs root)")?;
    rootfs_builder::write_initrd(root, dest, rootfs_builder::Compression::Gzip, ctx.epoch)?;
    Ok(())
}

pub struct BootToInit {
    /// QEMU start to the marker on the console.
    pub to_init: Duration,
    pub accel: Accel,
    pub proc_version: String,
}

/// Boots `kernel` with `initrd` and waits for the marker and for QEMU to
/// exit by itself (the probe powers off).
pub fn boot_to_init(
    ctx: &Ctx,
    kernel: &Path,
    initrd: &Path,
    name: &str,
    accel: Accel,
) -> Result<BootToInit> {
    let mut cfg = QemuConfig::new(
        format!("xtask-{name}-{}", std::process::id()),
        kernel,
        BootMedia::Initrd(initrd.to_path_buf()),
    );
    cfg.vsock = VsockBackend::None;
    cfg.accel = accel;
    cfg.quiet = false;
    let log = ctx.logs().join(format!("{name}-console.log"));
    cfg.console_log = Some(log.clone());
    let mut vm = Vm::start(cfg)?;
    let started = vm.started_at();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let to_init = loop {
        if vm.console_output().contains(INIT_MARKER) {
            break started.elapsed();
        }
        if let Err(e) = vm.check_alive() {
            bail!("{name}: QEMU ended before init ran: {e}");
        }
        if Instant::now() > deadline {
            return Err(vm
                .timeout_error("the kernel to run /init", BOOT_TIMEOUT)
                .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = vm
        .wait_exit(Duration::from_secs(30))
        .context("the probe init powers off")?;
    let console = vm.console_output();
    let accel_used = vm.accel();
    vm.shutdown()?;
    if !status.success() {
        bail!("{name}: QEMU exited with {status} after power-off");
    }
    let proc_version = console
        .lines()
        .find(|l| l.contains("Linux version"))
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(BootToInit {
        to_init,
        accel: accel_used,
        proc_version,
    })
}

/// `test kernel`: the pipeline's kernel reaches init in a project-made initrd.
pub fn test(ctx: &Ctx) -> Result<()> {
    let kernel = xtask::kernel::build(ctx, &xtask::kernel::KernelArgs::default())?;
    let work = tempfile::tempdir()?;
    let initrd = work.path().join("probe.initrd");
    probe_initrd(ctx, &initrd)?;
    let r = boot_to_init(ctx, &kernel.bzimage(), &initrd, "kernel-test", Accel::Auto)?;
    let want = format!("Linux version {}", kernel.release);
    if !r.proc_version.contains(&want) {
        bail!("console shows `{}`, want `{want}`", r.proc_version);
    }
    ctx.ui.info(&format!(
        "test kernel: PASS: {} reached init {} ms after QEMU start ({:?})",
        kernel.release,
        r.to_init.as_millis(),
        r.accel
    ));
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "kernel": kernel.release, "to_init_ms": r.to_init.as_millis() as u64, "accel": r.accel,
        }))?;
    }
    Ok(())
}
