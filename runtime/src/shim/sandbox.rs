//! One sandbox: its VM (QEMU + virtiofsd + vsock daemon), the agent
//! connection for control calls, and the shared directory on the host.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::MessageField;
use protocols::agent::{
    ARPNeighbors, AddARPNeighborsRequest, CreateSandboxRequest, ReseedRandomDevRequest, Routes,
    SetGuestDateTimeRequest, Storage, UpdateInterfaceRequest, UpdateRoutesRequest,
};

use super::monitor::{MonitorServer, Monitored, SANDBOXES_DIR};
use super::mounts;
use super::volumes::BlockVolumes;
use crate::agent_client::{wait_for_agent, AgentAddress, AgentClient};
use crate::config::KataConfig;
use crate::hypervisor::cid::CidLease;
use crate::hypervisor::template::TemplateUse;
use crate::hypervisor::{Vm, DEFAULT_SHARED_FS_TAG};
use crate::network::{GuestNetwork, PodNetwork};
use crate::oci::GUEST_SHARED_DIR;

/// The directory below the state root that holds every sandbox's shared
/// directory; no sandbox may take it as its id.
pub const SHARED_DIR_NAME: &str = "shared";
/// In `state_root/shared/`: the vsock guest CID leases ([`CidLease`]).
pub const CID_DIR_NAME: &str = "vsock-cids";

pub struct Sandbox {
    pub id: String,
    /// The runtime's state root (`[runtime] state_root`): everything the
    /// sandbox creates on the host is below it.
    pub state_root: PathBuf,
    /// The host directory shared with the guest (virtiofsd's source):
    /// `state_root/shared/sandboxes/<id>`.
    pub shared_dir: PathBuf,
    pub agent: AgentClient,
    pub address: AgentAddress,
    pub call_timeout: Duration,
    /// QEMU's pid (reported as the task pid, as upstream's shim does).
    pub vm_pid: u32,
    /// Shared with [`BlockVolumes`], which plugs devices over QMP.
    pub vm: Arc<Mutex<Option<Vm>>>,
    /// Direct-assigned block volumes plugged for the containers.
    pub volumes: Arc<BlockVolumes>,
    /// The VM's vsock guest CID, held until the VM is stopped.
    cid: Mutex<Option<CidLease>>,
    /// The taps and filters wiring the pod's network namespace to the
    /// guest (`tcfilter`), undone after the VM stops.
    network: Mutex<Option<PodNetwork>>,
    /// The HTTP monitor socket (`/run/vc/sbs/<id>/shim-monitor.sock`),
    /// served while the VM runs.
    monitor: Mutex<Option<MonitorServer>>,
    /// Containers the agent reported OOM-killed (the shim publishes each
    /// such exit after its OOM event).
    pub oom_kills: OomKills,
}

/// The containers of a sandbox that the OOM killer hit, as the agent's
/// GetOOMEvent reported them, for the exit waiters to wait on.
#[derive(Default)]
pub struct OomKills {
    seen: Mutex<std::collections::HashSet<String>>,
    changed: std::sync::Condvar,
}

impl OomKills {
    pub fn record(&self, container_id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(container_id.to_string());
        self.changed.notify_all();
    }

    /// Whether `container_id` had an OOM kill, waiting up to `grace` for
    /// the report; the record is taken.
    pub fn wait_for(&self, container_id: &str, grace: Duration) -> bool {
        let deadline = std::time::Instant::now() + grace;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if seen.remove(container_id) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = self
                .changed
                .wait_timeout(seen, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Sandbox {
    /// Start the VM of sandbox `id` and create the sandbox in the agent.
    /// `netns`: the pod's network namespace (the sandbox container's OCI
    /// network namespace path), wired to the guest with `tcfilter`.
    pub fn start(
        cfg: &KataConfig,
        id: &str,
        hostname: &str,
        netns: Option<&Path>,
    ) -> anyhow::Result<Sandbox> {
        protocols::ids::check_id("sandbox id", id).map_err(anyhow::Error::msg)?;
        if id == SHARED_DIR_NAME {
            // The VM's state directory is `state_root/<id>`, beside the
            // `shared/` tree every sandbox uses.
            anyhow::bail!("sandbox id {id:?} is reserved: it names the state root's shared directory; use another id");
        }
        // First, as it is the likeliest to be refused (an interface kind
        // tcfilter cannot handle) and undoes itself on error.
        let network = match netns {
            Some(netns) if cfg.wires_pod_network() => Some(
                PodNetwork::setup(netns)
                    .map_err(|e| anyhow::anyhow!("sandbox {id}: network: {e}"))?,
            ),
            _ => None,
        };
        let root = &cfg.runtime.state_root;
        let rel = mounts::shared_rel(id, None);
        let shared_dir = mounts::shared_dir(root, id);
        if shared_dir.symlink_metadata().is_ok() {
            // A previous shim of the same id died: its mounts must not leak
            // into this sandbox.
            let problems = mounts::unmount_and_remove(root, &rel);
            if !problems.is_empty() {
                anyhow::bail!("stale {}: {}", shared_dir.display(), problems.join("; "));
            }
        }
        crate::state_fs::create_below(root, &rel, 0o755)
            .map_err(|e| anyhow::anyhow!("create the shared directory: {e}"))?;
        // virtiofsd serves this dir from a mount namespace of its own, copied
        // when it starts; container rootfs are mounted here later. Only a
        // shared mount propagates those into its copy (the host's /run may
        // be private, as it is inside containers), so make it one.
        if let Err(e) = mounts::make_shared_mountpoint(&shared_dir) {
            let _ = crate::state_fs::remove_below(root, &rel);
            return Err(e);
        }
        let result = Self::start_vm(cfg, id, hostname, &shared_dir, network);
        if result.is_err() {
            let _ = mounts::unmount_and_remove(root, &rel);
        }
        result
    }

    fn start_vm(
        cfg: &KataConfig,
        id: &str,
        hostname: &str,
        shared_dir: &Path,
        mut network: Option<PodNetwork>,
    ) -> anyhow::Result<Sandbox> {
        let mut qemu = cfg.qemu_config(id, shared_dir);
        if let Some(net) = network.as_mut() {
            // QEMU inherits the taps; the shim's copies close with `qemu`.
            qemu.net_devices = std::mem::take(&mut net.nics);
        }
        let cid = CidLease::acquire(
            &cfg.runtime
                .state_root
                .join(SHARED_DIR_NAME)
                .join(CID_DIR_NAME),
        )
        .map_err(|e| anyhow::anyhow!("sandbox {id}: vsock guest CID: {e}"))?;
        qemu.guest_cid = cid.cid();
        log::info!(
            "sandbox {id}: starting VM (kernel {}, {:?}, {} MiB, {} vCPU, shared dir {})",
            qemu.kernel.display(),
            qemu.boot,
            qemu.memory_mib,
            qemu.vcpus,
            shared_dir.display()
        );
        if cfg.factory.enable_template {
            qemu.template = Some(TemplateUse::Clone(cfg.factory.template_path.clone()));
        }
        let started = match Vm::start(qemu.clone()) {
            // With templating on, a sandbox still starts when the template
            // cannot serve (none made yet, made for another kernel, damaged):
            // it boots, and the log says why.
            Err(e) if qemu.template.is_some() => {
                log::warn!(
                    "sandbox {id}: [factory] enable_template is on, but the template cannot be used: {}; booting the VM instead",
                    crate::error_chain(&e)
                );
                qemu.template = None;
                Vm::start(qemu)
            }
            other => other,
        };
        let mut vm =
            started.map_err(|e| anyhow::anyhow!("sandbox {id}: VM: {}", crate::error_chain(&e)))?;
        log::debug!("sandbox {id}: QEMU command line: {:?}", vm.command_line());
        let call_timeout = cfg.request_timeout();
        let (agent, boot_time) = wait_for_agent(&mut vm, cfg.dial_timeout(), call_timeout)
            .map_err(|e| {
                anyhow::anyhow!(
                    "sandbox {id}: agent did not come up: {}",
                    crate::error_chain(&e)
                )
            })?;
        log::info!(
            "sandbox {id}: agent serving {:?} after QEMU start (accel {}, {})",
            boot_time,
            vm.accel().qemu_name(),
            match vm.cloned_from() {
                Some(t) => format!("cloned from the template in {}", t.display()),
                None => "booted".into(),
            }
        );
        let cloned = vm.cloned_from().is_some();
        if cloned {
            give_clone_its_identity(&agent).map_err(|e| anyhow::anyhow!("sandbox {id}: {e:#}"))?;
        }
        if let Some(net) = &network {
            configure_guest_network(&agent, &net.guest, cloned)
                .map_err(|e| anyhow::anyhow!("sandbox {id}: guest network: {e:#}"))?;
        }
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.to_string();
        req.hostname = hostname.to_string();
        req.kernel_modules = cfg.kernel_modules();
        let mut storage = Storage::new();
        storage.driver = "virtio-fs".into();
        storage.source = DEFAULT_SHARED_FS_TAG.into();
        storage.fstype = "virtiofs".into();
        storage.mount_point = GUEST_SHARED_DIR.into();
        req.storages.push(storage);
        agent.create_sandbox(&req).map_err(|e| {
            anyhow::anyhow!("sandbox {id}: CreateSandbox: {}", crate::error_chain(&e))
        })?;
        let address = agent.address().clone();
        let vm = Arc::new(Mutex::new(Some(vm)));
        let volumes = Arc::new(BlockVolumes::new(
            id,
            Path::new(crate::direct_volume::ROOT),
            vm.clone(),
            address.clone(),
        ));
        let (hypervisor, virtiofsd, vsock_daemon) = {
            let vm = vm.lock().unwrap_or_else(|e| e.into_inner());
            let vm = vm.as_ref().expect("just started");
            (vm.pid(), vm.virtiofsd_pid(), vm.vsock_daemon_pid())
        };
        // As upstream's shim: a monitor that cannot start is logged, and the
        // sandbox runs without it.
        let monitored = Monitored {
            agent_url: address.to_string(),
            agent: Some(address.clone()),
            hypervisor,
            virtiofsd,
            vsock_daemon,
            volumes: Some(volumes.clone()),
        };
        let monitor = match MonitorServer::start(Path::new(SANDBOXES_DIR), id, monitored) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!("sandbox {id}: no monitor socket: {e}");
                None
            }
        };
        Ok(Sandbox {
            id: id.to_string(),
            state_root: cfg.runtime.state_root.clone(),
            shared_dir: shared_dir.to_owned(),
            address,
            call_timeout,
            vm_pid: hypervisor.unwrap_or(0),
            agent,
            vm,
            volumes,
            cid: Mutex::new(Some(cid)),
            network: Mutex::new(network),
            monitor: Mutex::new(monitor),
            oom_kills: OomKills::default(),
        })
    }

    /// Whether the containers run in the guest's own network namespace,
    /// where the pod's interfaces are (`tcfilter` with a pod namespace),
    /// rather than in a new, empty one each.
    pub fn shares_guest_netns(&self) -> bool {
        self.network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|n| !n.guest.interfaces.is_empty())
    }

    /// Whether the VM was shut down on purpose (`stop_vm` took it).
    pub fn was_shut_down(&self) -> bool {
        self.vm.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Whether the VM still runs; `Err` carries why it does not.
    pub fn check_alive(&self) -> Result<(), String> {
        let mut vm = self.vm.lock().unwrap_or_else(|e| e.into_inner());
        match vm.as_mut() {
            None => Err("the VM was shut down".into()),
            Some(v) => v.check_alive().map_err(|e| crate::error_chain(&e)),
        }
    }

    /// Stop the VM and its daemons (idempotent). `graceful`: ask the agent
    /// to destroy the sandbox first.
    pub fn stop_vm(&self, graceful: bool) -> Vec<String> {
        let mut problems = Vec::new();
        // Nothing left to report on once the VM goes.
        drop(
            self.monitor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if graceful {
            if let Err(e) = self.agent.destroy_sandbox() {
                log::warn!("sandbox {}: DestroySandbox: {e}", self.id);
            }
        }
        let vm = self.vm.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.volumes.forget_all();
        if let Some(vm) = vm {
            if let Err(e) = vm.shutdown() {
                problems.push(crate::error_chain(&e));
            }
        }
        // QEMU is gone: its CID is free, its taps' fds are closed.
        drop(self.cid.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(mut net) = self
            .network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            problems.extend(net.teardown());
        }
        problems
    }

    /// Everything on the host: the VM, then mounts and the shared directory.
    pub fn destroy(&self, graceful: bool) -> Vec<String> {
        let mut problems = self.stop_vm(graceful);
        problems.extend(mounts::unmount_and_remove(
            &self.state_root,
            &mounts::shared_rel(&self.id, None),
        ));
        // The parent `shared/sandboxes` stays only while other sandboxes use it.
        if let Some(parent) = self.shared_dir.parent() {
            let _ = std::fs::remove_dir(parent);
            if let Some(p) = parent.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
        problems
    }
}

/// What a clone of a template shares with its siblings until told
/// otherwise: the template's clock (saved when the template was) and its
/// random generator's state. The host's time and 512 fresh random bytes
/// replace them, before anything runs in the guest.
fn give_clone_its_identity(agent: &AgentClient) -> anyhow::Result<()> {
    use std::io::Read;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut time = SetGuestDateTimeRequest::new();
    time.Sec = now.as_secs() as i64;
    time.Usec = i64::from(now.subsec_micros());
    agent
        .set_guest_date_time(&time)
        .map_err(|e| anyhow::anyhow!("setting the clone's clock: {}", crate::error_chain(&e)))?;
    let mut seed = ReseedRandomDevRequest::new();
    seed.data = vec![0; 512];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed.data))
        .map_err(|e| anyhow::anyhow!("reading a seed for the clone from /dev/urandom: {e}"))?;
    agent.reseed_random_dev(&seed).map_err(|e| {
        anyhow::anyhow!(
            "reseeding the clone's random generator: {}",
            crate::error_chain(&e)
        )
    })?;
    Ok(())
}

/// How long a clone's hot-plugged NIC may take to show up in the guest.
const HOTPLUGGED_NIC_WAIT: Duration = Duration::from_secs(10);

/// The pod's interfaces, then routes (they name the interfaces), then
/// static neighbours, as upstream's runtime sends them. `hotplugged`: the
/// NICs were just hot-plugged (a clone), so the guest may not list them
/// yet, and a missing MAC is retried for a while.
fn configure_guest_network(
    agent: &AgentClient,
    guest: &GuestNetwork,
    hotplugged: bool,
) -> anyhow::Result<()> {
    if guest.interfaces.is_empty() {
        return Ok(());
    }
    for interface in &guest.interfaces {
        let mut req = UpdateInterfaceRequest::new();
        req.interface = MessageField::some(interface.clone());
        let deadline = std::time::Instant::now() + HOTPLUGGED_NIC_WAIT;
        let got = loop {
            match agent.update_interface(&req) {
                Ok(got) => break got,
                Err(e) => {
                    let message = crate::error_chain(&e);
                    if hotplugged
                        && message.contains("no guest interface has MAC")
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    anyhow::bail!("{message}");
                }
            }
        };
        log::info!(
            "guest interface {} ({}): {:?}",
            got.name,
            got.hwAddr,
            got.IPAddresses
                .iter()
                .map(|a| format!("{}/{}", a.address, a.mask))
                .collect::<Vec<_>>()
        );
    }
    let mut routes = Routes::new();
    routes.Routes = guest.routes.clone();
    let mut req = UpdateRoutesRequest::new();
    req.routes = MessageField::some(routes);
    agent
        .update_routes(&req)
        .map_err(|e| anyhow::anyhow!("{}", crate::error_chain(&e)))?;
    if !guest.neighbours.is_empty() {
        let mut neighbours = ARPNeighbors::new();
        neighbours.ARPNeighbors = guest.neighbours.clone();
        let mut req = AddARPNeighborsRequest::new();
        req.neighbors = MessageField::some(neighbours);
        agent
            .add_arp_neighbors(&req)
            .map_err(|e| anyhow::anyhow!("{}", crate::error_chain(&e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_report_is_waited_for_within_the_grace_and_taken_once() {
        let kills = Arc::new(OomKills::default());
        let t = std::time::Instant::now();
        assert!(!kills.wait_for("c1", Duration::from_millis(50)));
        assert!(t.elapsed() >= Duration::from_millis(50));
        kills.record("c1");
        assert!(kills.wait_for("c1", Duration::ZERO));
        assert!(!kills.wait_for("c1", Duration::ZERO), "the record is taken");
        // A report arriving during the wait ends it.
        let reporter = kills.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            reporter.record("c2");
        });
        let t = std::time::Instant::now();
        assert!(kills.wait_for("c2", Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(4));
        late.join().unwrap();
    }
}
