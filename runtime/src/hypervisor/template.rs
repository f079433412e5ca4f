//! VM templating (upstream's `[factory] enable_template`): boot one guest,
//! save it, and start each later sandbox from that saved state instead of
//! booting a kernel.
//!
//! A template directory (a private tmpfs that `kata-runtime factory init`
//! mounts) holds:
//! - [`MEMORY_FILE`]: the template guest's RAM, the file QEMU ran it from
//!   (`memory-backend-file,share=on`);
//! - [`STATE_FILE`]: the device state, saved by QMP `migrate` with the
//!   shared RAM left out (`x-ignore-shared`), so it is a few hundred KiB;
//! - [`META_FILE`]: what the template was made from, written last: a
//!   template exists exactly when it does.
//!
//! The template VM has none of the devices a sandbox gets at start (the
//! agent's vsock, the virtio-fs share, NICs): the agent channel and the
//! shared filesystem are vhost-user devices here, and QEMU cannot migrate
//! those. A clone restores the state, then the runtime hot-plugs them into
//! the PCI bridge. The guest's agent listens on its vsock port from the
//! template's boot on: a vsock listener needs no transport until a
//! connection arrives.
//!
//! Each clone runs on its own sparse copy of the memory file (a memfd the
//! runtime fills and QEMU opens as `/proc/self/fd/N`, so it goes with the
//! last process using it), still mapped shared: the vhost-user back-ends (vhost-device-vsock, virtiofsd) map the
//! guest's RAM from that file, and a copy-on-write mapping (`share=off`,
//! which upstream's factory uses) would hide every page the clone writes
//! from them. So on this host templating saves boot time, not memory; see
//! the README's templating section for the figures.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::accel::Accel;
use super::error::VmError;
use super::qemu::{build_qemu_args, BootMedia, LaunchPlan, QemuConfig, Vm, VsockBackend};

/// The template guest's RAM.
pub const MEMORY_FILE: &str = "memory";
/// The device state, QEMU's migration stream without the shared RAM.
pub const STATE_FILE: &str = "state";
/// What the template was made from ([`TemplateMeta`]), written last.
pub const META_FILE: &str = "template.json";
/// The format of [`META_FILE`]; another value is refused.
const META_FORMAT: u32 = 1;
/// What the agent prints once its API listens (see `agent/src/main.rs`):
/// the template is saved only after it, so every clone's agent listens.
pub const AGENT_READY_MARKER: &str = "agent API ready on";
/// The name of a clone's memory memfd (`/memfd:NAME` in its QEMU's maps).
pub const CLONE_MEMFD_NAME: &std::ffi::CStr = c"kata-clone-memory";
/// Upstream's default `[factory] template_path`.
pub const DEFAULT_TEMPLATE_PATH: &str = "/run/vc/vm/template";

/// How a VM relates to a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateUse {
    /// Boot the template guest of the directory: RAM in its
    /// [`MEMORY_FILE`], no hot-pluggable device.
    Create(PathBuf),
    /// Start from the template in the directory.
    Clone(PathBuf),
}

impl TemplateUse {
    pub fn dir(&self) -> &Path {
        match self {
            TemplateUse::Create(d) | TemplateUse::Clone(d) => d,
        }
    }
}

/// A file the template depends on, as it was when the template was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Result<FileIdentity, VmError> {
        let m = std::fs::metadata(path)
            .map_err(|e| VmError::io(format!("cannot stat {}", path.display()), e))?;
        Ok(FileIdentity {
            path: path.to_owned(),
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            inode: m.ino(),
        })
    }
}

/// [`META_FILE`]: enough to tell whether a sandbox's VM would be the same
/// machine as the template's (a restore into another machine fails, or
/// worse, runs a guest whose kernel is not the configured one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub format: u32,
    /// The QEMU arguments of the machine, with the per-VM paths fixed.
    pub machine: Vec<String>,
    /// QEMU, the kernel, the initrd or image, the firmware.
    pub files: Vec<FileIdentity>,
    pub memory_mib: u32,
    /// When the template was saved (seconds since the epoch).
    pub created_unix: u64,
    /// How long the template guest took from QEMU's start to its agent
    /// listening, and the save.
    pub boot_ms: u64,
    pub save_ms: u64,
    /// The size of the saved device state.
    pub state_bytes: u64,
}

/// The machine description of `cfg` under `accel`: what a template made
/// from `cfg` records and what a clone must match.
pub fn machine_of(
    cfg: &QemuConfig,
    accel: Accel,
) -> Result<(Vec<String>, Vec<FileIdentity>), VmError> {
    let fixed_dir = Path::new("/template");
    let mut canonical = cfg.clone();
    canonical.id = "template".into();
    canonical.state_root = PathBuf::from("/");
    canonical.console_log = None;
    canonical.template = Some(TemplateUse::Create(fixed_dir.to_owned()));
    canonical.net_devices.clear();
    canonical.shared_fs = None;
    let image_size = match &cfg.boot {
        BootMedia::Image { path, .. } => Some(FileIdentity::of(path)?.size),
        BootMedia::Initrd(_) => None,
    };
    let plan = LaunchPlan::new(fixed_dir, accel, VsockBackend::None, None, image_size);
    let machine = build_qemu_args(&canonical, &plan)?;
    let mut files = vec![FileIdentity::of(&resolve_binary(&cfg.qemu_binary))?];
    files.push(FileIdentity::of(&cfg.kernel)?);
    files.push(FileIdentity::of(match &cfg.boot {
        BootMedia::Initrd(p) | BootMedia::Image { path: p, .. } => p,
    })?);
    if let Some(firmware) = &cfg.firmware {
        files.push(FileIdentity::of(firmware)?);
    }
    Ok((machine, files))
}

/// A bare program name, looked up in `$PATH` (QEMU's identity is its file).
fn resolve_binary(binary: &Path) -> PathBuf {
    if binary.components().count() > 1 {
        return binary.to_owned();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
        .unwrap_or_else(|| binary.to_owned())
}

/// The template in `dir`, checked to be whole and made from the machine
/// `cfg` describes. Each error says what is wrong and the fix.
pub fn check(dir: &Path, cfg: &QemuConfig, accel: Accel) -> Result<TemplateMeta, VmError> {
    let meta = read_meta(dir)?;
    let (machine, files) = machine_of(cfg, accel)?;
    let remake = "run `kata-runtime factory destroy` then `kata-runtime factory init`";
    if let Some(i) =
        (0..meta.machine.len().max(machine.len())).find(|&i| meta.machine.get(i) != machine.get(i))
    {
        return Err(VmError::config(
            "template",
            format!(
                "the template in {} was made for another VM: its QEMU argument {:?} is {:?} in this configuration; {remake}",
                dir.display(),
                meta.machine.get(i).map(String::as_str).unwrap_or("(none)"),
                machine.get(i).map(String::as_str).unwrap_or("(none)"),
            ),
        ));
    }
    if let Some((then, now)) = meta.files.iter().zip(&files).find(|(a, b)| a != b) {
        return Err(VmError::config(
            "template",
            format!(
                "the template in {} was made from another {} (then {} bytes, inode {}; now {} bytes, inode {}, or a newer mtime); {remake}",
                dir.display(),
                now.path.display(),
                then.size,
                then.inode,
                now.size,
                now.inode,
            ),
        ));
    }
    // The files were whole when template.json was written last.
    for (name, what, want) in [
        (MEMORY_FILE, "memory", u64::from(meta.memory_mib) << 20),
        (STATE_FILE, "state", meta.state_bytes),
    ] {
        let path = dir.join(name);
        let size = std::fs::metadata(&path)
            .map_err(|e| {
                VmError::io(
                    format!("template {what} {} is missing; {remake}", path.display()),
                    e,
                )
            })?
            .len();
        if size != want {
            return Err(VmError::config(
                "template",
                format!(
                    "template {what} {} is {size} bytes, not the {want} recorded: the template is damaged; {remake}",
                    path.display()
                ),
            ));
        }
    }
    Ok(meta)
}

/// [`META_FILE`] of `dir`: missing and unreadable are told apart.
pub fn read_meta(dir: &Path) -> Result<TemplateMeta, VmError> {
    let path = dir.join(META_FILE);
    let text = std::fs::read(&path).map_err(|e| {
        VmError::io(
            format!(
                "no VM template at {} (create one with `kata-runtime factory init`)",
                dir.display()
            ),
            e,
        )
    })?;
    let meta: TemplateMeta = serde_json::from_slice(&text).map_err(|e| {
        VmError::config(
            "template",
            format!(
                "{} is damaged ({e}); run `kata-runtime factory destroy` then `kata-runtime factory init`",
                path.display()
            ),
        )
    })?;
    if meta.format != META_FORMAT {
        return Err(VmError::config(
            "template",
            format!(
                "{} has format {}, this runtime reads {META_FORMAT}; run `kata-runtime factory destroy` then `kata-runtime factory init`",
                path.display(),
                meta.format
            ),
        ));
    }
    Ok(meta)
}

/// Copy `src` into the empty file `to`, only its data: holes stay holes
/// (SEEK_DATA/SEEK_HOLE), so a guest RAM file that is mostly untouched
/// costs only what the guest touched. Returns the bytes of data copied.
pub fn copy_sparse(src: &Path, to: &File) -> std::io::Result<u64> {
    use nix::unistd::{lseek, Whence};
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut copied = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset: i64 = 0;
    let end = len as i64;
    while offset < end {
        let data = match lseek(from.as_raw_fd(), offset, Whence::SeekData) {
            Ok(o) => o,
            // No data after `offset`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(from.as_raw_fd(), data, Whence::SeekHole).map_err(std::io::Error::from)?;
        let mut pos = data as u64;
        while pos < hole as u64 {
            let want = buf.len().min((hole as u64 - pos) as usize);
            let n = from.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being copied", src.display()),
                ));
            }
            to.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
            copied += n as u64;
        }
        offset = hole;
    }
    Ok(copied)
}

/// Boot the template guest of `cfg` in `dir`, wait until its agent listens
/// (at most `ready_timeout`), save it, and stop it. `dir` must exist and
/// hold no template. On error nothing of the template is left in `dir`.
pub fn create(
    cfg: &QemuConfig,
    dir: &Path,
    ready_timeout: Duration,
) -> Result<TemplateMeta, VmError> {
    if dir.join(META_FILE).exists() {
        return Err(VmError::config(
            "template",
            format!(
                "a template already exists in {}; run `kata-runtime factory destroy` first",
                dir.display()
            ),
        ));
    }
    let result = create_files(cfg, dir, ready_timeout);
    if result.is_err() {
        for name in [META_FILE, STATE_FILE, MEMORY_FILE] {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    result
}

fn create_files(
    cfg: &QemuConfig,
    dir: &Path,
    ready_timeout: Duration,
) -> Result<TemplateMeta, VmError> {
    let mut cfg = cfg.clone();
    cfg.template = Some(TemplateUse::Create(dir.to_owned()));
    cfg.shared_fs = None;
    cfg.net_devices.clear();
    let mut vm = Vm::start(cfg.clone())?;
    let accel = vm.accel();
    let deadline = vm.started_at() + ready_timeout;
    loop {
        vm.check_alive()?;
        if vm.console_output().contains(AGENT_READY_MARKER) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(vm.timeout_error("the template guest's agent to listen", ready_timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let boot_ms = vm.started_at().elapsed().as_millis() as u64;
    let saving = Instant::now();
    vm.save_state(ready_timeout)?;
    let save_ms = saving.elapsed().as_millis() as u64;
    vm.shutdown()?;
    let (machine, files) = machine_of(&cfg, accel)?;
    let state_bytes = std::fs::metadata(dir.join(STATE_FILE))
        .map_err(|e| VmError::io("cannot stat the saved state", e))?
        .len();
    let meta = TemplateMeta {
        format: META_FORMAT,
        machine,
        files,
        memory_mib: cfg.memory_mib,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        boot_ms,
        save_ms,
        state_bytes,
    };
    let text = serde_json::to_vec_pretty(&meta).expect("plain data serialises");
    host_support::fs::write_atomic(&dir.join(META_FILE), &text).map_err(|e| {
        VmError::io(
            format!("cannot write {}", dir.join(META_FILE).display()),
            std::io::Error::other(format!("{e:#}")),
        )
    })?;
    Ok(meta)
}

/// One step of plugging a clone's devices over QMP.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plug {
    /// A QMP command and its arguments.
    Execute(&'static str, serde_json::Value),
    /// `getfd`: hand QEMU this descriptor under the name.
    PassFd(String, std::os::fd::RawFd),
}

/// What a clone gets after its state is loaded, in the bridge slots taken
/// from `slots`: the agent's vsock, the shared filesystem, the NICs. The
/// devices and ids are the ones a cold boot puts on its command line.
pub(crate) fn clone_plugs(
    cfg: &QemuConfig,
    plan: &LaunchPlan,
    slots: &mut super::hotplug::BridgeSlots,
) -> Result<Vec<Plug>, VmError> {
    use super::hotplug::BRIDGE_ID;
    let mut plugs = Vec::new();
    let mut slot = || {
        slots.take().map(|s| format!("{s:#x}")).ok_or_else(|| {
            VmError::config(
                "template",
                "no free slot on the hotplug bridge for the clone's devices",
            )
        })
    };
    match plan.vsock {
        VsockBackend::HybridVsock => {
            plugs.push(Plug::Execute(
                "chardev-add",
                unix_chardev("vsock0", &plan.vhost_vsock_socket),
            ));
            plugs.push(Plug::Execute(
                "device_add",
                json!({"driver": "vhost-user-vsock-pci", "id": "vsockdev0", "chardev": "vsock0",
                       "bus": BRIDGE_ID, "addr": slot()?}),
            ));
        }
        VsockBackend::Vhost => plugs.push(Plug::Execute(
            "device_add",
            json!({"driver": "vhost-vsock-pci", "id": "vsock0", "guest-cid": cfg.guest_cid,
                   "bus": BRIDGE_ID, "addr": slot()?}),
        )),
        VsockBackend::None | VsockBackend::Auto => {}
    }
    if let Some(shared) = &cfg.shared_fs {
        plugs.push(Plug::Execute(
            "chardev-add",
            unix_chardev("virtiofs0", &plan.virtiofsd_socket),
        ));
        plugs.push(Plug::Execute(
            "device_add",
            json!({"driver": "vhost-user-fs-pci", "id": "virtiofsdev0", "chardev": "virtiofs0",
                   "tag": shared.tag, "bus": BRIDGE_ID, "addr": slot()?}),
        ));
    }
    for (i, nic) in cfg.net_devices.iter().enumerate() {
        plugs.push(Plug::PassFd(format!("tap{i}"), nic.tap.as_raw_fd()));
        plugs.push(Plug::Execute(
            "netdev_add",
            json!({"type": "tap", "id": format!("net{i}"), "fd": format!("tap{i}")}),
        ));
        plugs.push(Plug::Execute(
            "device_add",
            json!({"driver": "virtio-net-pci", "id": format!("nic{i}"), "netdev": format!("net{i}"),
                   "mac": nic.mac, "romfile": "", "bus": BRIDGE_ID, "addr": slot()?}),
        ));
    }
    Ok(plugs)
}

/// The QMP arguments that add a chardev connecting to a vhost-user
/// back-end's socket.
fn unix_chardev(id: &str, path: &Path) -> serde_json::Value {
    json!({
        "id": id,
        "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": path.to_string_lossy()}},
            "server": false
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"end of the guest").unwrap();
        f.sync_all().unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        let copied = copy_sparse(&src, &File::create(&dst).unwrap()).unwrap();
        assert!(copied >= 8192 + 16, "{copied}");
        assert!(
            copied < 1 << 20,
            "holes were copied as data: {copied} bytes"
        );
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let blocks = std::fs::metadata(&dst).unwrap().blocks();
        assert!(
            blocks * 512 < 4 << 20,
            "copy is not sparse: {} blocks",
            blocks
        );
    }

    fn config(dir: &Path) -> QemuConfig {
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd");
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&initrd, b"initrd").unwrap();
        let mut cfg = QemuConfig::new("sb", kernel, BootMedia::Initrd(initrd));
        cfg.qemu_binary = dir.join("qemu");
        std::fs::write(&cfg.qemu_binary, b"qemu").unwrap();
        cfg
    }

    fn write_template(dir: &Path, cfg: &QemuConfig) -> TemplateMeta {
        let (machine, files) = machine_of(cfg, Accel::Tcg).unwrap();
        let meta = TemplateMeta {
            format: META_FORMAT,
            machine,
            files,
            memory_mib: cfg.memory_mib,
            created_unix: 1,
            boot_ms: 1,
            save_ms: 1,
            state_bytes: 3,
        };
        std::fs::write(dir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        File::create(dir.join(MEMORY_FILE))
            .unwrap()
            .set_len(u64::from(cfg.memory_mib) << 20)
            .unwrap();
        std::fs::write(dir.join(STATE_FILE), b"abc").unwrap();
        meta
    }

    #[test]
    fn a_template_matches_only_the_machine_it_was_made_from() {
        let files = tempfile::tempdir().unwrap();
        let tdir = tempfile::tempdir().unwrap();
        let cfg = config(files.path());
        let err = check(tdir.path(), &cfg, Accel::Tcg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no VM template at") && err.contains("factory init"),
            "{err}"
        );

        let meta = write_template(tdir.path(), &cfg);
        assert_eq!(check(tdir.path(), &cfg, Accel::Tcg).unwrap(), meta);
        // Another sandbox id and state root are the same machine.
        let mut other = cfg.clone();
        other.id = "another".into();
        other.state_root = PathBuf::from("/elsewhere");
        assert!(check(tdir.path(), &other, Accel::Tcg).is_ok());

        let mut bigger = cfg.clone();
        bigger.memory_mib = 1024;
        let err = check(tdir.path(), &bigger, Accel::Tcg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("made for another VM") && err.contains("1024M"),
            "{err}"
        );
        let mut params = cfg.clone();
        params.kernel_params.push("agent.log=debug".into());
        assert!(check(tdir.path(), &params, Accel::Tcg).is_err());
        assert!(check(tdir.path(), &cfg, Accel::Kvm).is_err());

        // A rebuilt kernel at the same path is another kernel.
        std::fs::write(&cfg.kernel, b"kernel, rebuilt").unwrap();
        let err = check(tdir.path(), &cfg, Accel::Tcg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("made from another") && err.contains("vmlinux"),
            "{err}"
        );
    }

    #[test]
    fn damaged_templates_are_named() {
        let files = tempfile::tempdir().unwrap();
        let tdir = tempfile::tempdir().unwrap();
        let cfg = config(files.path());
        write_template(tdir.path(), &cfg);
        std::fs::write(tdir.path().join(STATE_FILE), b"ab").unwrap();
        let err = check(tdir.path(), &cfg, Accel::Tcg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("state") && err.contains("damaged"), "{err}");
        std::fs::remove_file(tdir.path().join(MEMORY_FILE)).unwrap();
        let err = crate::error_chain(&check(tdir.path(), &cfg, Accel::Tcg).unwrap_err());
        assert!(
            err.contains("template memory") && err.contains("missing"),
            "{err}"
        );
        std::fs::write(tdir.path().join(META_FILE), b"{\"format\": 1").unwrap();
        let err = check(tdir.path(), &cfg, Accel::Tcg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("template.json is damaged"), "{err}");
    }

    #[test]
    fn a_clone_gets_the_cold_boot_devices_hot_plugged_into_bridge_slots() {
        use super::super::hotplug::BridgeSlots;
        use super::super::virtiofs::SharedFs;
        let files = tempfile::tempdir().unwrap();
        let mut cfg = config(files.path());
        cfg.shared_fs = Some(SharedFs {
            daemon: "/usr/lib/qemu/virtiofsd".into(),
            source: "/shared".into(),
            tag: "kataShared".into(),
            cache: Default::default(),
            extra_args: Vec::new(),
        });
        let tap = std::sync::Arc::new(std::os::fd::OwnedFd::from(File::open("/dev/null").unwrap()));
        cfg.net_devices.push(super::super::qemu::NetDevice {
            tap: tap.clone(),
            mac: "02:00:00:00:00:07".into(),
        });
        let plan = LaunchPlan::new(
            Path::new("/run/k/sb"),
            Accel::Tcg,
            VsockBackend::HybridVsock,
            None,
            None,
        );
        let mut slots = BridgeSlots::default();
        let plugs = clone_plugs(&cfg, &plan, &mut slots).unwrap();
        let fd = tap.as_raw_fd();
        assert_eq!(
            plugs,
            [
                Plug::Execute(
                    "chardev-add",
                    unix_chardev("vsock0", Path::new("/run/k/sb/vhost-vsock.sock"))
                ),
                Plug::Execute(
                    "device_add",
                    json!({"driver": "vhost-user-vsock-pci", "id": "vsockdev0",
                    "chardev": "vsock0", "bus": "pci-bridge-0", "addr": "0x1"})
                ),
                Plug::Execute(
                    "chardev-add",
                    unix_chardev("virtiofs0", Path::new("/run/k/sb/virtiofsd.sock"))
                ),
                Plug::Execute(
                    "device_add",
                    json!({"driver": "vhost-user-fs-pci", "id": "virtiofsdev0",
                    "chardev": "virtiofs0", "tag": "kataShared", "bus": "pci-bridge-0", "addr": "0x2"})
                ),
                Plug::PassFd("tap0".into(), fd),
                Plug::Execute(
                    "netdev_add",
                    json!({"type": "tap", "id": "net0", "fd": "tap0"})
                ),
                Plug::Execute(
                    "device_add",
                    json!({"driver": "virtio-net-pci", "id": "nic0", "netdev": "net0",
                    "mac": "02:00:00:00:00:07", "romfile": "", "bus": "pci-bridge-0", "addr": "0x3"})
                ),
            ]
        );
        // Block volumes hot-plugged later take the next slot.
        assert_eq!(slots.take(), Some(4));
        assert_eq!(
            unix_chardev("c", Path::new("/s")),
            json!({"id": "c", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": "/s"}}, "server": false}}})
        );
    }

    #[test]
    fn create_refuses_an_existing_template() {
        let files = tempfile::tempdir().unwrap();
        let tdir = tempfile::tempdir().unwrap();
        let cfg = config(files.path());
        write_template(tdir.path(), &cfg);
        let err = create(&cfg, tdir.path(), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already exists") && err.contains("factory destroy"),
            "{err}"
        );
        // ... and leaves it alone.
        assert!(check(tdir.path(), &cfg, Accel::Tcg).is_ok());
    }
}
