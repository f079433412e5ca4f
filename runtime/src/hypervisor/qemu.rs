//! QEMU: configuration, command line and the process that runs it.
//!
//! The command line is built by two pure functions ([`build_qemu_args`],
//! [`build_kernel_cmdline`]) from a [`QemuConfig`] (what the caller wants) and
//! a [`LaunchPlan`] (what was resolved on this host: accelerator, vsock
//! backend, paths in the state directory), so that it can be unit tested
//! without running anything.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::accel::{resolve_accel, Accel};
use super::error::VmError;
use super::hotplug::{blockdev_add_args, device_add_args, BridgeSlots, PluggedBlock};
use super::identity::ProcessIdentity;
use super::process::{inherit_fds, kill_with_parent, stop_identified_child, tail_file, POLL};
use super::qmp::{QmpClient, QmpError, QmpStatus};
use super::template::{Plug, TemplateUse};
use super::virtiofs::{SharedFs, VirtioFsDaemon};
use super::vsock::{
    find_vsock_daemon, AgentAddress, HybridVsockDaemon, AGENT_VSOCK_PORT, VSOCK_DAEMON_HINT,
};

/// Parent of the per-VM state directories (upstream Kata's location).
pub const DEFAULT_STATE_ROOT: &str = "/run/kata-containers";
/// In the state directory: QEMU's [`ProcessIdentity`] record.
pub const QEMU_IDENTITY_FILE: &str = "qemu.identity";
/// Every process a VM runs, with the state-directory file its
/// [`ProcessIdentity`] is recorded in, in the order they are to be stopped
/// by a process that outlived the `Vm` (the shim's `delete` action).
pub const VM_PROCESSES: [(&str, &str); 3] = [
    ("QEMU", QEMU_IDENTITY_FILE),
    ("vhost-device-vsock", "vhost-device-vsock.identity"),
    ("virtiofsd", "virtiofsd.identity"),
];

/// Lines of console / stderr quoted in errors.
const TAIL_LINES: usize = 25;

/// How long a dead helper daemon's report waits for QEMU's own exit (see
/// `Vm::check_alive`). A guest panic takes QEMU down within milliseconds;
/// one second covers a loaded host.
const DAEMON_DEATH_GRACE: Duration = Duration::from_secs(1);
/// The name under which QEMU gets the template's state file (`getfd`).
const MIGRATION_FD_NAME: &str = "template-state";
/// Template and clone: the guest RAM (a shared file) stays out of the saved
/// state; the clone maps its copy of that file instead.
static IGNORE_SHARED: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(
    || serde_json::json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
);

/// Longest unix socket path (sun_path is 108 bytes with the trailing NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Filesystem of a rootfs image; selects the kernel's root parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFs {
    #[default]
    Ext4,
    Erofs,
}

/// What the guest boots from besides the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMedia {
    /// `-initrd PATH`; the agent runs as (or under) `/init`.
    Initrd(PathBuf),
    /// The rootfs image as a read-only NVDIMM (`/dev/pmem0`), partition 1 as
    /// root. `dax` must match the image: true when it carries the 2 MiB DAX
    /// header (the default of `xtask image`), false for `--no-dax` images.
    Image {
        path: PathBuf,
        fs: ImageFs,
        dax: bool,
        /// Mount the root through dm-verity with these parameters (an image
        /// built with `xtask image --verity`); DAX is then not used, as
        /// dm-verity cannot map pages directly.
        verity: Option<super::verity::VerityParams>,
    },
}

/// Host side of the agent channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VsockBackend {
    /// `Vhost` when `/dev/vhost-vsock` exists, else `HybridVsock`.
    #[default]
    Auto,
    /// `-device vhost-vsock-pci`; host connects with AF_VSOCK.
    Vhost,
    /// `-device vhost-user-vsock-pci` + `vhost-device-vsock`; host connects
    /// to a unix socket with the `CONNECT` handshake.
    HybridVsock,
    /// No agent channel (boot tests).
    None,
}

impl VsockBackend {
    fn resolve(self) -> VsockBackend {
        match self {
            VsockBackend::Auto if Path::new("/dev/vhost-vsock").exists() => VsockBackend::Vhost,
            VsockBackend::Auto => VsockBackend::HybridVsock,
            other => other,
        }
    }
}

/// Debian's qboot (qemu-system-data): a minimal firmware that hands QEMU's
/// ACPI tables and e820 map to the kernel and jumps to it, PVH entry
/// included, without SeaBIOS's probing. It leaves the hotplug bridge's
/// windows closed, so a device hot-plugged behind it gets no BARs: fine for
/// a VM that never hot-plugs, not for a sandbox.
pub const QBOOT_FIRMWARE: &str = "/usr/share/qemu/qboot.rom";

/// Everything a caller chooses about one VM. Build with [`QemuConfig::new`]
/// and adjust the public fields.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Sandbox id: names the state directory (`[A-Za-z0-9._-]`, 1-64 chars).
    pub id: String,
    pub qemu_binary: PathBuf,
    /// Uncompressed `vmlinux` (booted through PVH) or `bzImage`.
    pub kernel: PathBuf,
    pub boot: BootMedia,
    /// QEMU's `-bios`: the firmware that runs before the kernel. `None`:
    /// QEMU's default (SeaBIOS), which opens the hotplug bridge's windows.
    pub firmware: Option<PathBuf>,
    /// Appended to the kernel command line, e.g. `agent.log=debug`.
    pub kernel_params: Vec<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    /// MiB of TCG's translation cache (`-accel tcg,tb-size=`) when `accel`
    /// resolves to TCG; 0: QEMU's default (1 GiB). Ignored under KVM.
    pub tcg_tb_size_mib: u32,
    pub vsock: VsockBackend,
    pub guest_cid: u32,
    /// `vhost-device-vsock` binary; `None` searches `$PATH` and `~/.cargo/bin`.
    pub vsock_daemon: Option<PathBuf>,
    /// A host directory shared with the guest over virtio-fs (virtiofsd +
    /// `vhost-user-fs-pci`); `None`: no shared filesystem.
    pub shared_fs: Option<SharedFs>,
    /// The state directory is `state_root/<id>`; it must not exist yet and is
    /// removed on teardown.
    pub state_root: PathBuf,
    /// Where the serial console goes. `None`: `console.log` in the state
    /// directory (removed on teardown; errors quote its last lines). Give a
    /// path outside it to keep the log.
    pub console_log: Option<PathBuf>,
    /// Adds `quiet` to the kernel command line (the console then shows only
    /// warnings and what the guest's userspace writes).
    pub quiet: bool,
    /// Bound for QEMU (and the vsock daemon) to come up and answer QMP.
    pub startup_timeout: Duration,
    /// Bound between QMP `quit` and SIGKILL on teardown.
    pub shutdown_timeout: Duration,
    /// Bound of each QMP exchange.
    pub qmp_timeout: Duration,
    /// SIGKILL QEMU and the vsock daemon if the thread that started them
    /// dies (PR_SET_PDEATHSIG), so a killed test or xtask leaves nothing
    /// behind. Set it to false when the `Vm` may outlive the thread that
    /// called [`Vm::start`] (thread pools, async runtimes).
    pub kill_on_parent_death: bool,
    /// QEMU's `-sandbox` option (its seccomp filter), e.g.
    /// `on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`
    /// (upstream's `seccompsandbox`). `None`: no filter.
    pub sandbox_option: Option<String>,
    /// virtio-net devices, each backed by an open tap the host prepared
    /// (`crate::network`); QEMU inherits the fds.
    pub net_devices: Vec<NetDevice>,
    /// Boot a template guest, or start from a template instead of booting
    /// (see [`super::template`]). `None`: an ordinary boot.
    pub template: Option<TemplateUse>,
}

/// A guest NIC: `-netdev tap,fd=N` + `-device virtio-net-pci,mac=...`.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// The tap's queue, opened without multiqueue; QEMU gets it as fd N.
    pub tap: Arc<OwnedFd>,
    /// The guest NIC's MAC (the pod veth's, so traffic mirrored from the
    /// veth is addressed to the guest).
    pub mac: String,
}

impl QemuConfig {
    pub fn new(id: impl Into<String>, kernel: impl Into<PathBuf>, boot: BootMedia) -> Self {
        QemuConfig {
            id: id.into(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            kernel: kernel.into(),
            boot,
            firmware: None,
            kernel_params: Vec::new(),
            memory_mib: 512,
            vcpus: 1,
            accel: Accel::Auto,
            tcg_tb_size_mib: 0,
            vsock: VsockBackend::Auto,
            guest_cid: 3,
            vsock_daemon: None,
            shared_fs: None,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            console_log: None,
            quiet: true,
            startup_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(3),
            qmp_timeout: Duration::from_secs(5),
            kill_on_parent_death: true,
            sandbox_option: None,
            net_devices: Vec::new(),
            template: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.id)
    }

    fn validate(&self) -> Result<(), VmError> {
        protocols::ids::check_id("VM id", &self.id).map_err(|m| VmError::config("id", m))?;
        require_file("kernel", &self.kernel)?;
        if let Some(firmware) = &self.firmware {
            require_file("firmware", firmware)?;
        }
        match &self.boot {
            BootMedia::Initrd(p) => require_file("initrd", p)?,
            BootMedia::Image { path, .. } => require_file("image", path)?,
        }
        if self.memory_mib < 64 {
            return Err(VmError::config(
                "memory_mib",
                format!(
                    "{} MiB is too little for a guest; use at least 64",
                    self.memory_mib
                ),
            ));
        }
        if self.vcpus == 0 {
            return Err(VmError::config("vcpus", "must be at least 1"));
        }
        if self.guest_cid < 3 {
            return Err(VmError::config(
                "guest_cid",
                format!("{} is reserved (0-2); use 3 or more", self.guest_cid),
            ));
        }
        Ok(())
    }
}

/// A value for QEMU's `-sandbox`: `on` or `off`, then `key=value` options
/// of QEMU's (obsolete, elevateprivileges, spawn, resourcecontrol), so
/// that a typo fails here, naming the key, rather than as QEMU's exit.
pub fn check_sandbox_option(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let mut parts = value.split(',');
    match parts.next() {
        Some("on") | Some("off") => {}
        first => {
            return Err(format!(
                "{value:?} must start with on or off, not {:?}",
                first.unwrap_or("")
            ))
        }
    }
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("{p:?} in {value:?} is not key=value"))?;
        let ok = match k {
            "obsolete" => v == "allow" || v == "deny",
            "elevateprivileges" => matches!(v, "allow" | "deny" | "children"),
            "spawn" | "resourcecontrol" => v == "allow" || v == "deny",
            _ => return Err(format!("{k:?} in {value:?} is not a -sandbox option (obsolete, elevateprivileges, spawn, resourcecontrol)")),
        };
        if !ok {
            return Err(format!(
                "{k}={v} in {value:?}: {v:?} is not a value QEMU takes for {k}"
            ));
        }
    }
    Ok(())
}

/// What a later process (the shim's `delete` action) needs to stop the
/// process `pid` that this one started, and only that one, should this
/// process die first: its [`ProcessIdentity`] in `state_dir/<file>`.
fn record_identity(
    state_dir: &Path,
    (name, file): (&str, &str),
    pid: u32,
) -> Result<ProcessIdentity, VmError> {
    let identity = ProcessIdentity::of(pid as i32)
        .map_err(|e| VmError::io(format!("cannot read {name}'s start time (pid {pid})"), e))?;
    let path = state_dir.join(file);
    write_new_file(&path, identity.to_record().as_bytes())
        .map_err(|e| VmError::io(format!("cannot write {}", path.display()), e))?;
    Ok(identity)
}

/// Write a file that must not exist yet, readable by its owner only.
fn write_new_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(data)
}

fn require_file(field: &'static str, path: &Path) -> Result<(), VmError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(VmError::config(
            field,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(VmError::config(field, format!("{}: {e}", path.display()))),
    }
}

/// What was resolved for one launch: accelerator, vsock backend and paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// `Kvm` or `Tcg`.
    pub accel: Accel,
    /// `Vhost`, `HybridVsock` or `None`.
    pub vsock: VsockBackend,
    pub state_dir: PathBuf,
    pub console_log: PathBuf,
    pub qmp_socket: PathBuf,
    /// vhost-user socket between QEMU and vhost-device-vsock.
    pub vhost_vsock_socket: PathBuf,
    /// Hybrid vsock socket host programs connect to.
    pub vsock_uds_path: PathBuf,
    pub pidfile: PathBuf,
    pub qemu_stderr: PathBuf,
    pub vsock_daemon_log: PathBuf,
    /// vhost-user socket between QEMU and virtiofsd.
    pub virtiofsd_socket: PathBuf,
    pub virtiofsd_log: PathBuf,
    /// Size in bytes of the NVDIMM image (`BootMedia::Image` only).
    pub image_size: Option<u64>,
    /// A clone's guest RAM: its copy of the template's memory file (set
    /// by [`Vm::start`] to the memfd it fills).
    pub memory_file: PathBuf,
}

impl LaunchPlan {
    /// The standard layout of a state directory.
    pub fn new(
        state_dir: &Path,
        accel: Accel,
        vsock: VsockBackend,
        console_log: Option<&Path>,
        image_size: Option<u64>,
    ) -> Self {
        LaunchPlan {
            accel,
            vsock,
            state_dir: state_dir.to_owned(),
            console_log: console_log
                .map(Path::to_owned)
                .unwrap_or_else(|| state_dir.join("console.log")),
            qmp_socket: state_dir.join("qmp.sock"),
            vhost_vsock_socket: state_dir.join("vhost-vsock.sock"),
            vsock_uds_path: state_dir.join("vsock.sock"),
            pidfile: state_dir.join("qemu.pid"),
            qemu_stderr: state_dir.join("qemu.stderr"),
            vsock_daemon_log: state_dir.join("vhost-device-vsock.log"),
            virtiofsd_socket: state_dir.join("virtiofsd.sock"),
            virtiofsd_log: state_dir.join("virtiofsd.log"),
            image_size,
            memory_file: state_dir.join(super::template::MEMORY_FILE),
        }
    }

    /// Where the agent will be reachable once the guest is up.
    pub fn agent_address(&self, guest_cid: u32) -> Option<AgentAddress> {
        match self.vsock {
            VsockBackend::Vhost => Some(AgentAddress::Vsock {
                cid: guest_cid,
                port: AGENT_VSOCK_PORT,
            }),
            VsockBackend::HybridVsock => Some(AgentAddress::HybridVsock {
                uds_path: self.vsock_uds_path.clone(),
                port: AGENT_VSOCK_PORT,
            }),
            VsockBackend::None | VsockBackend::Auto => None,
        }
    }
}

/// QEMU option values are comma separated: a literal comma is doubled.
pub(crate) fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// Kernel command line: console and power behaviour, root parameters of
/// the boot media, then the caller's parameters (which may override).
pub fn build_kernel_cmdline(cfg: &QemuConfig, accel: Accel) -> String {
    let mut params: Vec<String> = [
        "console=ttyS0",
        // A panic reboots after 1 s, and a reboot makes QEMU exit
        // (-no-reboot): a dead guest ends its VM instead of hanging.
        "panic=1",
        "reboot=k",
        // Skip probes that only cost boot time in a VM.
        "no_timer_check",
        "noreplace-smp",
        "i8042.direct=1",
        "i8042.dumbkbd=1",
        "i8042.nopnp=1",
        "i8042.noaux=1",
        "cryptomgr.notests",
        "net.ifnames=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if cfg.quiet {
        params.push("quiet".into());
    }
    if accel == Accel::Tcg {
        // Without a TSC-deadline timer (TCG has none) the kernel calibrates
        // the local APIC timer against jiffies for HZ/10 ticks: about
        // 150 ms of boot on TCG, measured. Without it the HPET is the
        // clock event device (broadcast to other vCPUs). Under KVM the
        // TSC-deadline timer skips the calibration, and the APIC timer stays.
        params.push("noapictimer".into());
    }
    if let BootMedia::Image {
        fs, dax, verity, ..
    } = &cfg.boot
    {
        let dax = *dax && verity.is_none();
        match verity {
            None => params.push("root=/dev/pmem0p1".into()),
            Some(v) => params.extend(v.kernel_params("/dev/pmem0p1", "/dev/pmem0p2")),
        }
        params.push(
            match (fs, dax) {
                (ImageFs::Ext4, true) => "rootflags=dax,data=ordered,errors=remount-ro ro",
                (ImageFs::Ext4, false) => "rootflags=data=ordered,errors=remount-ro ro",
                (ImageFs::Erofs, true) => "rootflags=dax ro",
                (ImageFs::Erofs, false) => "ro",
            }
            .into(),
        );
        params.push(match fs {
            ImageFs::Ext4 => "rootfstype=ext4".into(),
            ImageFs::Erofs => "rootfstype=erofs".into(),
        });
        // Named, so that an init that cannot run panics the guest (and so
        // ends the VM) instead of the kernel trying /etc/init, /bin/init and
        // /bin/sh: a root whose blocks fail verity would otherwise boot
        // into a shell on the console and hang the sandbox's start.
        params.push("init=/sbin/init".into());
    }
    params.extend(cfg.kernel_params.iter().cloned());
    params.join(" ")
}

/// The full QEMU argument list (without the binary).
pub fn build_qemu_args(cfg: &QemuConfig, plan: &LaunchPlan) -> Result<Vec<String>, VmError> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
    // A template or clone has a file for RAM, and none of the devices a
    // sandbox gets at start: they are hot-plugged into each clone (QEMU
    // cannot migrate vhost-user devices, and the taps are per sandbox).
    let templated = cfg.template.is_some();
    let vhost_user =
        templated || plan.vsock == VsockBackend::HybridVsock || cfg.shared_fs.is_some();
    let nvdimm = match &cfg.boot {
        BootMedia::Image { path, .. } => {
            let size = plan
                .image_size
                .ok_or_else(|| VmError::config("image", "image size unknown"))?;
            if size == 0 || size % (2 << 20) != 0 {
                return Err(VmError::config(
                    "image",
                    format!(
                        "{} is {size} bytes; an NVDIMM image must be a non-empty multiple of 2 MiB",
                        path.display()
                    ),
                ));
            }
            Some((path.clone(), size))
        }
        BootMedia::Initrd(_) => None,
    };

    push(&["-name", &format!("sandbox-{}", cfg.id)]);
    if let Some(opt) = &cfg.sandbox_option {
        check_sandbox_option(opt).map_err(|e| VmError::config("sandbox_option", e))?;
        push(&["-sandbox", opt]);
    }
    let mut machine = String::from("q35");
    if nvdimm.is_some() {
        machine.push_str(",nvdimm=on");
    }
    if vhost_user {
        // vhost-user back-ends map guest RAM: it must be a shareable fd.
        machine.push_str(",memory-backend=mem");
    }
    push(&["-machine", &machine]);
    match plan.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // QEMU's default translation cache is 1 GiB, and an idle guest's
        // boot leaves about 30 MiB of it resident, private to each QEMU.
        Accel::Tcg if cfg.tcg_tb_size_mib > 0 => {
            push(&["-accel", &format!("tcg,tb-size={}", cfg.tcg_tb_size_mib)])
        }
        Accel::Tcg => push(&["-accel", "tcg"]),
        Accel::Auto => {
            return Err(VmError::config(
                "accel",
                "must be resolved to kvm or tcg before building the command line",
            ))
        }
    }
    push(&["-smp", &cfg.vcpus.to_string()]);
    if let Some(firmware) = &cfg.firmware {
        push(&["-bios", &firmware.to_string_lossy()]);
    }
    match &nvdimm {
        Some((_, size)) => {
            // The NVDIMM occupies a hotplug slot above RAM: maxmem must hold both.
            let maxmem = cfg.memory_mib as u64 + size.div_ceil(1 << 20);
            push(&[
                "-m",
                &format!("{}M,slots=2,maxmem={}M", cfg.memory_mib, maxmem),
            ]);
        }
        None => push(&["-m", &format!("{}M", cfg.memory_mib)]),
    }
    match &cfg.template {
        Some(template) => {
            let file = match template {
                TemplateUse::Create(dir) => dir.join(super::template::MEMORY_FILE),
                TemplateUse::Clone(_) => plan.memory_file.clone(),
            };
            push(&[
                "-object",
                &format!(
                    "memory-backend-file,id=mem,size={}M,mem-path={},share=on",
                    cfg.memory_mib,
                    qemu_escape(&file)
                ),
            ]);
        }
        None if vhost_user => push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.memory_mib
            ),
        ]),
        None => {}
    }
    push(&["-kernel", &cfg.kernel.to_string_lossy()]);
    push(&["-append", &build_kernel_cmdline(cfg, plan.accel)]);
    if let BootMedia::Initrd(initrd) = &cfg.boot {
        push(&["-initrd", &initrd.to_string_lossy()]);
    }
    if let Some((path, size)) = &nvdimm {
        // As upstream Kata: the image is mapped read-only and the NVDIMM is
        // "unarmed" so the guest driver treats it as read-only too.
        // Shared in a template, so that the saved state leaves the image
        // out (x-ignore-shared) instead of carrying the pages read.
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=mem0,mem-path={},size={size},readonly=on{}",
                qemu_escape(path),
                if templated { ",share=on" } else { "" }
            ),
        ]);
        push(&["-device", "nvdimm,id=nv0,memdev=mem0,unarmed=on"]);
    }
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
        "-no-reboot",
    ]);
    push(&[
        "-chardev",
        &format!("file,id=console0,path={}", qemu_escape(&plan.console_log)),
    ]);
    push(&["-serial", "chardev:console0"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            qemu_escape(&plan.qmp_socket)
        ),
    ]);
    push(&["-mon", "chardev=qmp0,mode=control"]);
    push(&["-pidfile", &plan.pidfile.to_string_lossy()]);
    // Entropy for the guest from its first instant (the agent's TLS-free
    // ttrpc does not need much, but getrandom() must not block).
    // Before any auto-placed device, so that its fixed slot is free: where
    // block volumes are hot-plugged later.
    push(&["-device", &super::hotplug::bridge_device_arg()]);
    push(&[
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
    ]);
    if templated {
        return Ok(args);
    }
    match plan.vsock {
        VsockBackend::Vhost => push(&[
            "-device",
            &format!("vhost-vsock-pci,id=vsock0,guest-cid={}", cfg.guest_cid),
        ]),
        VsockBackend::HybridVsock => {
            push(&[
                "-chardev",
                &format!(
                    "socket,id=vsock0,path={}",
                    qemu_escape(&plan.vhost_vsock_socket)
                ),
            ]);
            push(&[
                "-device",
                "vhost-user-vsock-pci,id=vsockdev0,chardev=vsock0",
            ]);
        }
        VsockBackend::None => {}
        VsockBackend::Auto => {
            return Err(VmError::config(
                "vsock",
                "must be resolved before building the command line",
            ))
        }
    }
    for (i, nic) in cfg.net_devices.iter().enumerate() {
        push(&[
            "-netdev",
            &format!("tap,id=net{i},fd={}", nic.tap.as_raw_fd()),
        ]);
        // romfile=: no PXE option ROM, the guest boots from -kernel.
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=net{i},mac={},romfile=", nic.mac),
        ]);
    }
    if let Some(shared) = &cfg.shared_fs {
        push(&[
            "-chardev",
            &format!(
                "socket,id=virtiofs0,path={}",
                qemu_escape(&plan.virtiofsd_socket)
            ),
        ]);
        push(&[
            "-device",
            &format!(
                "vhost-user-fs-pci,id=virtiofsdev0,chardev=virtiofs0,tag={}",
                shared.tag
            ),
        ]);
    }
    Ok(args)
}

/// A running QEMU and everything that belongs to it. Dropping it tears all
/// of that down; [`Vm::shutdown`] does the same and reports problems.
pub struct Vm {
    id: String,
    guest_cid: u32,
    plan: LaunchPlan,
    qemu_binary: PathBuf,
    args: Vec<String>,
    qemu: Option<Child>,
    /// QEMU's identity, recorded at spawn: proves it gone should another
    /// waiter reap it.
    qemu_identity: Option<ProcessIdentity>,
    exit_status: Option<ExitStatus>,
    daemon: Option<HybridVsockDaemon>,
    virtiofsd: Option<VirtioFsDaemon>,
    qmp: Option<QmpClient>,
    /// The hotplug bridge's slots in use.
    bridge_slots: BridgeSlots,
    started_at: Instant,
    shutdown_timeout: Duration,
    state_dir_created: bool,
    torn_down: bool,
    /// A template VM's or a clone's state file, until QEMU got it.
    migration_file: Option<File>,
    /// A clone: the template it started from.
    cloned_from: Option<PathBuf>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("plan", &self.plan)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Start a VM: resolve the accelerator and vsock backend, create the
    /// state directory, start vhost-device-vsock (hybrid vsock), start QEMU
    /// and wait until its QMP socket answers. On any error everything
    /// started so far is torn down before returning.
    pub fn start(cfg: QemuConfig) -> Result<Vm, VmError> {
        cfg.validate()?;
        let state_dir = cfg.state_dir();
        let image_size = match &cfg.boot {
            BootMedia::Image { path, .. } => Some(
                std::fs::metadata(path)
                    .map_err(|e| VmError::io(format!("cannot stat image {}", path.display()), e))?
                    .len(),
            ),
            BootMedia::Initrd(_) => None,
        };
        let probe_cache = cfg.state_root.join(super::accel::PROBE_CACHE_FILE);
        let (accel, _probe) =
            resolve_accel(cfg.accel, &cfg.qemu_binary, &cfg.kernel, Some(&probe_cache));
        let vsock = match &cfg.template {
            // The template guest is saved without an agent channel.
            Some(TemplateUse::Create(_)) => {
                if !cfg.net_devices.is_empty() || cfg.shared_fs.is_some() {
                    return Err(VmError::config(
                        "template",
                        "a template VM has no NIC and no shared filesystem: its clones get theirs",
                    ));
                }
                VsockBackend::None
            }
            _ => cfg.vsock.resolve(),
        };
        let mut plan = LaunchPlan::new(
            &state_dir,
            accel,
            vsock,
            cfg.console_log.as_deref(),
            image_size,
        );
        // A clone's RAM: a private copy of the template's memory file, in a
        // memfd (no file to clean up, on a tmpfs whatever /run is) that
        // QEMU inherits and opens by its /proc path.
        let clone_memory = match &cfg.template {
            Some(TemplateUse::Clone(dir)) => {
                super::template::check(dir, &cfg, accel)?;
                let copying = Instant::now();
                let from = dir.join(super::template::MEMORY_FILE);
                let memfd = nix::sys::memfd::memfd_create(
                    super::template::CLONE_MEMFD_NAME,
                    nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
                )
                .map_err(|e| {
                    VmError::io("cannot create a memfd for the clone's memory", e.into())
                })?;
                let memfd = File::from(memfd);
                let bytes = super::template::copy_sparse(&from, &memfd).map_err(|e| {
                    VmError::io(
                        format!("cannot copy the template memory {}", from.display()),
                        e,
                    )
                })?;
                log::info!(
                    "VM {}: {} MiB of template memory copied in {:?}",
                    cfg.id,
                    bytes >> 20,
                    copying.elapsed()
                );
                plan.memory_file = PathBuf::from(format!("/proc/self/fd/{}", memfd.as_raw_fd()));
                Some(memfd)
            }
            _ => None,
        };
        for sock in [
            &plan.qmp_socket,
            &plan.vhost_vsock_socket,
            &plan.vsock_uds_path,
            &plan.virtiofsd_socket,
        ] {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmError::config(
                    "state_root",
                    format!("socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state_root", sock.display()),
                ));
            }
        }
        let daemon_binary = if vsock == VsockBackend::HybridVsock {
            Some(match &cfg.vsock_daemon {
                Some(p) => p.clone(),
                None => find_vsock_daemon().ok_or_else(|| {
                    VmError::config("vsock", format!("vhost-device-vsock not found in $PATH or ~/.cargo/bin; {VSOCK_DAEMON_HINT}"))
                })?,
            })
        } else {
            None
        };
        let mut args = build_qemu_args(&cfg, &plan)?;
        // The saved device state goes through an fd handed to QEMU over QMP
        // (`getfd`): a clone reads it (`migrate-incoming`), a template VM
        // writes it (`migrate`).
        let migration_file = match &cfg.template {
            Some(TemplateUse::Clone(dir)) => {
                let path = dir.join(super::template::STATE_FILE);
                let file = File::open(&path)
                    .map_err(|e| VmError::io(format!("cannot open {}", path.display()), e))?;
                // `defer`: the state is loaded over QMP, once x-ignore-shared
                // is on (QEMU 7.2 has no command-line switch for it).
                args.extend(["-incoming".into(), "defer".into()]);
                Some(file)
            }
            Some(TemplateUse::Create(dir)) => {
                use std::os::unix::fs::OpenOptionsExt;
                // Guest RAM: owner only (QEMU would create it with its umask).
                let memory = dir.join(super::template::MEMORY_FILE);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&memory)
                    .map_err(|e| VmError::io(format!("cannot create {}", memory.display()), e))?;
                let path = dir.join(super::template::STATE_FILE);
                Some(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .map_err(|e| VmError::io(format!("cannot create {}", path.display()), e))?,
                )
            }
            None => None,
        };

        if state_dir.exists() {
            return Err(VmError::config(
                "id",
                format!("state directory {} already exists: another VM with id {:?} runs, or a crash left it behind (remove it)", state_dir.display(), cfg.id),
            ));
        }
        // 0700 whatever the umask: the directory holds the QMP socket (full
        // control of the VM) and the agent's socket.
        crate::state_fs::create_below(&cfg.state_root, Path::new(&cfg.id), 0o700).map_err(|e| {
            VmError::io(
                format!(
                    "cannot create state directory {} (set state_root to a writable directory)",
                    state_dir.display()
                ),
                e,
            )
        })?;

        // From here on, `vm` owns what exists: an early return drops it,
        // and Drop tears down whatever was started.
        let mut vm = Vm {
            id: cfg.id.clone(),
            guest_cid: cfg.guest_cid,
            plan,
            qemu_binary: cfg.qemu_binary.clone(),
            args,
            qemu: None,
            qemu_identity: None,
            exit_status: None,
            daemon: None,
            virtiofsd: None,
            qmp: None,
            bridge_slots: BridgeSlots::default(),
            started_at: Instant::now(),
            shutdown_timeout: cfg.shutdown_timeout,
            state_dir_created: true,
            torn_down: false,
            migration_file: None,
            cloned_from: None,
        };

        if let Some(TemplateUse::Clone(dir)) = &cfg.template {
            vm.cloned_from = Some(dir.clone());
        }

        if let Some(binary) = daemon_binary {
            let daemon = HybridVsockDaemon::start(
                &binary,
                cfg.guest_cid,
                &vm.plan.vhost_vsock_socket,
                &vm.plan.vsock_uds_path,
                &vm.plan.vsock_daemon_log,
                cfg.startup_timeout,
                cfg.kill_on_parent_death,
            )?;
            let pid = daemon.pid();
            vm.daemon = Some(daemon);
            record_identity(&vm.plan.state_dir, VM_PROCESSES[1], pid)?;
        }

        if let Some(shared) = &cfg.shared_fs {
            let daemon = VirtioFsDaemon::start(
                shared,
                &vm.plan.virtiofsd_socket,
                &vm.plan.virtiofsd_log,
                cfg.startup_timeout,
                cfg.kill_on_parent_death,
            )?;
            let pid = daemon.pid();
            vm.virtiofsd = Some(daemon);
            record_identity(&vm.plan.state_dir, VM_PROCESSES[2], pid)?;
        }

        let stderr = File::create(&vm.plan.qemu_stderr).map_err(|e| {
            VmError::io(
                format!("cannot create {}", vm.plan.qemu_stderr.display()),
                e,
            )
        })?;
        let mut cmd = Command::new(&vm.qemu_binary);
        cmd.args(&vm.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if cfg.kill_on_parent_death {
            kill_with_parent(&mut cmd);
        }
        let inherited: Vec<RawFd> = match &clone_memory {
            // A clone gets its NICs hot-plugged after its state is loaded.
            Some(memfd) => vec![memfd.as_raw_fd()],
            None if cfg.template.is_some() => Vec::new(),
            None => cfg.net_devices.iter().map(|n| n.tap.as_raw_fd()).collect(),
        };
        vm.migration_file = migration_file;
        if !inherited.is_empty() {
            inherit_fds(&mut cmd, inherited);
        }
        vm.started_at = Instant::now();
        vm.qemu = Some(cmd.spawn().map_err(|source| VmError::Spawn {
            program: vm.qemu_binary.display().to_string(),
            hint: "; install qemu-system-x86 (Debian) or set qemu_binary".into(),
            source,
        })?);
        let pid = vm.qemu.as_ref().map_or(0, Child::id);
        vm.qemu_identity = Some(record_identity(&vm.plan.state_dir, VM_PROCESSES[0], pid)?);

        let deadline = vm.started_at + cfg.startup_timeout;
        loop {
            vm.check_alive()?;
            if vm.plan.qmp_socket.exists() {
                match QmpClient::connect(&vm.plan.qmp_socket, cfg.qmp_timeout) {
                    Ok(client) => {
                        vm.qmp = Some(client);
                        break;
                    }
                    Err(QmpError::Connect { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if Instant::now() >= deadline {
                return Err(vm.timeout_error("QEMU's QMP socket to answer", cfg.startup_timeout));
            }
            std::thread::sleep(POLL);
        }
        // The sockets are full control of the VM (QMP) and of the guest
        // (the agent API): owner only, whatever the umask the daemons ran
        // with. The 0700 state directory already keeps others out; this
        // keeps it so if the directory's mode is ever loosened.
        for sock in [
            &vm.plan.qmp_socket,
            &vm.plan.vhost_vsock_socket,
            &vm.plan.vsock_uds_path,
            &vm.plan.virtiofsd_socket,
        ] {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(VmError::io(
                        format!("cannot restrict {} to its owner", sock.display()),
                        e,
                    ))
                }
            }
        }
        if vm.cloned_from.is_some() {
            // QEMU exits when the state does not load: report that, with
            // its stderr, rather than the QMP error it causes.
            if let Err(e) = vm.restore_clone(&cfg, deadline) {
                return Err(vm.exited_within(e, DAEMON_DEATH_GRACE));
            }
        }
        let status = vm.query_status()?;
        if !status.running {
            return Err(vm.exited_or(VmError::Qmp(QmpError::Protocol {
                what: "start".into(),
                detail: format!("QEMU is not running the guest: status {:?}", status.status),
            })));
        }
        log::info!(
            "VM {} started (accel {}, vsock {:?}, pid {:?})",
            vm.id,
            vm.plan.accel.qemu_name(),
            vm.plan.vsock,
            vm.pid()
        );
        Ok(vm)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Resolved accelerator, vsock backend and paths.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    pub fn accel(&self) -> Accel {
        self.plan.accel
    }

    pub fn state_dir(&self) -> &Path {
        &self.plan.state_dir
    }

    pub fn console_log(&self) -> &Path {
        &self.plan.console_log
    }

    /// Everything the guest wrote on its serial console so far.
    pub fn console_output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.plan.console_log).unwrap_or_default())
            .into_owned()
    }

    /// The QEMU command line that was run (binary first).
    pub fn command_line(&self) -> Vec<String> {
        std::iter::once(self.qemu_binary.to_string_lossy().into_owned())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// When QEMU was spawned: measure boot-to-agent times from here.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// QEMU's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        match (&self.qemu, self.exit_status) {
            (Some(c), None) => Some(c.id()),
            _ => None,
        }
    }

    /// virtiofsd's pid (with a shared filesystem only).
    pub fn virtiofsd_pid(&self) -> Option<u32> {
        self.virtiofsd.as_ref().map(VirtioFsDaemon::pid)
    }

    /// vhost-device-vsock's pid (hybrid vsock only).
    pub fn vsock_daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(HybridVsockDaemon::pid)
    }

    /// Where the agent is reachable (`None` with `VsockBackend::None`).
    pub fn agent_address(&self) -> Option<AgentAddress> {
        self.plan.agent_address(self.guest_cid)
    }

    /// Ok while QEMU (and the vsock daemon) run; otherwise an error carrying
    /// QEMU's exit status, its stderr and the console tail.
    pub fn check_alive(&mut self) -> Result<(), VmError> {
        if let Some(status) = self.poll_exit()? {
            return Err(self.exited_error(status));
        }
        let vsock = self.daemon.as_mut().map_or(Ok(()), |d| d.check_alive());
        let daemons = vsock.and_then(|()| {
            self.virtiofsd
                .as_mut()
                .map_or(Ok(()), VirtioFsDaemon::check_alive)
        });
        // A daemon usually dies *because* QEMU is exiting (virtiofsd and the
        // vsock daemon quit when their socket closes, e.g. on a guest panic
        // with -no-reboot). The cause the user needs is QEMU's exit and the
        // console tail, so give QEMU a moment to be reaped before blaming the
        // daemon.
        daemons.map_err(|e| self.exited_within(e, DAEMON_DEATH_GRACE))
    }

    /// Wait (at most `timeout`) for QEMU to exit by itself, e.g. after the
    /// guest powered off or rebooted (-no-reboot).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("QEMU to exit by itself (guest power-off)", timeout));
            }
            std::thread::sleep(POLL);
        }
    }

    /// QMP `query-status`.
    pub fn query_status(&mut self) -> Result<QmpStatus, VmError> {
        self.qmp_execute("query-status", None).map(|v| QmpStatus {
            status: v
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string(),
            running: v.get("running").and_then(|s| s.as_bool()).unwrap_or(false),
        })
    }

    /// Run a QMP command on the VM's (single, persistent) QMP connection.
    pub fn qmp_execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmError> {
        let result = match self.qmp.as_mut() {
            Some(q) => q.execute(command, arguments),
            None => Err(QmpError::Closed(command.into())),
        };
        result.map_err(|e| self.exited_or(e.into()))
    }

    /// Hot-plugs the file or block device `path` as virtio-blk into a free
    /// slot of the hotplug bridge, under the QEMU names derived from `name`
    /// (unique in this VM). On error nothing stays plugged.
    pub fn hotplug_block(
        &mut self,
        name: &str,
        path: &Path,
        read_only: bool,
    ) -> Result<PluggedBlock, VmError> {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(path).map_err(|source| VmError::Io {
            context: format!("block device {}", path.display()),
            source,
        })?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            return Err(VmError::config(
                "device",
                format!(
                    "{} is neither a block device nor a regular file (a disk image)",
                    path.display()
                ),
            ));
        }
        let slot = self.bridge_slots.take().ok_or_else(|| {
            VmError::config(
                "device",
                format!(
                    "no free slot on {} for {}: 31 block devices are plugged",
                    super::hotplug::BRIDGE_ID,
                    path.display()
                ),
            )
        })?;
        let block = PluggedBlock::new(name, slot);
        let added = self.qmp_execute(
            "blockdev-add",
            Some(blockdev_add_args(
                &block.node_name,
                path,
                is_block_device,
                read_only,
            )),
        );
        if let Err(e) = added {
            self.bridge_slots.free(slot);
            return Err(e);
        }
        if let Err(e) = self.qmp_execute("device_add", Some(device_add_args(&block))) {
            let _ = self.qmp_execute(
                "blockdev-del",
                Some(serde_json::json!({ "node-name": block.node_name })),
            );
            self.bridge_slots.free(slot);
            return Err(e);
        }
        Ok(block)
    }

    /// A clone's start: load the template's state (with the RAM left out:
    /// it is the clone's copy of the template's memory), run the guest,
    /// then hot-plug what the template could not carry.
    fn restore_clone(&mut self, cfg: &QemuConfig, deadline: Instant) -> Result<(), VmError> {
        let file = self
            .migration_file
            .take()
            .ok_or_else(|| VmError::config("template", "the clone has no state file"))?;
        self.pass_fd(MIGRATION_FD_NAME, &file)?;
        self.qmp_execute("migrate-set-capabilities", Some(IGNORE_SHARED.clone()))?;
        self.qmp_execute(
            "migrate-incoming",
            Some(serde_json::json!({ "uri": format!("fd:{MIGRATION_FD_NAME}") })),
        )?;
        // The state loads in the background ("inmigrate"); the guest stays
        // paused after it, as the template was saved paused.
        let mut status = self.query_status()?;
        while status.status == "inmigrate" {
            if Instant::now() >= deadline {
                return Err(self.timeout_error(
                    "the template's state to load",
                    deadline.saturating_duration_since(self.started_at),
                ));
            }
            std::thread::sleep(POLL);
            self.check_alive()?;
            status = self.query_status()?;
        }
        if status.status == "paused" {
            self.qmp_execute("cont", None)?;
        }
        for plug in super::template::clone_plugs(cfg, &self.plan, &mut self.bridge_slots)? {
            match plug {
                Plug::Execute(command, arguments) => {
                    self.qmp_execute(command, Some(arguments))?;
                }
                Plug::PassFd(name, fd) => self.pass_fd(&name, &fd)?,
            }
        }
        Ok(())
    }

    /// QMP `getfd`: QEMU gets its own copy of `fd`, named `name`.
    fn pass_fd(&mut self, name: &str, fd: &impl AsRawFd) -> Result<(), VmError> {
        let passed = match self.qmp.as_mut() {
            Some(q) => q.pass_fd(name, fd.as_raw_fd()),
            None => Err(QmpError::Closed("getfd".into())),
        };
        passed.map_err(|e| self.exited_or(e.into()))
    }

    /// The template this VM was cloned from, if it was.
    pub fn cloned_from(&self) -> Option<&Path> {
        self.cloned_from.as_deref()
    }

    /// A template VM's last act: pause the guest and save its device state
    /// into the template's state file (QMP `migrate` to the file's fd,
    /// handed over with `getfd`; the RAM, in the shared file, is left out).
    /// Waits at most `within` for the migration to complete.
    pub fn save_state(&mut self, within: Duration) -> Result<(), VmError> {
        let file = self
            .migration_file
            .take()
            .ok_or_else(|| VmError::config("template", "this VM was not started as a template"))?;
        self.qmp_execute("stop", None)?;
        self.pass_fd(MIGRATION_FD_NAME, &file)?;
        self.qmp_execute("migrate-set-capabilities", Some(IGNORE_SHARED.clone()))?;
        self.qmp_execute(
            "migrate",
            Some(serde_json::json!({ "uri": format!("fd:{MIGRATION_FD_NAME}") })),
        )?;
        let deadline = Instant::now() + within;
        loop {
            let info = self.qmp_execute("query-migrate", None)?;
            match info.get("status").and_then(serde_json::Value::as_str) {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = info
                        .get("error-desc")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(VmError::Qmp(QmpError::Protocol {
                        what: "migrate".into(),
                        detail: format!("saving the template's state {s}: {why}"),
                    }));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("the template's state to be saved", within));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Unplugs `block`: `device_del`, then waits up to `within` for the
    /// guest to release it (`DEVICE_DELETED`) before the host side goes.
    pub fn unplug_block(&mut self, block: &PluggedBlock, within: Duration) -> Result<(), VmError> {
        self.qmp_execute(
            "device_del",
            Some(serde_json::json!({ "id": block.device_id })),
        )?;
        let id = block.device_id.clone();
        let waited = match self.qmp.as_mut() {
            Some(q) => q.wait_event(
                "DEVICE_DELETED",
                |d| d.get("device").and_then(|v| v.as_str()) == Some(id.as_str()),
                within,
            ),
            None => Err(QmpError::Closed("device_del".into())),
        };
        waited.map_err(|e| self.exited_or(e.into()))?;
        self.qmp_execute(
            "blockdev-del",
            Some(serde_json::json!({ "node-name": block.node_name })),
        )?;
        self.bridge_slots.free(block.slot);
        Ok(())
    }

    /// Grows `block` to `size` bytes (`block_resize`): a regular file is
    /// extended; a host block device must have grown already.
    pub fn resize_block(&mut self, block: &PluggedBlock, size: u64) -> Result<(), VmError> {
        self.qmp_execute(
            "block_resize",
            Some(serde_json::json!({ "node-name": block.node_name, "size": size })),
        )
        .map(drop)
    }

    /// Stop everything (QMP quit, SIGKILL after `shutdown_timeout`, stop the
    /// vsock daemon, remove sockets and the state directory) and report
    /// anything that could not be cleaned up.
    pub fn shutdown(mut self) -> Result<(), VmError> {
        self.teardown()
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>, VmError> {
        if self.exit_status.is_some() {
            return Ok(self.exit_status);
        }
        let Some(child) = self.qemu.as_mut() else {
            return Ok(None);
        };
        match child.try_wait() {
            Ok(status) => {
                self.exit_status = status;
                Ok(status)
            }
            // Reaped by another waiter of the process (a shim's reaper):
            // it is gone, its status with it.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                let (console_log, console_tail, stderr_tail) = self.console_diagnostics();
                Err(VmError::QemuExited {
                    status: super::REAPED_ELSEWHERE.into(),
                    console_log,
                    console_tail,
                    stderr_tail,
                })
            }
            Err(e) => Err(VmError::io("cannot poll QEMU", e)),
        }
    }

    /// `fallback`, unless QEMU has died: then the (more useful) exit error.
    fn exited_or(&mut self, fallback: VmError) -> VmError {
        // Give a dying QEMU a moment to be reaped, so that a QMP error caused
        // by a kill is reported as the kill.
        self.exited_within(fallback, Duration::from_millis(200))
    }

    /// QEMU's exit if it comes within `grace`, else `fallback`. Polled,
    /// not waited for: in a shim, the child reaper may reap QEMU first,
    /// and [`Vm::poll_exit`] reports that too (with the console tail).
    fn exited_within(&mut self, fallback: VmError, grace: Duration) -> VmError {
        let deadline = Instant::now() + grace;
        loop {
            match self.poll_exit() {
                Ok(Some(status)) => return self.exited_error(status),
                Err(e @ VmError::QemuExited { .. }) => return e,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) | Err(_) => return fallback,
            }
        }
    }

    fn console_diagnostics(&self) -> (Option<PathBuf>, String, String) {
        (
            Some(self.plan.console_log.clone()),
            tail_file(&self.plan.console_log, TAIL_LINES),
            tail_file(&self.plan.qemu_stderr, TAIL_LINES),
        )
    }

    fn exited_error(&self, status: ExitStatus) -> VmError {
        let (console_log, console_tail, stderr_tail) = self.console_diagnostics();
        VmError::QemuExited {
            status: status.to_string(),
            console_log,
            console_tail,
            stderr_tail,
        }
    }

    /// A timeout error about `what`, with the console and stderr tails.
    pub fn timeout_error(&self, what: &str, after: Duration) -> VmError {
        let (console_log, console_tail, stderr_tail) = self.console_diagnostics();
        VmError::Timeout {
            what: what.into(),
            after,
            console_log,
            console_tail,
            stderr_tail,
        }
    }

    fn teardown(&mut self) -> Result<(), VmError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        if let Some(child) = self.qemu.as_mut() {
            if self.exit_status.is_none() {
                // Graceful first: QMP quit lets QEMU flush and unlink its
                // pidfile; SIGKILL after the bound whatever happens.
                if let (Ok(None), Some(q)) = (child.try_wait(), self.qmp.as_mut()) {
                    if let Err(e) = q.quit() {
                        log::warn!(
                            "VM {}: QMP quit failed ({}); killing QEMU",
                            self.id,
                            crate::error_chain(&e)
                        );
                    }
                }
                match stop_identified_child(child, self.qemu_identity, None, self.shutdown_timeout)
                {
                    Ok(Some(status)) => self.exit_status = Some(status),
                    // Reaped by another waiter, and /proc shows it gone.
                    Ok(None) => log::debug!(
                        "VM {}: QEMU (pid {}) is gone, {}",
                        self.id,
                        child.id(),
                        super::REAPED_ELSEWHERE
                    ),
                    Err(e) => problems.push(format!("cannot stop QEMU (pid {}): {e}", child.id())),
                }
            }
        }
        self.finish_teardown(problems)
    }

    fn finish_teardown(&mut self, mut problems: Vec<String>) -> Result<(), VmError> {
        self.qmp = None;
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        if let Some(mut d) = self.virtiofsd.take() {
            d.stop();
        }
        if self.state_dir_created {
            // Only what this VM created: no symlink is followed and no
            // mount entered (state_fs).
            let removed = match (
                self.plan.state_dir.parent(),
                self.plan.state_dir.file_name(),
            ) {
                (Some(root), Some(name)) => {
                    crate::state_fs::remove_below(root, Path::new(name)).map(drop)
                }
                _ => Err(std::io::Error::other("not below a state root")),
            };
            if let Err(e) = removed {
                problems.push(format!(
                    "cannot remove {}: {e}",
                    self.plan.state_dir.display()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(VmError::Teardown(problems.join("; ")))
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::warn!("VM {}: {e}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(boot: BootMedia) -> QemuConfig {
        let mut cfg = QemuConfig::new("sb1", "/k/vmlinux", boot);
        cfg.kernel_params = vec!["agent.log=debug".into()];
        cfg
    }

    fn plan(vsock: VsockBackend, image_size: Option<u64>) -> LaunchPlan {
        LaunchPlan::new(
            Path::new("/run/kata-containers/sb1"),
            Accel::Tcg,
            vsock,
            None,
            image_size,
        )
    }

    /// The value following `flag`, for each occurrence.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn firmware_is_qemus_default_unless_set() {
        let mut cfg = config(BootMedia::Initrd("/i/initrd.img".into()));
        let args = build_qemu_args(&cfg, &plan(VsockBackend::None, None)).unwrap();
        assert!(values(&args, "-bios").is_empty());
        cfg.firmware = Some(QBOOT_FIRMWARE.into());
        let args = build_qemu_args(&cfg, &plan(VsockBackend::None, None)).unwrap();
        assert_eq!(values(&args, "-bios"), [QBOOT_FIRMWARE]);
        // A firmware that is not there is named before QEMU runs.
        let dir = tempfile::tempdir().unwrap();
        for f in ["vmlinux", "initrd.img"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        cfg.kernel = dir.path().join("vmlinux");
        cfg.boot = BootMedia::Initrd(dir.path().join("initrd.img"));
        cfg.validate().unwrap();
        cfg.firmware = Some("/nonexistent/qboot.rom".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("firmware") && err.contains("/nonexistent/qboot.rom"),
            "{err}"
        );
    }

    #[test]
    fn tcg_translation_cache_size_applies_to_tcg_only() {
        let mut cfg = config(BootMedia::Initrd("/i/initrd.img".into()));
        cfg.tcg_tb_size_mib = 16;
        let args = build_qemu_args(&cfg, &plan(VsockBackend::None, None)).unwrap();
        assert_eq!(values(&args, "-accel"), ["tcg,tb-size=16"]);
        let mut kvm = plan(VsockBackend::None, None);
        kvm.accel = Accel::Kvm;
        let args = build_qemu_args(&cfg, &kvm).unwrap();
        assert_eq!(values(&args, "-accel"), ["kvm"]);
    }

    #[test]
    fn initrd_command_line() {
        let cfg = config(BootMedia::Initrd("/i/initrd.img".into()));
        let args = build_qemu_args(&cfg, &plan(VsockBackend::None, None)).unwrap();
        assert_eq!(values(&args, "-machine"), ["q35"]);
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert_eq!(values(&args, "-m"), ["512M"]);
        assert_eq!(values(&args, "-kernel"), ["/k/vmlinux"]);
        assert_eq!(values(&args, "-initrd"), ["/i/initrd.img"]);
        assert!(
            !args
                .iter()
                .any(|a| a.contains("nvdimm") || a.contains("vsock") || a.contains("memfd")),
            "{args:?}"
        );
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert_eq!(values(&args, "-display"), ["none"]);
        assert_eq!(
            values(&args, "-chardev"),
            [
                "file,id=console0,path=/run/kata-containers/sb1/console.log",
                "socket,id=qmp0,path=/run/kata-containers/sb1/qmp.sock,server=on,wait=off"
            ]
        );
        assert_eq!(values(&args, "-serial"), ["chardev:console0"]);
        assert_eq!(values(&args, "-mon"), ["chardev=qmp0,mode=control"]);
        assert_eq!(
            values(&args, "-pidfile"),
            ["/run/kata-containers/sb1/qemu.pid"]
        );
        let append = values(&args, "-append")[0];
        assert!(
            append.starts_with("console=ttyS0 panic=1 reboot=k "),
            "{append}"
        );
        // (the plan here is TCG's)
        assert!(
            append.ends_with(" quiet noapictimer agent.log=debug"),
            "{append}"
        );
        assert!(!append.contains("root="), "{append}");
    }

    #[test]
    fn nvdimm_command_line() {
        let image = BootMedia::Image {
            path: "/i/kata,containers.img".into(),
            fs: ImageFs::Ext4,
            dax: true,
            verity: None,
        };
        let cfg = config(image);
        let size = 128u64 << 20;
        let args = build_qemu_args(&cfg, &plan(VsockBackend::None, Some(size))).unwrap();
        assert_eq!(values(&args, "-machine"), ["q35,nvdimm=on"]);
        assert_eq!(values(&args, "-m"), ["512M,slots=2,maxmem=640M"]);
        assert!(values(&args, "-initrd").is_empty());
        // The comma in the file name is escaped as QEMU requires.
        assert_eq!(
            values(&args, "-object")[0],
            format!("memory-backend-file,id=mem0,mem-path=/i/kata,,containers.img,size={size},readonly=on")
        );
        assert_eq!(
            values(&args, "-device")[0],
            "nvdimm,id=nv0,memdev=mem0,unarmed=on"
        );
        let append = values(&args, "-append")[0];
        assert!(
            append.contains(" root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4 init=/sbin/init agent.log=debug"),
            "{append}"
        );
    }

    #[test]
    fn root_parameters_follow_fs_and_dax() {
        let cmdline = |fs, dax| {
            build_kernel_cmdline(
                &config(BootMedia::Image {
                    path: "/i".into(),
                    fs,
                    dax,
                    verity: None,
                }),
                Accel::Kvm,
            )
        };
        assert!(cmdline(ImageFs::Ext4, false).contains(
            "root=/dev/pmem0p1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
        ));
        assert!(cmdline(ImageFs::Erofs, true)
            .contains("root=/dev/pmem0p1 rootflags=dax ro rootfstype=erofs"));
        let mut cfg = config(BootMedia::Initrd("/i".into()));
        cfg.quiet = false;
        assert!(!build_kernel_cmdline(&cfg, Accel::Kvm).contains("quiet"));
        // The APIC timer's calibration is skipped on TCG only.
        assert!(!build_kernel_cmdline(&cfg, Accel::Kvm).contains("noapictimer"));
        assert!(build_kernel_cmdline(&cfg, Accel::Tcg)
            .split(' ')
            .any(|p| p == "noapictimer"));
        // verity: the root is dm-0 over both partitions, never DAX
        let verity = "root_hash=69f1faf047532e95037e25fda9c284f4114c830e1c43421e6227d3604b41f6f9,salt=ab,data_blocks=8,data_block_size=4096,hash_block_size=4096";
        let line = build_kernel_cmdline(
            &config(BootMedia::Image {
                path: "/i".into(),
                fs: ImageFs::Ext4,
                dax: true,
                verity: Some(verity.parse().unwrap()),
            }),
            Accel::Kvm,
        );
        assert!(
            line.contains(" verity 1 /dev/pmem0p1 /dev/pmem0p2 4096 4096 8 0 sha256 "),
            "{line}"
        );
        assert!(
            line.contains(
                "root=/dev/dm-0 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
            ),
            "{line}"
        );
        assert!(
            !line.contains("pmem0p1 rootflags") && !line.contains("dax"),
            "{line}"
        );
    }

    #[test]
    fn each_net_device_is_a_tap_fd_and_a_virtio_net_nic() {
        let mut cfg = config(BootMedia::Initrd("/t/initrd".into()));
        let tap = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let fd = tap.as_raw_fd();
        cfg.net_devices.push(NetDevice {
            tap,
            mac: "02:00:0a:d5:01:02".into(),
        });
        let args = build_qemu_args(&cfg, &plan(VsockBackend::Vhost, None)).unwrap();
        assert_eq!(values(&args, "-netdev"), [format!("tap,id=net0,fd={fd}")]);
        assert!(values(&args, "-device")
            .contains(&"virtio-net-pci,netdev=net0,mac=02:00:0a:d5:01:02,romfile="));
        cfg.net_devices.clear();
        let args = build_qemu_args(&cfg, &plan(VsockBackend::Vhost, None)).unwrap();
        assert!(values(&args, "-netdev").is_empty());
    }

    #[test]
    fn hybrid_vsock_adds_vhost_user_device_and_shared_memory() {
        let cfg = config(BootMedia::Initrd("/i/initrd.img".into()));
        let args = build_qemu_args(&cfg, &plan(VsockBackend::HybridVsock, None)).unwrap();
        assert_eq!(values(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert!(
            values(&args, "-object").contains(&"memory-backend-memfd,id=mem,size=512M,share=on"),
            "{args:?}"
        );
        assert!(values(&args, "-chardev")
            .contains(&"socket,id=vsock0,path=/run/kata-containers/sb1/vhost-vsock.sock"));
        assert!(
            values(&args, "-device").contains(&"vhost-user-vsock-pci,id=vsockdev0,chardev=vsock0")
        );

        // Both: nvdimm and vhost-user memory.
        let image = BootMedia::Image {
            path: "/i/img".into(),
            fs: ImageFs::Ext4,
            dax: true,
            verity: None,
        };
        let args = build_qemu_args(
            &config(image),
            &plan(VsockBackend::HybridVsock, Some(256 << 20)),
        )
        .unwrap();
        assert_eq!(
            values(&args, "-machine"),
            ["q35,nvdimm=on,memory-backend=mem"]
        );
        assert_eq!(values(&args, "-m"), ["512M,slots=2,maxmem=768M"]);
    }

    #[test]
    fn templates_and_clones_run_from_a_memory_file_without_pluggable_devices() {
        let image = BootMedia::Image {
            path: "/i/img".into(),
            fs: ImageFs::Erofs,
            dax: true,
            verity: None,
        };
        let mut cfg = config(image);
        cfg.shared_fs = Some(SharedFs {
            daemon: "/usr/lib/qemu/virtiofsd".into(),
            source: "/shared".into(),
            tag: "kataShared".into(),
            cache: Default::default(),
            extra_args: Vec::new(),
        });
        cfg.template = Some(TemplateUse::Create("/run/vc/vm/template".into()));
        let plan = plan(VsockBackend::HybridVsock, Some(256 << 20));
        let args = build_qemu_args(&cfg, &plan).unwrap();
        assert_eq!(
            values(&args, "-machine"),
            ["q35,nvdimm=on,memory-backend=mem"]
        );
        let objects = values(&args, "-object");
        assert!(
            objects.contains(&"memory-backend-file,id=mem,size=512M,mem-path=/run/vc/vm/template/memory,share=on"),
            "{objects:?}"
        );
        // The image is shared too, so the saved state leaves it out.
        assert!(
            objects.contains(
                &"memory-backend-file,id=mem0,mem-path=/i/img,size=268435456,readonly=on,share=on"
            ),
            "{objects:?}"
        );
        // Nothing a clone gets hot-plugged: no vsock, no virtio-fs.
        let devices = values(&args, "-device");
        assert!(
            !devices
                .iter()
                .any(|d| d.contains("vsock") || d.contains("vhost-user-fs")),
            "{devices:?}"
        );
        assert!(values(&args, "-chardev")
            .iter()
            .all(|c| !c.contains("vsock") && !c.contains("virtiofs")));
        assert!(
            !args.contains(&"-incoming".to_string()),
            "Vm::start adds it, with the fd"
        );

        // A clone: the same machine, its RAM the copy in its state dir.
        cfg.template = Some(TemplateUse::Clone("/run/vc/vm/template".into()));
        let clone = build_qemu_args(&cfg, &plan).unwrap();
        assert!(values(&clone, "-object").contains(
            &"memory-backend-file,id=mem,size=512M,mem-path=/run/kata-containers/sb1/memory,share=on"
        ));
        assert_eq!(
            args.iter()
                .filter(|a| !a.contains("memory"))
                .collect::<Vec<_>>(),
            clone
                .iter()
                .filter(|a| !a.contains("memory"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn shared_fs_adds_vhost_user_fs_and_shared_memory() {
        let mut cfg = config(BootMedia::Initrd("/i/initrd.img".into()));
        cfg.shared_fs = Some(SharedFs::new("/run/kata-containers/shared/sb1"));
        // Even with kernel vhost-vsock, virtiofsd needs shareable guest RAM.
        let args = build_qemu_args(&cfg, &plan(VsockBackend::Vhost, None)).unwrap();
        assert_eq!(values(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert!(
            values(&args, "-object").contains(&"memory-backend-memfd,id=mem,size=512M,share=on"),
            "{args:?}"
        );
        assert!(values(&args, "-chardev")
            .contains(&"socket,id=virtiofs0,path=/run/kata-containers/sb1/virtiofsd.sock"));
        assert!(values(&args, "-device")
            .contains(&"vhost-user-fs-pci,id=virtiofsdev0,chardev=virtiofs0,tag=kataShared"));
    }

    #[test]
    fn vhost_vsock_and_kvm() {
        let cfg = config(BootMedia::Initrd("/i/initrd.img".into()));
        let mut p = plan(VsockBackend::Vhost, None);
        p.accel = Accel::Kvm;
        let args = build_qemu_args(&cfg, &p).unwrap();
        assert_eq!(values(&args, "-accel"), ["kvm"]);
        assert_eq!(values(&args, "-cpu"), ["host"]);
        assert!(values(&args, "-device").contains(&"vhost-vsock-pci,id=vsock0,guest-cid=3"));
        assert_eq!(
            values(&args, "-machine"),
            ["q35"],
            "vhost-vsock (kernel) needs no shared memory backend"
        );
        assert_eq!(
            p.agent_address(3),
            Some(AgentAddress::Vsock { cid: 3, port: 1024 })
        );
    }

    #[test]
    fn unresolved_choices_and_bad_images_are_rejected() {
        let cfg = config(BootMedia::Initrd("/i".into()));
        let mut p = plan(VsockBackend::None, None);
        p.accel = Accel::Auto;
        assert!(matches!(
            build_qemu_args(&cfg, &p),
            Err(VmError::Config { field: "accel", .. })
        ));
        let image = config(BootMedia::Image {
            path: "/i/img".into(),
            fs: ImageFs::Ext4,
            dax: true,
            verity: None,
        });
        let err = build_qemu_args(&image, &plan(VsockBackend::None, Some(1000))).unwrap_err();
        assert!(err.to_string().contains("multiple of 2 MiB"), "{err}");
    }

    #[test]
    fn config_validation_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let mut cfg = QemuConfig::new("bad/id", &kernel, BootMedia::Initrd(kernel.clone()));
        assert!(matches!(
            cfg.validate(),
            Err(VmError::Config { field: "id", .. })
        ));
        cfg.id = "ok".into();
        cfg.boot = BootMedia::Initrd(dir.path().join("missing.img"));
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(
                err,
                VmError::Config {
                    field: "initrd",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("missing.img"), "{err}");
        cfg.boot = BootMedia::Initrd(kernel.clone());
        cfg.validate().unwrap();
        // A failed start leaves no state directory behind.
        cfg.state_root = dir.path().join("state");
        cfg.qemu_binary = dir.path().join("no-such-qemu");
        cfg.accel = Accel::Tcg;
        cfg.vsock = VsockBackend::None;
        let err = Vm::start(cfg).unwrap_err();
        assert!(matches!(err, VmError::Spawn { .. }), "{err}");
        assert!(!dir.path().join("state/ok").exists());
    }
}
