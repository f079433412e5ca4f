//! `kata-runtime`: host-side command line of the Kata rewrite.
//!
//! Subcommands:
//! - `agent-ctl`: one call to a guest agent (after kata-agent-ctl): the
//!   request is given as protobuf JSON, the reply is printed as JSON.
//!
//! - `check` (alias `kata-check`): can this host run Kata Containers? CPU
//!   virtualisation flags, /dev/kvm, vhost devices (or the vhost-user
//!   daemons), QEMU's version, and as root a real boot of the configured
//!   kernel under KVM (TCG when KVM fails). Prints upstream's "System is
//!   capable of running Kata Containers" when a VM can run, saying whether
//!   with KVM or with the much slower TCG fallback; `--verbose` also prints
//!   every check that passed.
//! - `env` (alias `kata-env`): upstream's environment report (Kernel, Meta,
//!   Image, Initrd, Hypervisor, Runtime, Host, Agent) as TOML or `--json`;
//!   `--config` prints the configuration in effect instead.
//! - `metrics <sandbox-id>`: the running sandbox's metrics, from its shim's
//!   monitor socket (`/run/vc/sbs/<id>/shim-monitor.sock`), as upstream's.
//! - `exec <sandbox-id> [--kata-debug-port N]`: a shell in the sandbox's
//!   guest through the agent's debug console (`debug_console_enabled = true`
//!   in `[agent.kata]` when the sandbox started), on guest port N (default
//!   1026) of the agent's address, which the shim's monitor socket gives
//!   (`/agent-url`: hybrid vsock or AF_VSOCK), or else the sandbox's hybrid
//!   vsock socket `<state_root>/<id>/vsock.sock`. A terminal on stdin is put in raw mode (and
//!   restored); otherwise stdin is sent as it is, followed by Ctrl-D (the
//!   terminal's end of input, so the shell exits after the commands), and
//!   the output is printed until the guest side closes.
//!
//! - `direct-volume add|remove|stats|resize --volume-path P`: upstream's
//!   direct-assigned block volumes. `add --mount-info JSON` records the
//!   device (a block device or disk image) for the mount source P in
//!   `/run/kata-containers/shared/direct-volumes/`; a container mounting P
//!   then gets the device hot-plugged into its VM. `stats` and `resize
//!   --size BYTES` go through the shim of the sandbox that mounts it.
//!
//! - `iptables get --sandbox-id ID [--v6]`: the running sandbox's guest
//!   rules as iptables-save (ip6tables-save) prints them; `iptables set
//!   --sandbox-id ID [--v6] FILE` hands FILE, rules in iptables-restore's
//!   format, to the guest's iptables-restore (tables FILE does not name are
//!   left alone). Both go through the shim's monitor socket (`/iptables`,
//!   `/ip6tables`) to the agent; the guest image must have iptables.
//!
//! Exit status: 0 success (`check`: capable, with KVM or TCG), 1 the call
//! failed (`check`: not capable), 2 bad usage or bad input (including a bad
//! configuration file).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use protobuf::MessageFull;
use protobuf_json_mapping::{parse_from_str, print_to_string_with_options, PrintOptions};

use protocols::agent::{
    CreateSandboxRequest, DestroySandboxRequest, GuestDetailsRequest, OnlineCPUMemRequest,
    SetGuestDateTimeRequest,
};
use protocols::health::CheckRequest;
use runtime::agent_client::{AgentAddress, AgentClient, DEFAULT_CONNECT_TIMEOUT};

#[derive(Parser)]
#[command(
    name = "kata-runtime",
    version,
    about = "Kata Containers host runtime tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Call the guest agent once and print the reply as JSON.
    AgentCtl(AgentCtlArgs),
    /// Check whether this host can run Kata Containers.
    #[command(alias = "kata-check")]
    Check(CheckArgs),
    /// Print the environment upstream's way (TOML; --json for JSON):
    /// kernel, image, initrd, hypervisor, runtime, host and agent.
    #[command(alias = "kata-env")]
    Env(EnvArgs),
    /// Print a running sandbox's metrics (Prometheus text) from its shim.
    Metrics(MetricsArgs),
    /// Open a shell in a sandbox's guest (its debug console, which needs
    /// debug_console_enabled = true in [agent.kata]).
    Exec(ExecArgs),
    /// Manage direct-assigned block volumes (add, remove, stats, resize).
    #[command(subcommand)]
    DirectVolume(DirectVolumeCommand),
    /// Read or replace the iptables rules in a running sandbox's guest.
    #[command(subcommand)]
    Iptables(IptablesCommand),
    /// Manage the VM template sandboxes start from ([factory] enable_template).
    #[command(subcommand)]
    Factory(FactoryCommand),
}

#[derive(Subcommand)]
enum FactoryCommand {
    /// Boot the template VM, save it into template_path (a tmpfs), stop it.
    Init {
        /// Print the template's record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report the template; exit 1 when this configuration cannot use it.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove the template and unmount its tmpfs.
    Destroy,
}

#[derive(Subcommand)]
enum IptablesCommand {
    /// Print the guest's rules, as iptables-save prints them.
    Get {
        /// The sandbox's id (its first container's id, as `ctr task ls` shows).
        #[arg(long)]
        sandbox_id: String,
        /// The IPv6 rules (ip6tables-save).
        #[arg(long)]
        v6: bool,
    },
    /// Replace the guest's rules with those of FILE, through iptables-restore
    /// (tables FILE does not name are left alone).
    Set {
        /// The sandbox's id (its first container's id, as `ctr task ls` shows).
        #[arg(long)]
        sandbox_id: String,
        /// The IPv6 rules (ip6tables-restore).
        #[arg(long)]
        v6: bool,
        /// The rules, in the format iptables-save writes.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum DirectVolumeCommand {
    /// Record a block device or disk image for a volume path.
    Add {
        /// The path containers mount (the mount source).
        #[arg(long)]
        volume_path: String,
        /// JSON: {"volume-type":"block","device":"/dev/sdb","fstype":"ext4","options":["ro"]}
        #[arg(long)]
        mount_info: String,
    },
    /// Forget a volume path.
    Remove {
        #[arg(long)]
        volume_path: String,
    },
    /// Print the volume's filesystem usage in the guest (JSON).
    Stats {
        #[arg(long)]
        volume_path: String,
    },
    /// Grow the volume's device and its filesystem, online.
    Resize {
        #[arg(long)]
        volume_path: String,
        /// The new size in bytes (never smaller than the current one).
        #[arg(long)]
        size: u64,
    },
}

#[derive(clap::Args)]
struct MetricsArgs {
    /// The sandbox's id (its first container's id, as `ctr task ls` shows).
    sandbox_id: String,
}

#[derive(clap::Args)]
struct ExecArgs {
    /// The guest vsock port of the debug console (0: the default, 1026).
    #[arg(long, value_name = "N", default_value_t = 0)]
    kata_debug_port: u32,
    /// The sandbox id (with ctr run: the container id).
    sandbox_id: String,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Skip the test boot (which needs root and the configured kernel).
    #[arg(long)]
    no_boot: bool,
    /// Print every check, not only problems and the verdict.
    #[arg(short, long)]
    verbose: bool,
    /// Upstream's option: this check never uses the network, so it changes
    /// nothing.
    #[arg(short = 'n', long)]
    no_network_checks: bool,
}

#[derive(clap::Args)]
struct EnvArgs {
    #[arg(long)]
    json: bool,
    /// Print the configuration in effect instead (every key, as the shim
    /// reads it; this runtime's extension).
    #[arg(long)]
    config: bool,
}

#[derive(clap::Args)]
struct AgentCtlArgs {
    /// Agent address: unix:///PATH, hvsock:///PATH/vsock.sock:1024 or vsock://CID:1024.
    #[arg(long)]
    addr: String,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Retry connecting until the agent reports SERVING, for up to this many
    /// seconds (0: a single attempt).
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Check, Version, GetGuestDetails, CreateSandbox, DestroySandbox,
    /// OnlineCPUMem or SetGuestDateTime (case-insensitive).
    call: String,
    /// The request as protobuf JSON, e.g. '{"sandbox_id": "s1", "hostname": "h"}'.
    /// Default: an empty request (SetGuestDateTime: the host's current time).
    args: Option<String>,
}

/// Failure classes mapped to the exit status.
enum Failure {
    Usage(String),
    Call(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::AgentCtl(args) => agent_ctl(args),
        Commands::Check(args) => check(args),
        Commands::Env(args) => env(args),
        Commands::Metrics(args) => metrics(args),
        Commands::Exec(args) => exec(args),
        Commands::DirectVolume(cmd) => direct_volume(cmd),
        Commands::Iptables(cmd) => iptables(cmd),
        Commands::Factory(cmd) => factory(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("kata-runtime: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Call(msg)) => {
            eprintln!("kata-runtime: {msg}");
            ExitCode::from(1)
        }
    }
}

fn factory(cmd: FactoryCommand) -> Result<(), Failure> {
    use runtime::factory;
    let cfg = runtime::config::load().map_err(|e| Failure::Usage(runtime::error_chain(&e)))?;
    let path = cfg.factory.template_path.display().to_string();
    match cmd {
        FactoryCommand::Init { json } => {
            let meta =
                factory::init(&cfg).map_err(|e| Failure::Call(format!("factory init: {e:#}")))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&meta).unwrap_or_default()
                );
            } else {
                println!(
                    "template created in {path}: guest up in {} ms, saved in {} ms, state {} KiB",
                    meta.boot_ms,
                    meta.save_ms,
                    meta.state_bytes / 1024
                );
                if !cfg.factory.enable_template {
                    println!(
                        "note: [factory] enable_template is false in {}: sandboxes will not use it",
                        cfg.file.display()
                    );
                }
            }
            Ok(())
        }
        FactoryCommand::Status { json } => {
            let status = factory::status(&cfg);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else if let Some(meta) = status.meta.as_ref().filter(|_| status.usable) {
                println!(
                    "template in {path}: usable; {} MiB guest, {} MiB of it in memory, state {} KiB, made at {} (unix time); enable_template = {}",
                    meta.memory_mib,
                    status.memory_bytes_used.unwrap_or(0) >> 20,
                    meta.state_bytes / 1024,
                    meta.created_unix,
                    status.enable_template
                );
            } else {
                println!(
                    "template in {path}: {}",
                    status.problem.as_deref().unwrap_or("unusable")
                );
            }
            if status.usable {
                Ok(())
            } else if json {
                Err(Failure::Call(format!("no usable template in {path}")))
            } else {
                Err(Failure::Call(status.problem.unwrap_or_default()))
            }
        }
        FactoryCommand::Destroy => {
            match factory::destroy(&cfg)
                .map_err(|e| Failure::Call(format!("factory destroy: {e:#}")))?
            {
                true => println!("template in {path} removed"),
                false => println!("no template in {path}: nothing to remove"),
            }
            Ok(())
        }
    }
}

/// The monitor socket of the running sandbox `id` (a checked id).
fn monitor_socket(id: &str) -> Result<std::path::PathBuf, Failure> {
    use runtime::shim::monitor;
    let socket = monitor::socket_path(std::path::Path::new(monitor::SANDBOXES_DIR), id);
    if !socket.exists() {
        return Err(Failure::Call(format!(
            "sandbox {id}: no shim monitor socket at {}: no running sandbox has this id (running ones: ls {})",
            socket.display(),
            monitor::SANDBOXES_DIR
        )));
    }
    Ok(socket)
}

fn metrics(a: MetricsArgs) -> Result<(), Failure> {
    use runtime::shim::monitor;
    let id = &a.sandbox_id;
    protocols::ids::check_id("sandbox id", id).map_err(Failure::Usage)?;
    let socket = monitor_socket(id)?;
    let (status, body) = monitor::get(&socket, "/metrics")
        .map_err(|e| Failure::Call(format!("sandbox {id}: {e}")))?;
    if status != 200 {
        return Err(Failure::Call(format!(
            "sandbox {id}: the shim answered /metrics with HTTP {status}: {}",
            body.trim()
        )));
    }
    print!("{body}");
    Ok(())
}

/// How long `iptables` waits for the shim, which waits up to 15 s for the
/// agent, which gives each iptables run 10 s.
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(20);

/// The rules of `file` for `iptables set`, checked as the agent would.
fn read_rules(file: &std::path::Path) -> Result<Vec<u8>, Failure> {
    if !file.exists() {
        return Err(Failure::Usage(format!(
            "iptables file does not exist: {}",
            file.display()
        )));
    }
    let rules = std::fs::read(file).map_err(|e| {
        Failure::Usage(format!("cannot read iptables file {}: {e}", file.display()))
    })?;
    if rules.len() > protocols::MAX_IPTABLES_DATA {
        return Err(Failure::Usage(format!(
            "iptables file {} is {} bytes, over the {} bytes the agent takes in one call: split it by table (*filter, *nat, ...) into several files and set each",
            file.display(),
            rules.len(),
            protocols::MAX_IPTABLES_DATA
        )));
    }
    Ok(rules)
}

fn iptables(cmd: IptablesCommand) -> Result<(), Failure> {
    use runtime::shim::monitor;
    let (id, v6, file) = match &cmd {
        IptablesCommand::Get { sandbox_id, v6 } => (sandbox_id, *v6, None),
        IptablesCommand::Set {
            sandbox_id,
            v6,
            file,
        } => (sandbox_id, *v6, Some(file)),
    };
    // bad input is refused before any sandbox is looked for
    protocols::ids::check_id("sandbox id", id).map_err(Failure::Usage)?;
    let rules = file.map(|f| read_rules(f)).transpose()?;
    let socket = monitor_socket(id)?;
    let endpoint = if v6 { "/ip6tables" } else { "/iptables" };
    let (method, body) = match &rules {
        None => ("GET", None),
        Some(r) => ("PUT", Some(("application/octet-stream", r.as_slice()))),
    };
    let (status, text) = monitor::send(&socket, method, endpoint, body, IPTABLES_TIMEOUT)
        .map_err(|e| Failure::Call(format!("sandbox {id}: {e}")))?;
    if status != 200 {
        return Err(Failure::Call(format!(
            "sandbox {id}: the shim answered {method} {endpoint} with HTTP {status}: {}",
            text.trim()
        )));
    }
    if rules.is_none() {
        print!("{text}");
    }
    Ok(())
}

fn direct_volume(cmd: DirectVolumeCommand) -> Result<(), Failure> {
    use runtime::direct_volume::{self as dv, DirectVolumeError};
    use runtime::shim::monitor;
    let root = std::path::Path::new(dv::ROOT);
    let usage_or_call = |e: DirectVolumeError| match e {
        DirectVolumeError::Io { .. } => Failure::Call(e.to_string()),
        _ => Failure::Usage(e.to_string()),
    };
    // The shim serving the sandbox that mounts `path`, and the device.
    let shim_of = |path: &str| -> Result<(std::path::PathBuf, String), Failure> {
        let info = dv::mount_info(root, path)
            .map_err(usage_or_call)?
            .ok_or_else(|| Failure::Usage(DirectVolumeError::NotAdded(path.into()).to_string()))?;
        let sid = dv::sandbox_of(root, path)
            .map_err(usage_or_call)?
            .ok_or_else(|| {
                Failure::Call(format!(
                    "volume {path}: no running sandbox mounts it (it is used once a container mounts it)"
                ))
            })?;
        let socket = monitor_socket(&sid).map_err(|f| match f {
            Failure::Call(m) => Failure::Call(format!("volume {path}: {m}")),
            usage => usage,
        })?;
        Ok((socket, info.device))
    };
    let answer = |what: &str, path: &str, r: Result<(u16, String), String>| match r {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(Failure::Call(format!(
            "volume {path}: {what}: the shim answered HTTP {status}: {}",
            body.trim()
        ))),
        Err(e) => Err(Failure::Call(format!("volume {path}: {what}: {e}"))),
    };
    match cmd {
        DirectVolumeCommand::Add {
            volume_path,
            mount_info,
        } => dv::add(root, &volume_path, &mount_info)
            .map(drop)
            .map_err(usage_or_call),
        DirectVolumeCommand::Remove { volume_path } => {
            dv::remove(root, &volume_path).map_err(usage_or_call)
        }
        DirectVolumeCommand::Stats { volume_path } => {
            let (socket, device) = shim_of(&volume_path)?;
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("path", &device)
                .finish();
            let body = answer(
                "stats",
                &volume_path,
                monitor::get(&socket, &format!("/direct-volume/stats?{query}")),
            )?;
            println!("{}", body.trim_end());
            Ok(())
        }
        DirectVolumeCommand::Resize { volume_path, size } => {
            let (socket, device) = shim_of(&volume_path)?;
            let body = serde_json::to_vec(&monitor::ResizeRequest {
                volume_path: device,
                size,
            })
            .map_err(|e| Failure::Call(e.to_string()))?;
            answer(
                "resize",
                &volume_path,
                monitor::send_json(
                    &socket,
                    "POST",
                    "/direct-volume/resize",
                    &body,
                    Duration::from_secs(120),
                ),
            )
            .map(drop)
        }
    }
}

fn parse_request<M: MessageFull>(call: &str, args: Option<&str>) -> Result<M, Failure> {
    match args {
        None => Ok(M::new()),
        Some(json) => parse_from_str::<M>(json).map_err(|e| {
            Failure::Usage(format!(
                "bad arguments for {call}: {e}; expected protobuf JSON for {}",
                M::descriptor().full_name()
            ))
        }),
    }
}

fn to_json<M: MessageFull>(reply: &M) -> Result<String, Failure> {
    let options = PrintOptions {
        proto_field_name: true,
        always_output_default_values: true,
        ..Default::default()
    };
    print_to_string_with_options(reply, &options)
        .map_err(|e| Failure::Call(format!("cannot print the reply as JSON: {e}")))
}

fn agent_ctl(a: AgentCtlArgs) -> Result<(), Failure> {
    let address: AgentAddress = a
        .addr
        .parse()
        .map_err(|e: String| Failure::Usage(format!("--addr: {e}")))?;
    let call_timeout = Duration::from_secs(a.timeout.max(1));
    let args = a.args.as_deref();
    let call = a.call.to_ascii_lowercase();

    // Validate the request before touching the network.
    enum Req {
        Check,
        Version,
        GuestDetails(GuestDetailsRequest),
        CreateSandbox(CreateSandboxRequest),
        DestroySandbox,
        OnlineCpuMem(OnlineCPUMemRequest),
        SetGuestDateTime(SetGuestDateTimeRequest),
    }
    let req = match call.as_str() {
        "check" => parse_request::<CheckRequest>(&a.call, args).map(|_| Req::Check)?,
        "version" => parse_request::<CheckRequest>(&a.call, args).map(|_| Req::Version)?,
        "getguestdetails" => Req::GuestDetails(parse_request(&a.call, args)?),
        "createsandbox" => Req::CreateSandbox(parse_request(&a.call, args)?),
        "destroysandbox" => parse_request::<DestroySandboxRequest>(&a.call, args).map(|_| Req::DestroySandbox)?,
        "onlinecpumem" => Req::OnlineCpuMem(parse_request(&a.call, args)?),
        "setguestdatetime" => {
            let mut r: SetGuestDateTimeRequest = parse_request(&a.call, args)?;
            if args.is_none() {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                r.Sec = now.as_secs() as i64;
                r.Usec = now.subsec_micros() as i64;
            }
            Req::SetGuestDateTime(r)
        }
        _ => {
            return Err(Failure::Usage(format!(
                "unknown call {:?}: use Check, Version, GetGuestDetails, CreateSandbox, DestroySandbox, OnlineCPUMem or SetGuestDateTime",
                a.call
            )))
        }
    };

    let client = if a.wait > 0 {
        AgentClient::wait_serving(&address, Duration::from_secs(a.wait), call_timeout, || {
            Ok(())
        })
    } else {
        AgentClient::connect(&address, DEFAULT_CONNECT_TIMEOUT, call_timeout)
    }
    .map_err(|e| Failure::Call(e.to_string()))?;

    let fail = |e: runtime::agent_client::AgentError| Failure::Call(runtime::error_chain(&e));
    let empty = protobuf::well_known_types::empty::Empty::new();
    let json = match req {
        Req::Check => to_json(&client.check().map_err(fail)?)?,
        Req::Version => to_json(&client.version().map_err(fail)?)?,
        Req::GuestDetails(r) => to_json(&client.get_guest_details(&r).map_err(fail)?)?,
        Req::CreateSandbox(r) => client
            .create_sandbox(&r)
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
        Req::DestroySandbox => client
            .destroy_sandbox()
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
        Req::OnlineCpuMem(r) => client
            .online_cpu_mem(&r)
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
        Req::SetGuestDateTime(r) => client
            .set_guest_date_time(&r)
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
    };
    println!("{json}");
    Ok(())
}

/// Oldest QEMU this runtime is tested with (vhost-user-fs-pci, memfd
/// backends and `-accel` all predate it).
const MIN_QEMU: (u32, u32) = (5, 2);

fn qemu_version(qemu: &std::path::Path) -> Result<(u32, u32, String), String> {
    let out = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let first = text.lines().next().unwrap_or("").to_string();
    let ver = first
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .ok_or_else(|| format!("cannot read a version in {first:?}"))?;
    let mut parts = ver
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0), first))
}

fn check(a: CheckArgs) -> Result<(), Failure> {
    use runtime::hypervisor::{probe_boot, probe_kvm, Accel, KVM_PROBE_TIMEOUT};
    let cfg = runtime::config::load().map_err(|e| Failure::Usage(runtime::error_chain(&e)))?;
    // Upstream prints the passing checks with --verbose only; problems and
    // the verdict always.
    let say = |line: String| {
        if a.verbose {
            println!("{line}");
        }
    };
    say(format!("Configuration: {}", cfg.file.display()));
    if a.no_network_checks {
        say("note: --no-network-checks: this check uses no network anyway".into());
    }
    let mut fatal = Vec::new();
    let mut warnings = cfg.warnings();

    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    match runtime::env_info::cpu_virtualisation_flag(&cpuinfo) {
        Some(f) => say(format!("ok: CPU virtualisation flag {f}")),
        None => warnings
            .push("the CPU reports neither vmx nor svm: no hardware virtualisation".to_string()),
    }
    let kvm_open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match &kvm_open {
        Ok(_) => say("ok: /dev/kvm opens read-write".into()),
        Err(e) => warnings.push(format!("/dev/kvm: {e}")),
    }
    for (dev, alt) in [
        (
            "/dev/vhost-vsock",
            "using vhost-user-vsock-pci + vhost-device-vsock, hybrid vsock",
        ),
        (
            "/dev/vhost-net",
            "not needed: pod networks use taps QEMU serves itself",
        ),
    ] {
        if std::path::Path::new(dev).exists() {
            say(format!("ok: {dev}"));
        } else {
            say(format!("note: {dev} is missing ({alt})"));
        }
    }
    if !std::path::Path::new("/dev/vhost-vsock").exists() {
        match cfg.hypervisor.vhost_user_vsock_daemon.clone().filter(|p| p.is_file()).or_else(runtime::hypervisor::find_vsock_daemon) {
            Some(p) => say(format!("ok: vhost-device-vsock at {}", p.display())),
            None => fatal.push("neither /dev/vhost-vsock nor vhost-device-vsock: the agent cannot be reached (set vhost_user_vsock_daemon)".to_string()),
        }
    }
    if cfg.hypervisor.virtio_fs_daemon.is_file() {
        say(format!(
            "ok: virtiofsd at {}",
            cfg.hypervisor.virtio_fs_daemon.display()
        ));
    } else {
        fatal.push(format!(
            "virtio_fs_daemon {} does not exist",
            cfg.hypervisor.virtio_fs_daemon.display()
        ));
    }
    match qemu_version(&cfg.hypervisor.path) {
        Ok((maj, min, line)) if (maj, min) >= MIN_QEMU => say(format!("ok: {line}")),
        Ok((maj, min, line)) => fatal.push(format!(
            "{line}: QEMU {maj}.{min} is older than {}.{}",
            MIN_QEMU.0, MIN_QEMU.1
        )),
        Err(e) => fatal.push(e),
    }
    if !cfg.hypervisor.kernel.is_file() {
        fatal.push(format!(
            "kernel {} does not exist",
            cfg.hypervisor.kernel.display()
        ));
    }

    let mut accel = "not tested";
    if a.no_boot {
        say("note: test boot skipped (--no-boot)".into());
    } else if !nix::unistd::Uid::effective().is_root() {
        say("note: test boot skipped (needs root)".into());
    } else if cfg.hypervisor.kernel.is_file() {
        let probe = probe_kvm(
            &cfg.hypervisor.path,
            &cfg.hypervisor.kernel,
            KVM_PROBE_TIMEOUT,
        );
        // The verdict `accelerator = "auto"` sandboxes use from now on
        // (they probe only when QEMU, the kernel or KVM changed since).
        let cache = cfg
            .runtime
            .state_root
            .join(runtime::hypervisor::PROBE_CACHE_FILE);
        match runtime::hypervisor::ProbeKey::of(&cfg.hypervisor.path, &cfg.hypervisor.kernel)
            .and_then(|key| {
                runtime::hypervisor::store_probe(&cache, &key, &probe).map_err(|e| e.to_string())
            }) {
            Ok(()) => say(format!("ok: KVM verdict recorded in {}", cache.display())),
            Err(e) => warnings.push(format!(
                "cannot record the KVM verdict in {}: {e}",
                cache.display()
            )),
        }
        if probe.kvm_usable {
            say(format!("ok: test boot under KVM ({:?})", probe.elapsed));
            accel = "KVM";
        } else {
            warnings.push(format!("KVM is not usable: {}", probe.reason));
            let tcg = probe_boot(
                &cfg.hypervisor.path,
                &cfg.hypervisor.kernel,
                Accel::Tcg,
                std::time::Duration::from_secs(60),
            );
            if tcg.kvm_usable {
                say(format!("ok: test boot under TCG ({:?})", tcg.elapsed));
                accel = "TCG";
            } else {
                fatal.push(format!(
                    "the kernel does not boot under TCG either: {}",
                    tcg.reason
                ));
            }
        }
    }
    for w in &warnings {
        println!("WARNING: {w}");
    }
    for f in &fatal {
        println!("ERROR: {f}");
    }
    if !fatal.is_empty() {
        return Err(Failure::Call(
            "System is not capable of running Kata Containers".into(),
        ));
    }
    match accel {
        "KVM" => println!("System is capable of running Kata Containers\nSystem can currently create Kata Containers"),
        "TCG" => println!("System is capable of running Kata Containers (with TCG emulation: KVM is not usable here, so VMs are much slower and have no hardware isolation)\nSystem can currently create Kata Containers"),
        _ => println!("System is capable of running Kata Containers, as far as checked without a test boot"),
    }
    Ok(())
}

fn env(a: EnvArgs) -> Result<(), Failure> {
    let cfg = runtime::config::load().map_err(|e| Failure::Usage(runtime::error_chain(&e)))?;
    if !cfg.ignored.is_empty() {
        eprintln!(
            "kata-runtime: {}: not used by this runtime, ignored: {}",
            cfg.file.display(),
            cfg.ignored.join(", ")
        );
    }
    for w in cfg.warnings() {
        eprintln!("kata-runtime: warning: {w}");
    }
    let text = if a.config {
        // Same sections and keys as configuration.toml (its schema type).
        #[derive(serde::Serialize)]
        struct Effective<'a> {
            config_file: String,
            version: &'static str,
            #[serde(flatten)]
            config: runtime::config::ConfigFile,
            /// Keys and sections of the file that this runtime does not use.
            ignored: &'a [String],
        }
        render(
            &Effective {
                config_file: cfg.file.display().to_string(),
                version: env!("CARGO_PKG_VERSION"),
                config: cfg.to_file(),
                ignored: &cfg.ignored,
            },
            a.json,
        )?
    } else {
        let qemu = qemu_version(&cfg.hypervisor.path)
            .map(|(_, _, line)| line)
            .unwrap_or_else(|e| e);
        render(&runtime::env_info::collect(&cfg, qemu), a.json)?
    };
    println!("{}", text.trim_end());
    Ok(())
}

/// TOML, or JSON with `json`.
fn render<T: serde::Serialize>(value: &T, json: bool) -> Result<String, Failure> {
    if json {
        serde_json::to_string_pretty(value).map_err(|x| Failure::Call(x.to_string()))
    } else {
        toml::to_string(value).map_err(|x| Failure::Call(x.to_string()))
    }
}

/// How long the hybrid vsock handshake to the debug console may take
/// (upstream's value).
const CONSOLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a piped session repeats its end of input (see `exec`).
const EOF_REPEAT: Duration = Duration::from_millis(500);

/// Restores the terminal's settings when dropped (also on errors and panics).
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> nix::Result<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}

/// Where `kata-runtime exec` finds the console of `sandbox_id`: the hybrid
/// vsock socket in the sandbox's state directory, or why not.
fn console_socket(
    state_root: &std::path::Path,
    sandbox_id: &str,
) -> Result<std::path::PathBuf, Failure> {
    protocols::ids::check_id("sandbox id", sandbox_id).map_err(Failure::Usage)?;
    let dir = state_root.join(sandbox_id);
    let sock = dir.join("vsock.sock");
    if !dir.is_dir() {
        return Err(Failure::Call(format!(
            "no sandbox {sandbox_id:?} runs here: no state directory {} (sandboxes of this configuration keep their state under {})",
            dir.display(),
            state_root.display()
        )));
    }
    if !sock.exists() {
        return Err(Failure::Call(format!(
            "sandbox {sandbox_id:?} has no hybrid vsock socket {} and no shim monitor socket: it is not running",
            sock.display()
        )));
    }
    Ok(sock)
}

/// Where the debug console of sandbox `id` is reached, on guest `port`:
/// as upstream, the agent's address from the shim's `/agent-url` with the
/// port replaced (hybrid vsock or AF_VSOCK alike); without a monitor
/// socket, the sandbox's hybrid vsock socket in the state root.
fn console_address(
    state_root: &std::path::Path,
    id: &str,
    port: u32,
) -> Result<AgentAddress, Failure> {
    use runtime::shim::monitor;
    let socket = monitor::socket_path(std::path::Path::new(monitor::SANDBOXES_DIR), id);
    if !socket.exists() {
        return console_socket(state_root, id)
            .map(|uds_path| AgentAddress::HybridVsock { uds_path, port });
    }
    let url = match monitor::get(&socket, "/agent-url") {
        Ok((200, body)) => body.trim_end().to_string(),
        Ok((status, body)) => {
            return Err(Failure::Call(format!(
                "sandbox {id}: the shim answered /agent-url with HTTP {status}: {}",
                body.trim()
            )))
        }
        Err(e) => return Err(Failure::Call(format!("sandbox {id}: {e}"))),
    };
    with_port(&url, port)
        .map_err(|e| Failure::Call(format!("sandbox {id}: agent URL {url:?}: {e}")))
}

/// The agent address `url` on guest port `port` instead of the agent's.
fn with_port(url: &str, port: u32) -> Result<AgentAddress, String> {
    match url.parse::<AgentAddress>().map_err(|e| e.to_string())? {
        AgentAddress::HybridVsock { uds_path, .. } => {
            Ok(AgentAddress::HybridVsock { uds_path, port })
        }
        AgentAddress::Vsock { cid, .. } => Ok(AgentAddress::Vsock { cid, port }),
        AgentAddress::Unix(_) => {
            Err("the agent listens on a unix socket: there is no guest to reach".into())
        }
    }
}

fn exec(a: ExecArgs) -> Result<(), Failure> {
    use std::io::{IsTerminal, Read, Write};
    // a bad id is refused before anything is read or touched
    protocols::ids::check_id("sandbox id", &a.sandbox_id).map_err(Failure::Usage)?;
    let cfg = runtime::config::load().map_err(|e| Failure::Usage(runtime::error_chain(&e)))?;
    let id = &a.sandbox_id;
    let port = if a.kata_debug_port == 0 {
        runtime::config::DEBUG_CONSOLE_VPORT
    } else {
        a.kata_debug_port
    };
    let address = console_address(&cfg.runtime.state_root, id, port)?;
    let via = match &address {
        AgentAddress::HybridVsock { uds_path, .. } => uds_path.display().to_string(),
        other => other.to_string(),
    };
    let conn = match address.connect(CONSOLE_CONNECT_TIMEOUT) {
        Ok(fd) => std::fs::File::from(fd),
        // the guest refused the port: nothing listens there (a refused
        // unix socket, an OS error, means the sandbox's vsock daemon is
        // gone; over AF_VSOCK the guest's refusal is the OS error itself)
        Err(e)
            if (e.kind() == std::io::ErrorKind::ConnectionRefused
                && e.raw_os_error().is_none())
                || (matches!(address, AgentAddress::Vsock { .. })
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    )) =>
        {
            return Err(Failure::Call(
                if port == runtime::config::DEBUG_CONSOLE_VPORT {
                    format!(
                    "the debug console of sandbox {id} is not enabled: set debug_console_enabled = true in [agent.kata] of {} and start a new sandbox",
                    cfg.file.display()
                )
                } else {
                    format!("nothing listens on guest vsock port {port} of sandbox {id} ({e})")
                },
            ))
        }
        Err(e) => {
            return Err(Failure::Call(format!(
                "cannot reach the debug console of sandbox {id} through {via}: {e}"
            )))
        }
    };
    let mut to_guest = conn
        .try_clone()
        .map_err(|e| Failure::Call(format!("cannot duplicate the console connection: {e}")))?;
    let terminal = std::io::stdin().is_terminal();
    let _raw = if terminal {
        Some(
            RawTerminal::enter()
                .map_err(|e| Failure::Call(format!("cannot put the terminal in raw mode: {e}")))?,
        )
    } else {
        None
    };
    // stdin -> guest, in a thread nobody waits for: the session ends when
    // the guest side does
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to_guest.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if !terminal {
            // Ctrl-D: end of input for the guest's terminal, so the shell
            // exits once it has run what it was sent. Sent again while the
            // session lasts: a Ctrl-D that arrives while the shell is still
            // starting (and switching its terminal to line editing) can be
            // taken as a character of the line instead (seen in e2e
            // p-debug-console: the shell ran the line, then waited).
            while to_guest.write_all(b"\x04").is_ok() {
                std::thread::sleep(EOF_REPEAT);
            }
        }
    });
    let mut from_guest = conn;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        match from_guest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // the guest side reset the stream (the shell ended)
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => {
                return Err(Failure::Call(format!(
                    "reading the debug console of sandbox {id}: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_error(r: Result<std::path::PathBuf, Failure>) -> String {
        match r {
            Err(Failure::Call(m)) => m,
            Err(Failure::Usage(m)) => panic!("usage error, expected a call error: {m}"),
            Ok(p) => panic!("found {}", p.display()),
        }
    }

    #[test]
    fn the_console_is_the_agents_address_on_the_debug_port() {
        match with_port("hvsock:///run/kata-containers/s1/vsock.sock:1024", 1026) {
            Ok(AgentAddress::HybridVsock { uds_path, port }) => {
                assert_eq!(
                    uds_path,
                    std::path::Path::new("/run/kata-containers/s1/vsock.sock")
                );
                assert_eq!(port, 1026);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            with_port("vsock://7:1024", 1026),
            Ok(AgentAddress::Vsock { cid: 7, port: 1026 })
        ));
        assert!(with_port("unix:///run/agent.sock", 1026).is_err());
        assert!(with_port("tcp://1.2.3.4:1", 1026).is_err());
    }

    #[test]
    fn console_socket_names_what_it_looked_for() {
        let root = tempfile::tempdir().unwrap();
        let e = call_error(console_socket(root.path(), "nope"));
        assert!(
            e.contains("no sandbox \"nope\"")
                && e.contains(&root.path().join("nope").display().to_string()),
            "{e}"
        );
        std::fs::create_dir(root.path().join("s1")).unwrap();
        let e = call_error(console_socket(root.path(), "s1"));
        assert!(
            e.contains("sandbox \"s1\" has no hybrid vsock socket") && e.contains("s1/vsock.sock"),
            "{e}"
        );
        std::fs::write(root.path().join("s1/vsock.sock"), "").unwrap();
        assert_eq!(
            console_socket(root.path(), "s1").ok(),
            Some(root.path().join("s1/vsock.sock"))
        );
        for bad in ["../s1", "", ".hidden", "a/b"] {
            match console_socket(root.path(), bad) {
                Err(Failure::Usage(m)) => {
                    assert!(m.contains("sandbox id") && m.contains("invalid"), "{m}")
                }
                _ => panic!("{bad:?} accepted"),
            }
        }
    }
}
