//! `kata-runtime factory init|status|destroy`: the VM template of
//! `[factory]` (see [`crate::hypervisor::template`] for what a template is
//! and how sandboxes start from it).
//!
//! The template lives on a tmpfs mounted at `template_path` (mode 0700,
//! private propagation): its memory file is guest RAM, which must not sit on
//! a disk, and one unmount removes it all.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::Serialize;

use crate::config::KataConfig;
use crate::hypervisor::template::{self, TemplateMeta, MEMORY_FILE, META_FILE, STATE_FILE};
use crate::hypervisor::{resolve_accel, QemuConfig, PROBE_CACHE_FILE};

/// The template VM's id (its state directory inside the template's tmpfs).
const TEMPLATE_VM_ID: &str = "factory-template";
/// Room on the tmpfs beyond the guest's RAM: the saved state (hundreds of
/// KiB) and the template VM's sockets and logs.
const TMPFS_SLACK_MIB: u64 = 64;

/// What `factory status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub template_path: PathBuf,
    pub enable_template: bool,
    /// Whether a template (its [`META_FILE`]) exists.
    pub present: bool,
    /// Whether this configuration's sandboxes can start from it.
    pub usable: bool,
    /// Why not, when present but not usable (or absent).
    pub problem: Option<String>,
    pub meta: Option<TemplateMeta>,
    /// Bytes of guest memory the template holds (the file is sparse).
    pub memory_bytes_used: Option<u64>,
    pub mounted: bool,
}

/// The VM a template of `cfg` is made of (and its clones are).
/// The accelerator is resolved here, through the runtime's probe cache,
/// so that the template VM (whose state root is the template's tmpfs)
/// neither probes again nor leaves a cache file there.
fn template_qemu_config(cfg: &KataConfig, dir: &Path) -> QemuConfig {
    let mut qemu = cfg.qemu_config(TEMPLATE_VM_ID, dir);
    qemu.shared_fs = None;
    qemu.state_root = dir.to_owned();
    qemu.kill_on_parent_death = true;
    let probe_cache = cfg.runtime.state_root.join(PROBE_CACHE_FILE);
    (qemu.accel, _) = resolve_accel(
        qemu.accel,
        &qemu.qemu_binary,
        &qemu.kernel,
        Some(&probe_cache),
    );
    qemu
}

fn is_mountpoint(dir: &Path) -> std::io::Result<bool> {
    let here = std::fs::symlink_metadata(dir)?;
    let parent = std::fs::metadata(dir.parent().unwrap_or(Path::new("/")))?;
    Ok(here.dev() != parent.dev())
}

/// Boot the template guest, save it into `template_path`, and stop it.
/// Refused when a template exists. On error nothing is left: the tmpfs
/// mounted here is unmounted and its directory removed.
pub fn init(cfg: &KataConfig) -> anyhow::Result<TemplateMeta> {
    let dir = &cfg.factory.template_path;
    if dir.join(META_FILE).exists() {
        anyhow::bail!(
            "a VM template already exists in {}; run `kata-runtime factory destroy` first",
            dir.display()
        );
    }
    // The directories this init creates (template_path and any missing
    // parent, deepest first): a failed init removes them again.
    let created: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create [factory] template_path {}: {e}",
            dir.display()
        )
    })?;
    let mounted_here = if is_mountpoint(dir)? {
        // Left by an init that was killed: no template in it (no META_FILE),
        // so whatever it holds is stale.
        for name in [STATE_FILE, MEMORY_FILE] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        false
    } else {
        let size = u64::from(cfg.hypervisor.default_memory) + TMPFS_SLACK_MIB;
        let options = format!("size={size}m,mode=0700");
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        )
        .map_err(|e| anyhow::anyhow!("cannot mount a tmpfs on {}: {e}", dir.display()))?;
        true
    };
    let result = (|| {
        // Its own mount events stay here (the host's /run may be shared).
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| anyhow::anyhow!("cannot make {} a private mount: {e}", dir.display()))?;
        let qemu = template_qemu_config(cfg, dir);
        template::create(&qemu, dir, cfg.dial_timeout())
            .map_err(|e| anyhow::anyhow!("{}", crate::error_chain(&e)))
    })();
    if result.is_err() {
        if mounted_here {
            let _ = umount2(dir, MntFlags::empty());
        }
        for d in &created {
            let _ = std::fs::remove_dir(d);
        }
    }
    result
}

/// The template at `template_path`, checked against `cfg`.
pub fn status(cfg: &KataConfig) -> Status {
    let dir = &cfg.factory.template_path;
    let mounted = is_mountpoint(dir).unwrap_or(false);
    let mut status = Status {
        template_path: dir.clone(),
        enable_template: cfg.factory.enable_template,
        present: dir.join(META_FILE).exists(),
        usable: false,
        problem: None,
        meta: None,
        memory_bytes_used: std::fs::metadata(dir.join(MEMORY_FILE))
            .ok()
            .map(|m| m.blocks() * 512),
        mounted,
    };
    let qemu = template_qemu_config(cfg, dir);
    match template::check(dir, &qemu, qemu.accel) {
        Ok(meta) => {
            status.usable = true;
            status.meta = Some(meta);
        }
        Err(e) => {
            status.problem = Some(crate::error_chain(&e));
            status.meta = template::read_meta(dir).ok();
        }
    }
    status
}

/// Remove the template: its files, the tmpfs, the directory. `Ok(false)`:
/// there was nothing to remove. Sandboxes cloned from it keep running (each
/// has its own copy of the memory).
pub fn destroy(cfg: &KataConfig) -> anyhow::Result<bool> {
    let dir = &cfg.factory.template_path;
    if !dir.exists() {
        return Ok(false);
    }
    // Only the template's own files: template_path may be set to a
    // directory that holds other things, which stay.
    let mut removed = false;
    for name in [META_FILE, STATE_FILE, MEMORY_FILE] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot remove {}: {e}", dir.join(name).display()),
        }
    }
    if is_mountpoint(dir)? {
        umount2(dir, MntFlags::empty())
            .map_err(|e| anyhow::anyhow!("cannot unmount {}: {e}", dir.display()))?;
        removed = true;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => anyhow::bail!(
            "{} holds files that are not the template's; they were left alone",
            dir.display()
        ),
        Err(e) => anyhow::bail!("cannot remove {}: {e}", dir.display()),
    }
    Ok(removed)
}
