//! `cargo xtask test vm [--initrd|--image] [--faults] [--json]`: boots the
//! built kernel with the built initrd or DAX image in QEMU and drives the
//! agent over vsock through the runtime's own hypervisor module and client,
//! the same code the shim uses.
//!
//! The fault scenarios prove the failure paths with real parts: QEMU killed
//! under a live agent connection, and an agent that never answers (it is
//! told to listen on another vsock port). Each must end in a clear error
//! within a bound and leave no process, socket or state dir behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use protocols::agent::{CreateSandboxRequest, GuestDetailsRequest};
use runtime::agent_client::AgentClient;
use runtime::hypervisor::{Accel, BootMedia, ImageFs, QemuConfig, Vm};
use serde::Serialize;

use xtask::context::Ctx;
use xtask::{image, initrd, kernel};

use crate::boot_phases::{BootPhases, ConsoleWatch};

/// Generous for TCG on a loaded 2-core CI machine; a KVM boot takes ~1 s.
pub(crate) const SERVING_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
/// How long "an agent that never answers" is waited for.
const SILENT_AGENT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Args, Clone, Default)]
pub struct VmArgs {
    /// Boot the initrd (the default).
    #[arg(long, conflicts_with = "image")]
    pub initrd: bool,
    /// Boot the DAX rootfs image as an NVDIMM.
    #[arg(long)]
    pub image: bool,
    /// With --image: the dm-verity image, booted through dm-verity, then
    /// a tampered copy and a wrong root hash, which must not boot.
    #[arg(long, requires = "image")]
    pub verity: bool,
    /// Also run the fault scenarios (QEMU killed, agent silent).
    #[arg(long)]
    pub faults: bool,
    #[arg(long, default_value = "minimal")]
    pub recipe: String,
    /// Boot the module flavour kernel (`kernel --modules`) with a guest that
    /// carries its modules, and load some with parameters at CreateSandbox.
    #[arg(long)]
    pub kernel_modules: bool,
    /// auto probes KVM with a real boot and falls back to TCG.
    #[arg(long, default_value = "auto")]
    pub accel: Accel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    Initrd,
    Image,
    /// The image with its dm-verity hash tree, root mounted through it.
    #[serde(rename = "verity-image")]
    VerityImage,
}

#[derive(Serialize)]
pub struct BootReport {
    pub media: Media,
    pub accel: Accel,
    /// QEMU start to the first SERVING answer of Health.Check.
    pub boot_to_serving_ms: u64,
    /// Where that time went; None if the console did not show the
    /// agent's ready line before SERVING.
    pub phases: Option<BootPhases>,
    pub agent_version: String,
    pub grpc_version: String,
    pub guest_kernel: String,
    pub agent_is_init: bool,
    pub qemu_exit: String,
    pub console_log: String,
    /// Modules loaded at CreateSandbox and the interfaces that proved
    /// their parameters (the module flavour only).
    pub kernel_modules_loaded: Vec<String>,
}

#[derive(Serialize)]
pub struct FaultReport {
    pub scenario: &'static str,
    pub error: String,
    pub detected_after_ms: u64,
    pub leftovers: Vec<String>,
}

/// The artifacts one boot needs, built (or taken from the cache).
#[derive(Clone)]
pub struct Guest {
    pub kernel: PathBuf,
    /// QEMU's `-bios`; None: SeaBIOS.
    pub firmware: Option<PathBuf>,
    pub boot: BootMedia,
    pub media: Media,
    pub console_dir: PathBuf,
    /// The release's `vhost-device-vsock` (the pinned crate with this
    /// project's patches), never whatever is on `$PATH`: the harnesses test
    /// the daemon that ships.
    pub vsock_daemon: PathBuf,
    /// The recipe's `init: agent` (the agent is PID 1); with `init:
    /// systemd` the agent is a service and must say so.
    pub agent_is_init: bool,
    /// The module flavour kernel, and the guest carries its modules.
    pub kernel_modules: bool,
}

/// A guest booted as the shipped configuration boots it: the uncompressed
/// vmlinux through PVH, from QEMU's default firmware.
pub fn prepare(ctx: &Ctx, media: Media, recipe: &str) -> Result<Guest> {
    prepare_flavour(ctx, media, recipe, false)
}

/// [`prepare`], and with `kernel_modules` the module flavour kernel with a
/// guest that carries its modules.
pub fn prepare_flavour(
    ctx: &Ctx,
    media: Media,
    recipe: &str,
    kernel_modules: bool,
) -> Result<Guest> {
    let kernel_args = kernel::KernelArgs {
        modules: kernel_modules,
        ..Default::default()
    };
    let kernel = kernel::build(ctx, &kernel_args)?.vmlinux();
    let boot = match media {
        Media::Initrd => {
            let args = initrd::InitrdArgs {
                recipe: recipe.to_string(),
                compression: initrd::CompressionArg::Gzip,
                kernel_modules,
            };
            BootMedia::Initrd(initrd::build(ctx, &args)?.file)
        }
        Media::Image | Media::VerityImage => {
            let args = image::ImageArgs {
                verity: media == Media::VerityImage,
                kernel_modules,
                ..image::ImageArgs::for_recipe(recipe)
            };
            let built = image::build(ctx, &args)?;
            let verity = match &built.verity_params {
                Some(p) => Some(
                    p.parse()
                        .map_err(|e| anyhow::anyhow!("the image's kernel_verity_params: {e}"))?,
                ),
                None => None,
            };
            BootMedia::Image {
                path: built.file,
                fs: ImageFs::Ext4,
                dax: true,
                verity,
            }
        }
    };
    let vsock_daemon = xtask::release::build_vsock(ctx)?.path(xtask::release::VSOCK_DAEMON);
    let (recipe_def, _) = xtask::rootfs::load_recipe(ctx, recipe)?;
    Ok(Guest {
        agent_is_init: recipe_def.init == rootfs_builder::InitMode::Agent,
        kernel,
        firmware: None,
        boot,
        media,
        console_dir: ctx.logs(),
        vsock_daemon,
        kernel_modules,
    })
}

pub(crate) fn config(guest: &Guest, name: &str, accel: Accel, extra_params: &[&str]) -> QemuConfig {
    // Unique per process: parallel runs must not share a state dir.
    let id = format!("xtask-{name}-{}", std::process::id());
    let mut cfg = QemuConfig::new(id, &guest.kernel, guest.boot.clone());
    cfg.firmware = guest.firmware.clone();
    // The shipped default_memory, so boot figures are a sandbox's: on TCG
    // the kernel spends about 100 ms more initialising 2 GiB than 512 MiB.
    cfg.memory_mib = runtime::config::QemuSection::default().default_memory;
    cfg.accel = accel;
    cfg.vsock_daemon = Some(guest.vsock_daemon.clone());
    cfg.console_log = Some(guest.console_dir.join(format!("vm-{name}-console.log")));
    cfg.kernel_params = extra_params.iter().map(|s| s.to_string()).collect();
    cfg
}

fn kernel_module(name: &str, parameters: &[&str]) -> protocols::agent::KernelModule {
    protocols::agent::KernelModule {
        name: name.into(),
        parameters: parameters.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

/// What the module flavour guest loads at CreateSandbox (`kernel-configs/
/// modules/`), with parameters that show in the interfaces they create.
const LOADED_MODULES: &[(&str, &[&str], &[&str])] = &[
    ("dummy", &["numdummies=3"], &["dummy0", "dummy1", "dummy2"]),
    ("bonding", &["max_bonds=2"], &["bond0", "bond1"]),
];

/// CreateSandbox's kernel_modules against the real agent and kernel: a
/// module the guest does not carry is refused, naming the module and
/// modules.dep, and no sandbox is created (the caller's CreateSandbox then
/// succeeds). The default kernel has no loadable modules, so `dummy` is
/// such a module there; the module flavour carries it (and it must not be
/// loaded here, without its parameters), so a made-up name is used.
fn check_kernel_modules(
    client: &AgentClient,
    req: &CreateSandboxRequest,
    loadable: bool,
) -> Result<()> {
    let missing_name = if loadable {
        "kata_no_such_module"
    } else {
        "dummy"
    };
    let mut missing = req.clone();
    missing.kernel_modules = vec![kernel_module("loop", &[]), kernel_module(missing_name, &[])];
    match client.create_sandbox(&missing) {
        Err(e) => {
            let text = format!("{e:#}");
            if !(text.contains(&format!("kernel module {missing_name}")) && text.contains("modules.dep")) {
                bail!("CreateSandbox with kernel module {missing_name} (not in this guest) failed, but not naming it and modules.dep: {text}");
            }
            Ok(())
        }
        Ok(()) => bail!(
            "CreateSandbox with kernel module {missing_name} succeeded, but this guest does not carry it"
        ),
    }
}

/// The modules of [`LOADED_MODULES`] are in, with their parameters: the
/// interfaces they create, and no more. Returns what was seen.
fn check_modules_loaded(client: &AgentClient) -> Result<Vec<String>> {
    let listed = client
        .agent()
        .list_interfaces(
            client.context(),
            &protocols::agent::ListInterfacesRequest::new(),
        )
        .context("ListInterfaces after loading the modules")?;
    let names: Vec<&str> = listed.Interfaces.iter().map(|i| i.name.as_str()).collect();
    for (module, parameters, expected) in LOADED_MODULES {
        for want in *expected {
            if !names.contains(want) {
                bail!("kernel module {module} {parameters:?} was loaded, but the guest has no {want}; its interfaces: {names:?}");
            }
        }
        let prefix = expected[0].trim_end_matches(char::is_numeric);
        let extra = names
            .iter()
            .filter(|n| n.starts_with(prefix) && !expected.contains(n))
            .collect::<Vec<_>>();
        if !extra.is_empty() {
            bail!("kernel module {module} {parameters:?}: interfaces {extra:?} beyond {expected:?} (the parameters were not applied)");
        }
    }
    Ok(LOADED_MODULES
        .iter()
        .map(|(module, parameters, expected)| {
            format!(
                "{module} {} ({})",
                parameters.join(" "),
                expected.join(", ")
            )
        })
        .collect())
}

pub(crate) fn media_name(m: Media) -> &'static str {
    match m {
        Media::Initrd => "initrd",
        Media::Image => "image",
        Media::VerityImage => "verity-image",
    }
}

/// What must be gone after a VM is torn down.
pub(crate) struct Traces {
    state_dir: PathBuf,
    pids: Vec<u32>,
}

impl Traces {
    pub(crate) fn of(vm: &Vm) -> Traces {
        Traces {
            state_dir: vm.state_dir().to_path_buf(),
            pids: vm.pid().into_iter().chain(vm.vsock_daemon_pid()).collect(),
        }
    }

    pub(crate) fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.state_dir.exists() {
            out.push(format!(
                "state dir {} still exists",
                self.state_dir.display()
            ));
        }
        for pid in &self.pids {
            if process_alive(*pid) {
                out.push(format!("process {pid} still runs"));
            }
        }
        out
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: it holds no resources but its pid.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The main scenario: boot, SERVING, Version, GetGuestDetails,
/// CreateSandbox, DestroySandbox, QEMU powers off by itself.
pub fn boot_and_drive(ctx: &Ctx, guest: &Guest, accel: Accel) -> Result<BootReport> {
    let name = media_name(guest.media);
    let mut cfg = config(guest, name, accel, &[]);
    // The image's proof is in the kernel's own mount messages.
    cfg.quiet = guest.media == Media::Initrd;
    let console = cfg.console_log.clone().expect("set above");
    let mut vm = Vm::start(cfg).context("start QEMU")?;
    let started = vm.started_at();
    let qemu_up = started.elapsed();
    let watch = ConsoleWatch::start(&console);
    let traces = Traces::of(&vm);
    let address = vm.agent_address().context("the VM has no agent channel")?;
    let client =
        AgentClient::wait_serving(&address, SERVING_TIMEOUT, CALL_TIMEOUT, || vm.check_alive())
            .with_context(|| {
                format!("agent in the {name} guest (console: {})", console.display())
            })?;
    let boot_to_serving = started.elapsed();
    let ready_seen = watch.finish();
    let version = client.version()?;
    let details = client.get_guest_details(&GuestDetailsRequest {
        mem_block_size: true,
        ..Default::default()
    })?;
    let agent_details = details
        .agent_details
        .clone()
        .into_option()
        .unwrap_or_default();
    let mut req = CreateSandboxRequest::new();
    req.hostname = "kata-vmtest".into();
    req.sandbox_id = format!("vmtest-{}", std::process::id());
    req.dns = vec!["nameserver 192.0.2.53".into()];
    check_kernel_modules(&client, &req, guest.kernel_modules)?;
    // `loop` is built in (in /sys/module): already there, nothing to load.
    req.kernel_modules = vec![kernel_module("loop", &[])];
    if guest.kernel_modules {
        req.kernel_modules
            .extend(LOADED_MODULES.iter().map(|(n, p, _)| kernel_module(n, p)));
    }
    client.create_sandbox(&req).with_context(|| {
        format!(
            "CreateSandbox (with kernel modules {:?})",
            req.kernel_modules
        )
    })?;
    let kernel_modules_loaded = if guest.kernel_modules {
        check_modules_loaded(&client)?
    } else {
        Vec::new()
    };
    client.destroy_sandbox()?;
    drop(client);
    let status = vm
        .wait_exit(POWEROFF_TIMEOUT)
        .context("after DestroySandbox the guest must power off")?;
    let accel_used = vm.accel();
    let console_text = vm.console_output();
    vm.shutdown()?;
    match guest.media {
        Media::Image => check_dax_root(&console_text),
        Media::VerityImage => check_verity_root(&console_text),
        Media::Initrd => Ok(()),
    }
    .with_context(|| format!("console: {}", console.display()))?;
    let left = traces.leftovers();
    if !left.is_empty() {
        bail!("after the {name} VM: {}", left.join("; "));
    }
    let phases = ready_seen.and_then(|seen| {
        BootPhases::from_console(
            &console_text,
            qemu_up,
            seen.saturating_duration_since(started),
            boot_to_serving,
        )
    });
    let report = BootReport {
        media: guest.media,
        accel: accel_used,
        boot_to_serving_ms: boot_to_serving.as_millis() as u64,
        phases,
        agent_version: version.agent_version.clone(),
        grpc_version: version.grpc_version.clone(),
        guest_kernel: details.kernel_release.clone(),
        agent_is_init: agent_details.init_daemon,
        qemu_exit: status.to_string(),
        console_log: ctx.rel(&console),
        kernel_modules_loaded,
    };
    check_report(ctx, &report, guest.agent_is_init)?;
    Ok(report)
}

/// The root filesystem is the image's partition on the NVDIMM, mounted
/// with DAX. Two proofs from the kernel's own messages: the pfn device
/// (`nd_pmem pfnN.M`) exists only when the kernel accepted our pfn info
/// block, and ext4 in 6.1 refuses a `dax` mount ("DAX unsupported by block
/// device") instead of silently falling back, so root mounted with
/// `rootflags=dax` means DAX is on.
fn check_verity_root(console: &str) -> Result<()> {
    let has = |pred: &dyn Fn(&str) -> bool| console.lines().any(pred);
    if !has(&|l| l.contains("(vroot) is ready")) {
        bail!(
            "dm-init did not set up the verity root (no \"vroot ... is ready\" in the kernel log)"
        );
    }
    if !has(&|l| l.contains("EXT4-fs (dm-0)") && l.contains("mounted filesystem")) {
        bail!("the root was not mounted from dm-0, the verity device");
    }
    Ok(())
}

fn check_dax_root(console: &str) -> Result<()> {
    let has = |pred: &dyn Fn(&str) -> bool| console.lines().any(pred);
    if !has(&|l| l.contains("nd_pmem pfn")) {
        bail!("the kernel did not create a pfn device: it rejected the image's pfn info block");
    }
    if !has(&|l| l.contains("Kernel command line:") && l.contains("rootflags=dax")) {
        bail!("root was not mounted with rootflags=dax");
    }
    if !has(&|l| l.contains("EXT4-fs (pmem0p1): mounted filesystem")) {
        bail!("the kernel did not mount /dev/pmem0p1 as root");
    }
    if has(&|l| l.contains("DAX unsupported")) {
        bail!("/dev/pmem0p1 does not support DAX");
    }
    Ok(())
}

fn check_report(ctx: &Ctx, r: &BootReport, agent_is_init: bool) -> Result<()> {
    if r.agent_version != xtask::agent::AGENT_VERSION {
        bail!(
            "agent reports version {} but the build is {}",
            r.agent_version,
            xtask::agent::AGENT_VERSION
        );
    }
    if !r.guest_kernel.starts_with(&ctx.versions.kernel.version) {
        bail!(
            "guest runs kernel `{}`, not the pipeline's {}",
            r.guest_kernel,
            ctx.versions.kernel.version
        );
    }
    if r.agent_is_init != agent_is_init {
        bail!(
            "the recipe runs the agent {}, but the agent says it is{} PID 1",
            if agent_is_init {
                "as init"
            } else {
                "as a service of systemd"
            },
            if r.agent_is_init { "" } else { " not" }
        );
    }
    if !r.qemu_exit.contains("exit status: 0") {
        bail!(
            "QEMU ended with {} after the guest powered off",
            r.qemu_exit
        );
    }
    Ok(())
}

/// QEMU is killed under a live agent connection: the next call must fail
/// within its timeout and teardown must leave nothing.
pub fn fault_qemu_killed(guest: &Guest, accel: Accel) -> Result<FaultReport> {
    let cfg = config(guest, "fault-kill", accel, &[]);
    let mut vm = Vm::start(cfg)?;
    let traces = Traces::of(&vm);
    let address = vm.agent_address().context("no agent channel")?;
    let client =
        AgentClient::wait_serving(&address, SERVING_TIMEOUT, Duration::from_secs(5), || {
            vm.check_alive()
        })?;
    let pid = vm.pid().context("QEMU has no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let t = Instant::now();
    let err = match client.check() {
        Ok(_) => bail!("Health.Check answered after QEMU was killed"),
        Err(e) => e.to_string(),
    };
    let detected = t.elapsed();
    let alive = vm.check_alive();
    if alive.is_ok() {
        bail!("the Vm does not notice that QEMU was killed");
    }
    drop(client);
    drop(vm);
    Ok(FaultReport {
        scenario: "qemu-killed",
        error: err,
        detected_after_ms: detected.as_millis() as u64,
        leftovers: traces.leftovers(),
    })
}

/// The agent listens on another vsock port, so nothing ever answers on
/// 1024: waiting must end at its bound with an error naming the address.
pub fn fault_silent_agent(guest: &Guest, accel: Accel) -> Result<FaultReport> {
    let cfg = config(
        guest,
        "fault-silent",
        accel,
        &["agent.server_addr=vsock://-1:1025"],
    );
    let mut vm = Vm::start(cfg)?;
    let traces = Traces::of(&vm);
    let address = vm.agent_address().context("no agent channel")?;
    let t = Instant::now();
    let err = match AgentClient::wait_serving(
        &address,
        SILENT_AGENT_TIMEOUT,
        Duration::from_secs(2),
        || vm.check_alive(),
    ) {
        Ok(_) => bail!("an agent answered on port 1024 although it was told to listen on 1025"),
        Err(e) => e.to_string(),
    };
    let waited = t.elapsed();
    if waited > SILENT_AGENT_TIMEOUT + Duration::from_secs(10) {
        bail!(
            "waiting for a silent agent took {waited:?}, beyond its bound {SILENT_AGENT_TIMEOUT:?}"
        );
    }
    vm.shutdown()?;
    Ok(FaultReport {
        scenario: "agent-silent",
        error: err,
        detected_after_ms: waited.as_millis() as u64,
        leftovers: traces.leftovers(),
    })
}

/// How long a guest that must not boot may take to say so.
const REFUSED_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Boots `guest` expecting the boot to fail: the runtime's error must carry
/// the kernel's verdict (`says`), and the console dm-verity's complaint
/// (`verity_says`), which may be further up than the error's tail.
fn refused_boot(
    guest: &Guest,
    name: &'static str,
    accel: Accel,
    verity_says: &str,
    says: &str,
) -> Result<FaultReport> {
    let mut cfg = config(guest, name, accel, &[]);
    cfg.quiet = false;
    let console = cfg.console_log.clone().expect("config sets a console log");
    let mut vm = Vm::start(cfg).context("start QEMU")?;
    let traces = Traces::of(&vm);
    let address = vm.agent_address().context("no agent channel")?;
    let t = Instant::now();
    let err = match AgentClient::wait_serving(
        &address,
        REFUSED_BOOT_TIMEOUT,
        Duration::from_secs(2),
        || vm.check_alive(),
    ) {
        Ok(_) => {
            bail!("{name}: the agent came up: the guest ran from a root that does not verify")
        }
        Err(e) => runtime::error_chain(&e),
    };
    let waited = t.elapsed();
    let _ = vm.shutdown();
    let verdict = err.lines().find(|l| l.contains(says)).with_context(|| {
        format!("{name}: the boot failed, but the error does not say {says:?}:\n{err}")
    })?;
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let verity = log
        .lines()
        .find(|l| l.contains("device-mapper: verity:") && l.contains(verity_says))
        .with_context(|| {
            format!(
                "{name}: no dm-verity line saying {verity_says:?} in {}",
                console.display()
            )
        })?;
    let message = |l: &str| l.split_once("] ").map_or(l, |(_, m)| m).trim().to_string();
    Ok(FaultReport {
        scenario: name,
        error: format!("{} / {}", message(verity), message(verdict)),
        detected_after_ms: waited.as_millis() as u64,
        leftovers: traces.leftovers(),
    })
}

/// A copy of `image` in `dir` with one byte of the agent's ELF header
/// changed (found by content: the agent's first 4 KiB block): what a
/// verified root must refuse to run.
pub(crate) fn tampered_copy(
    ctx: &Ctx,
    image: &std::path::Path,
    dir: &std::path::Path,
) -> Result<PathBuf> {
    let agent = xtask::agent::build(ctx)?;
    let head = {
        use std::io::Read;
        let mut b = vec![0u8; 4096];
        std::fs::File::open(&agent.binary)?.read_exact(&mut b)?;
        b
    };
    let copy = dir.join("tampered.img");
    let out = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&copy)
        .output()?;
    if !out.status.success() {
        bail!(
            "cp {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let at = find_block(&copy, &head)?
        .context("the agent's first block is not in the image: cannot aim the tampering")?;
    flip_byte(&copy, at + 64)?;
    Ok(copy)
}

/// One byte of the agent's ELF header changed in a copy of the verity
/// image: the kernel cannot read the block, so init cannot start.
fn tampered_image(ctx: &Ctx, guest: &Guest, accel: Accel) -> Result<FaultReport> {
    let BootMedia::Image { path, .. } = &guest.boot else {
        bail!("the verity test needs the image");
    };
    let dir = tempfile::Builder::new()
        .prefix("kata-verity-")
        .tempdir_in("/var/tmp")?;
    let copy = tampered_copy(ctx, path, dir.path())?;
    let mut tampered = guest.clone();
    if let BootMedia::Image { path, .. } = &mut tampered.boot {
        *path = copy;
    }
    refused_boot(
        &tampered,
        "verity-tampered",
        accel,
        "is corrupted",
        "Requested init /sbin/init failed",
    )
}

/// The untouched image with a root hash one digit off.
fn wrong_root_hash(guest: &Guest, accel: Accel) -> Result<FaultReport> {
    let mut wrong = guest.clone();
    if let BootMedia::Image {
        verity: Some(v), ..
    } = &mut wrong.boot
    {
        let first = if v.root_hash.starts_with('0') {
            "1"
        } else {
            "0"
        };
        v.root_hash.replace_range(0..1, first);
    } else {
        bail!("the verity test needs the verity image");
    }
    refused_boot(
        &wrong,
        "verity-wrong-root-hash",
        accel,
        "is corrupted",
        "Unable to mount root fs",
    )
}

/// The offset of the 4 KiB-aligned block of `file` equal to `block`.
fn find_block(file: &std::path::Path, block: &[u8]) -> Result<Option<u64>> {
    use std::io::Read;
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut buf = vec![0u8; block.len()];
    let mut offset = 0u64;
    loop {
        match f.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if buf == block {
            return Ok(Some(offset));
        }
        offset += block.len() as u64;
    }
}

fn flip_byte(file: &std::path::Path, at: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, at)?;
    Ok(())
}

/// What [`connect_storm`] did and what it found.
#[derive(Serialize)]
pub struct StormReport {
    /// `CONNECT`s sent from QEMU's start until the agent first answered.
    pub during_boot: u32,
    /// `CONNECT`s abandoned right after they were sent, once the agent
    /// listened (the guest's answer finds the host end closed).
    pub abandoned: u32,
    /// A fresh client's wait for SERVING after the storm.
    pub serving_after_ms: u64,
    pub leftovers: Vec<String>,
}

/// How long the storm abandons connections once the agent listens.
const ABANDON_FOR: Duration = Duration::from_secs(5);

/// Host clients that give up on `CONNECT` early must not cost later ones
/// their agent: `CONNECT`s in a tight loop from QEMU's start (some reach
/// the vsock daemon while QEMU is still setting up the virtqueues), then
/// `CONNECT`s abandoned before the guest's answer arrives. Afterwards a
/// normal client must still reach SERVING. The vsock daemon's worker thread
/// died in both cases before `vhost-device-vsock/patches/0.3.0`, and every
/// later `CONNECT` went unanswered.
pub fn connect_storm(guest: &Guest, accel: Accel) -> Result<StormReport> {
    let cfg = config(guest, "connect-storm", accel, &[]);
    let mut vm = Vm::start(cfg)?;
    let traces = Traces::of(&vm);
    let address = vm.agent_address().context("no agent channel")?;
    let started = Instant::now();
    let mut during_boot = 0u32;
    loop {
        vm.check_alive()?;
        if started.elapsed() > SERVING_TIMEOUT {
            bail!("no CONNECT was answered with OK within {SERVING_TIMEOUT:?} of QEMU's start ({during_boot} tried)");
        }
        during_boot += 1;
        if address.connect(Duration::from_millis(200)).is_ok() {
            break;
        }
    }
    let mut abandoned = 0u32;
    let storm = Instant::now();
    while storm.elapsed() < ABANDON_FOR {
        // A 1 ms bound: the guest's OK comes later, to a closed host end.
        let _ = address.connect(Duration::from_millis(1));
        abandoned += 1;
    }
    let t = Instant::now();
    let client = AgentClient::wait_serving(&address, Duration::from_secs(30), CALL_TIMEOUT, || {
        vm.check_alive()
    })
    .with_context(|| {
        format!("after {during_boot} CONNECTs during boot and {abandoned} abandoned ones, the agent is unreachable")
    })?;
    let serving_after = t.elapsed();
    drop(client);
    vm.shutdown()?;
    Ok(StormReport {
        during_boot,
        abandoned,
        serving_after_ms: serving_after.as_millis() as u64,
        leftovers: traces.leftovers(),
    })
}

pub fn check_fault(f: &FaultReport) -> Result<()> {
    if !f.leftovers.is_empty() {
        bail!("{}: left behind: {}", f.scenario, f.leftovers.join("; "));
    }
    if f.error.trim().is_empty() {
        bail!("{}: the error says nothing", f.scenario);
    }
    Ok(())
}

pub fn run(ctx: &Ctx, args: &VmArgs) -> Result<()> {
    let media = match (args.image, args.verity) {
        (true, true) => Media::VerityImage,
        (true, false) => Media::Image,
        _ => Media::Initrd,
    };
    let guest = prepare_flavour(ctx, media, &args.recipe, args.kernel_modules)?;
    let mut json = serde_json::Map::new();
    let report = boot_and_drive(ctx, &guest, args.accel)?;
    let modules = if report.kernel_modules_loaded.is_empty() {
        String::new()
    } else {
        format!(
            "; modules loaded at CreateSandbox: {}",
            report.kernel_modules_loaded.join("; ")
        )
    };
    ctx.ui.info(&format!(
        "test vm --{}{}: PASS: SERVING {} ms after QEMU start ({:?}), agent {}, guest kernel {}, QEMU {}{modules}",
        media_name(media),
        if guest.kernel_modules { " --kernel-modules" } else { "" },
        report.boot_to_serving_ms,
        report.accel,
        report.agent_version,
        report.guest_kernel,
        report.qemu_exit
    ));
    json.insert("boot".into(), serde_json::to_value(&report)?);
    if args.verity {
        let mut refused = Vec::new();
        for f in [
            tampered_image(ctx, &guest, args.accel)?,
            wrong_root_hash(&guest, args.accel)?,
        ] {
            check_fault(&f)?;
            ctx.ui.info(&format!(
                "test vm verity {}: PASS: refused after {} ms: {}",
                f.scenario, f.detected_after_ms, f.error
            ));
            refused.push(f);
        }
        json.insert("verity_refused".into(), serde_json::to_value(&refused)?);
    }
    if args.faults {
        let mut faults = Vec::new();
        for f in [
            fault_qemu_killed(&guest, args.accel)?,
            fault_silent_agent(&guest, args.accel)?,
        ] {
            check_fault(&f)?;
            ctx.ui.info(&format!(
                "test vm fault {}: PASS: error after {} ms: {}",
                f.scenario,
                f.detected_after_ms,
                first_line(&f.error)
            ));
            faults.push(f);
        }
        json.insert("faults".into(), serde_json::to_value(&faults)?);
        let storm = connect_storm(&guest, args.accel)?;
        if !storm.leftovers.is_empty() {
            bail!("connect-storm: left behind: {}", storm.leftovers.join("; "));
        }
        ctx.ui.info(&format!(
            "test vm fault connect-storm: PASS: SERVING {} ms after {} CONNECTs during boot and {} abandoned ones",
            storm.serving_after_ms, storm.during_boot, storm.abandoned
        ));
        json.insert("connect_storm".into(), serde_json::to_value(&storm)?);
    }
    if ctx.json {
        ctx.print_json(&serde_json::Value::Object(json))?;
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
