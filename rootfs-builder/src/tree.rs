//! Builds a guest rootfs directory from a recipe and its (already fetched and
//! verified) inputs, and checks a built tree the way upstream osbuilder does.
//!
//! An `init: agent` tree is made here: everything in it is owned by 0:0
//! and has the permissions the recipe gives it (the umask plays no part).
//! An `init: systemd` tree is a Debian system that mmdebstrap installs
//! (see [`crate::debian`]), with the owners and modes its packages and
//! maintainer scripts give, and the recipe's entries laid over it. Either
//! way every entry ends with atime = mtime = SOURCE_DATE_EPOCH, so the
//! tree's tar digest only depends on the inputs.
//!
//! Without root a tree is built rootless: nothing is chowned or
//! mknod'ed, and the tree's rootless record (see [`crate::rootless`])
//! carries the owners and the device nodes to the writers.

use crate::recipe::{
    DeviceKind, GuestPath, InitMode, Mode, Recipe, AGENT_INIT_LINKS, AGENT_PATH,
    OSBUILDER_YAML_PATH,
};
use crate::rootless::{record_path, Privileges, RecordedDevice, RootlessRecord};
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, utimensat, Mode as NixMode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Version of the osbuilder.yaml layout written by this crate.
pub const OSBUILDER_FILE_FORMAT_VERSION: &str = "1";

/// The files a recipe needs besides its own text.
#[derive(Debug, Clone)]
pub struct RootfsInputs {
    /// A static busybox binary for the guest architecture (x86_64); it is run
    /// on the host once (`--list-full`) to learn its applets.
    pub busybox: PathBuf,
    /// The static kata-agent binary.
    pub agent: PathBuf,
    /// Written to /var/lib/osbuilder/osbuilder.yaml.
    pub osbuilder: OsbuilderInfo,
    /// Every timestamp in the tree; must equal `osbuilder.source_date_epoch`.
    pub source_date_epoch: i64,
    /// The recipe's packages, (name, verified `.deb`), in lock order.
    pub packages: Vec<(String, PathBuf)>,
    /// The Debian suite and architecture the packages are from (the
    /// lock's); an `init: systemd` tree is installed for them.
    pub suite: String,
    pub architecture: String,
    /// Where long tools (mmdebstrap) leave their full logs.
    pub log_dir: PathBuf,
    /// A kernel's installed modules, its `lib/modules/<release>` directory
    /// (with depmod's index files): copied to `/lib/modules/<release>`.
    pub kernel_modules: Option<PathBuf>,
    /// Root (chown, mknod) or rootless (a record beside the tree).
    pub privileges: Privileges,
}

/// What went into a rootfs, recorded inside it (upstream keeps the same file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OsbuilderInfo {
    pub file_format_version: String,
    pub recipe: String,
    pub init: InitMode,
    /// Upstream's name for "the agent runs as PID 1".
    pub agent_is_init_daemon: bool,
    pub agent_version: String,
    /// The tool that built the tree, e.g. `rootfs-builder 0.1.0`.
    pub builder: String,
    pub source_date_epoch: i64,
    pub inputs: Vec<InputInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputInfo {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl OsbuilderInfo {
    /// Fills in the fields this crate knows (format and builder version).
    pub fn new(
        recipe: &Recipe,
        agent_version: &str,
        inputs: Vec<InputInfo>,
        source_date_epoch: i64,
    ) -> Self {
        OsbuilderInfo {
            file_format_version: OSBUILDER_FILE_FORMAT_VERSION.into(),
            recipe: recipe.name.clone(),
            init: recipe.init,
            agent_is_init_daemon: recipe.init == InitMode::Agent,
            agent_version: agent_version.into(),
            builder: format!("rootfs-builder {}", env!("CARGO_PKG_VERSION")),
            source_date_epoch,
            inputs,
        }
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(format!(
            "# What went into this guest rootfs; written by rootfs-builder.\n{}",
            serde_yaml_ng::to_string(self)?
        ))
    }
}

/// Builds the rootfs tree for `recipe` at `dest`, which must not exist. The
/// tree is assembled in a temp directory next to `dest` and renamed into
/// place once complete and checked. With [`Privileges::Rootless`] the
/// tree's rootless record is written to `dest.rootless`.
pub fn build_rootfs(recipe: &Recipe, inputs: &RootfsInputs, dest: &Path) -> Result<()> {
    let record_file = record_path(dest)
        .with_context(|| format!("{}: the rootfs needs a directory name", dest.display()))?;
    for path in [dest, &record_file] {
        if std::fs::symlink_metadata(path).is_ok() {
            bail!(
                "{}: already exists; the rootfs is built into a new directory (remove it first)",
                path.display()
            );
        }
    }
    let info = &inputs.osbuilder;
    if info.recipe != recipe.name || info.init != recipe.init {
        bail!(
            "osbuilder info names recipe `{}` (init {}) but the recipe is `{}` (init {})",
            info.recipe,
            info.init.as_str(),
            recipe.name,
            recipe.init.as_str()
        );
    }
    if info.source_date_epoch != inputs.source_date_epoch {
        bail!(
            "osbuilder info source_date_epoch {} differs from the build's {}",
            info.source_date_epoch,
            inputs.source_date_epoch
        );
    }
    require_elf(&inputs.agent, "agent")?;
    if recipe.busybox.is_some() {
        require_elf(&inputs.busybox, "busybox")?;
    }
    let parent = crate::util::parent_dir(dest);
    let staging = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ))
        .suffix(".tmp")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a temp directory in {}", parent.display()))?;
    let root = staging.path();
    let mut creator = Creator::new(inputs.privileges);
    populate(recipe, inputs, root, &mut creator)?;
    if let Some(modules) = &inputs.kernel_modules {
        install_kernel_modules(modules, root, &mut creator)?;
    }
    let record = creator.finish()?;
    pin_times(root, inputs.source_date_epoch)?;
    check_rootfs(root, recipe).context("the freshly built tree fails its own check")?;
    if let Some(record) = &record {
        crate::util::write_atomically(&record_file, |mut f| {
            std::io::Write::write_all(&mut f, record.encode().as_bytes())?;
            Ok(())
        })?;
    }
    let built = staging.keep();
    if let Err(e) = std::fs::rename(&built, dest) {
        let _ = std::fs::remove_dir_all(&built);
        let _ = std::fs::remove_file(&record_file);
        return Err(anyhow!(e).context(format!(
            "{}: cannot rename the built tree into place",
            dest.display()
        )));
    }
    Ok(())
}

/// Creates entries as root (owner 0:0, real device nodes) or rootless
/// (owned by the builder, placeholders recorded). Rootless, a directory
/// stays writable by its owner until [`Creator::finish`] gives it its
/// mode: a read-only directory would stop its own children being created.
pub(crate) struct Creator {
    pub(crate) privileges: Privileges,
    record: RootlessRecord,
    /// Rootless: directories, their paths in the tree and final modes.
    directory_modes: BTreeMap<PathBuf, (String, Mode)>,
}

impl Creator {
    pub(crate) fn new(privileges: Privileges) -> Self {
        Creator {
            privileges,
            record: RootlessRecord::owned_by_root(),
            directory_modes: BTreeMap::new(),
        }
    }

    /// Gives `host` owner 0:0, or leaves that to the record.
    pub(crate) fn own(&self, host: &Path) -> Result<()> {
        match self.privileges {
            Privileges::Root => chown_root(host),
            Privileges::Rootless => Ok(()),
        }
    }

    /// Gives `host` (the tree's `rel`) `owner`, or records it. The mode is
    /// set afterwards (chown clears set-id bits).
    pub(crate) fn own_as(&mut self, host: &Path, rel: &str, owner: (u32, u32)) -> Result<()> {
        match self.privileges {
            Privileges::Root => std::os::unix::fs::lchown(host, Some(owner.0), Some(owner.1))
                .with_context(|| format!("chown {} to {}:{}", host.display(), owner.0, owner.1)),
            Privileges::Rootless => {
                if owner == self.record.owner {
                    self.record.owners.remove(rel);
                } else {
                    recordable(rel)?;
                    self.record.owners.insert(rel.to_string(), owner);
                }
                Ok(())
            }
        }
    }

    /// `host` (the tree's `rel`) as a device node, or as an empty file
    /// the record makes one. The caller sets owner and mode.
    pub(crate) fn device(&mut self, host: &Path, rel: &str, device: RecordedDevice) -> Result<()> {
        match self.privileges {
            Privileges::Root => make_device(host, device),
            Privileges::Rootless => {
                recordable(rel)?;
                // create_new: never through a link already at that path.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(host)?;
                self.record.devices.insert(rel.to_string(), device);
                Ok(())
            }
        }
    }

    /// `rel` is a hard link to `target`, already in the tree: rootless,
    /// what the record says of `target` holds for `rel`.
    pub(crate) fn same_inode(&mut self, rel: &str, target: &str) -> Result<()> {
        if self.privileges == Privileges::Rootless {
            recordable(rel)?;
            match self.record.owners.get(target).copied() {
                Some(owner) => self.record.owners.insert(rel.to_string(), owner),
                None => self.record.owners.remove(rel),
            };
            match self.record.modes.get(target).copied() {
                Some(mode) => self.record.modes.insert(rel.to_string(), mode),
                None => self.record.modes.remove(rel),
            };
        }
        Ok(())
    }

    /// `rel` was removed from the tree: the record forgets it.
    pub(crate) fn forget(&mut self, rel: &str) {
        self.record.owners.remove(rel);
        self.record.modes.remove(rel);
        self.record.devices.remove(rel);
    }

    /// Gives directory `host` (the tree's `rel`) `mode`; rootless, at the
    /// end (see [`Creator::finish`]).
    pub(crate) fn directory_mode(&mut self, host: &Path, rel: &str, mode: Mode) -> Result<()> {
        match self.privileges {
            Privileges::Root => set_mode(host, mode),
            Privileges::Rootless => {
                set_mode(host, Mode(mode.0 | 0o700))?;
                self.directory_modes
                    .insert(host.to_path_buf(), (rel.to_string(), mode));
                Ok(())
            }
        }
    }

    /// Gives anything but a directory `mode`. Rootless, the owner can
    /// always read it (the writers must), and a mode without owner read is
    /// recorded.
    pub(crate) fn mode(&mut self, host: &Path, rel: &str, mode: Mode) -> Result<()> {
        self.mode_at_least(host, rel, mode, 0o400)
    }

    fn mode_at_least(&mut self, host: &Path, rel: &str, mode: Mode, owner: u32) -> Result<()> {
        match self.privileges {
            Privileges::Root => set_mode(host, mode),
            Privileges::Rootless => {
                let on_disk = mode.0 | owner;
                set_mode(host, Mode(on_disk))?;
                // The kernel drops set-gid silently when the file's group
                // is not one of ours (a set-gid parent directory of
                // another group): check rather than trust the chmod.
                let got = std::fs::symlink_metadata(host)?.permissions().mode() & 0o7777;
                if got != on_disk {
                    bail!(
                        "/{rel}: mode {on_disk:04o} did not hold (the file system kept {got:04o}); is the build directory set-gid to a group this user is not in?"
                    );
                }
                if on_disk == mode.0 {
                    self.record.modes.remove(rel);
                } else {
                    recordable(rel)?;
                    self.record.modes.insert(rel.to_string(), mode.0);
                }
                Ok(())
            }
        }
    }

    fn create_node(&mut self, root: &Path, path: &GuestPath, node: &Node) -> Result<()> {
        let host = root.join(path.relative());
        match node {
            Node::Directory(mode) => {
                std::fs::create_dir(&host)?;
                self.own(&host)?;
                self.directory_mode(&host, path.relative(), *mode)?;
            }
            Node::File { mode, source } => {
                match source {
                    FileSource::Bytes(b) => std::fs::write(&host, b)?,
                    FileSource::Copy(from) => {
                        std::fs::copy(from, &host)
                            .with_context(|| format!("cannot copy {}", from.display()))?;
                    }
                }
                self.own(&host)?;
                self.mode(&host, path.relative(), *mode)?;
            }
            Node::Symlink(target) => {
                symlink(target, &host)?;
                self.own(&host)?;
            }
            Node::Device(device, mode) => {
                self.device(&host, path.relative(), *device)?;
                self.own(&host)?;
                self.mode(&host, path.relative(), *mode)?;
            }
        }
        Ok(())
    }

    /// Rootless: the directories' own modes (plus owner read and search,
    /// recorded when added), children before parents (reverse path order);
    /// and the record. `None` as root.
    pub(crate) fn finish(mut self) -> Result<Option<RootlessRecord>> {
        match self.privileges {
            Privileges::Root => Ok(None),
            Privileges::Rootless => {
                let directories = std::mem::take(&mut self.directory_modes);
                for (host, (rel, mode)) in directories.iter().rev() {
                    self.mode_at_least(host, rel, *mode, 0o500)?;
                }
                Ok(Some(self.record))
            }
        }
    }
}

/// The record is line-based: a path in it cannot hold a newline.
fn recordable(rel: &str) -> Result<()> {
    if rel.contains('\n') {
        bail!("{rel:?}: a name with a newline cannot be recorded for a build without root");
    }
    Ok(())
}

/// One thing to create in the tree.
enum Node {
    Directory(Mode),
    File { mode: Mode, source: FileSource },
    Symlink(String),
    Device(RecordedDevice, Mode),
}

enum FileSource {
    Bytes(Vec<u8>),
    Copy(PathBuf),
}

fn populate(
    recipe: &Recipe,
    inputs: &RootfsInputs,
    root: &Path,
    creator: &mut Creator,
) -> Result<()> {
    // Collect everything first, keyed by path, so that collisions are caught
    // before anything is written and creation happens parents-first.
    let mut plan: Plan = BTreeMap::new();
    for d in &recipe.directories {
        add_node(
            &mut plan,
            d.path.clone(),
            Node::Directory(d.mode),
            "recipe directories".into(),
        )?;
    }
    for f in &recipe.files {
        add_node(
            &mut plan,
            f.path.clone(),
            Node::File {
                mode: f.mode,
                source: FileSource::Bytes(f.content.clone().into_bytes()),
            },
            "recipe files".into(),
        )?;
    }
    for s in &recipe.symlinks {
        add_node(
            &mut plan,
            s.path.clone(),
            Node::Symlink(s.target.clone()),
            "recipe symlinks".into(),
        )?;
    }
    for d in &recipe.devices {
        add_node(
            &mut plan,
            d.path.clone(),
            Node::Device(
                RecordedDevice {
                    kind: d.kind,
                    major: d.major,
                    minor: d.minor,
                },
                d.mode,
            ),
            "recipe devices".into(),
        )?;
    }
    match recipe.init {
        InitMode::Agent => {
            let agent = GuestPath::new(AGENT_PATH).expect("valid constant");
            add_node(
                &mut plan,
                agent,
                Node::File {
                    mode: Mode(0o755),
                    source: FileSource::Copy(inputs.agent.clone()),
                },
                "the agent".into(),
            )?;
            for link in AGENT_INIT_LINKS {
                add_node(
                    &mut plan,
                    GuestPath::new(link).expect("valid constant"),
                    Node::Symlink(AGENT_PATH.into()),
                    "init: agent".into(),
                )?;
            }
        }
        InitMode::Systemd => {
            // Started by the recipe's unit (kata-agent.service), not as init.
            add_node(
                &mut plan,
                GuestPath::new(AGENT_PATH).expect("valid constant"),
                Node::File {
                    mode: Mode(0o755),
                    source: FileSource::Copy(inputs.agent.clone()),
                },
                "the agent".into(),
            )?;
        }
    }
    add_node(
        &mut plan,
        GuestPath::new(OSBUILDER_YAML_PATH).expect("valid constant"),
        Node::File {
            mode: Mode(0o644),
            source: FileSource::Bytes(inputs.osbuilder.to_yaml()?.into_bytes()),
        },
        "osbuilder.yaml".into(),
    )?;
    if let Some(bb) = &recipe.busybox {
        add_node(
            &mut plan,
            bb.path.clone(),
            Node::File {
                mode: Mode(0o755),
                source: FileSource::Copy(inputs.busybox.clone()),
            },
            "busybox".into(),
        )?;
        let applets = busybox_applets(&inputs.busybox)?;
        for excluded in &bb.exclude_applets {
            if !applets.contains(excluded) {
                bail!("recipe busybox.exclude_applets: {excluded} is not an applet of {} (see `busybox --list-full`); remove it from the list", inputs.busybox.display());
            }
        }
        for applet in applets {
            if bb.exclude_applets.contains(&applet) || applet == bb.path {
                continue;
            }
            if let Some((_, other)) = plan.get(&applet) {
                bail!("busybox applet {applet} collides with {other}; add it to busybox.exclude_applets");
            }
            add_node(
                &mut plan,
                applet,
                Node::Symlink(bb.path.as_str().into()),
                "busybox applets".into(),
            )?;
        }
    }
    match recipe.init {
        InitMode::Agent => create_agent_init_tree(recipe, inputs, root, &plan, creator),
        InitMode::Systemd => create_systemd_tree(recipe, inputs, root, &plan, creator),
    }
}

/// Everything from the plan, into an empty root; then the packages
/// unpacked over it (no maintainer scripts).
fn create_agent_init_tree(
    recipe: &Recipe,
    inputs: &RootfsInputs,
    root: &Path,
    plan: &Plan,
    creator: &mut Creator,
) -> Result<()> {
    for path in plan.keys() {
        if let Some(parent) = path.parent() {
            if !matches!(plan.get(&parent), Some((Node::Directory(_), _))) {
                bail!("{path} needs directory {parent}; declare it in the recipe's `directories`");
            }
        }
    }

    creator.own(root)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    for (path, (node, _)) in plan {
        creator
            .create_node(root, path, node)
            .with_context(|| format!("{path}: cannot create in {}", root.display()))?;
    }
    match &recipe.packages {
        Some(spec) => {
            let mut owners: crate::packages::Owners = plan
                .iter()
                .map(|(p, (_, origin))| (p.relative().to_string(), origin.clone()))
                .collect();
            for (name, deb) in &inputs.packages {
                crate::packages::unpack_deb(deb, name, root, &spec.exclude, &mut owners, creator)?;
            }
        }
        None if !inputs.packages.is_empty() => {
            bail!(
                "{} packages given for recipe `{}`, which lists none",
                inputs.packages.len(),
                recipe.name
            )
        }
        None => {}
    }
    Ok(())
}

/// The Debian system first (mmdebstrap), then the plan over it: a
/// recipe directory may already be there, anything else may not.
fn create_systemd_tree(
    recipe: &Recipe,
    inputs: &RootfsInputs,
    root: &Path,
    plan: &Plan,
    creator: &mut Creator,
) -> Result<()> {
    let spec = recipe
        .packages
        .as_ref()
        .context("an `init: systemd` recipe lists its packages (the recipe check ensures it)")?;
    crate::debian::install_system(
        spec,
        &inputs.suite,
        &inputs.architecture,
        &inputs.packages,
        root,
        inputs.source_date_epoch,
        &inputs
            .log_dir
            .join(format!("rootfs-{}-mmdebstrap.log", recipe.name)),
        creator,
    )?;
    for (path, (node, origin)) in plan {
        let host = root.join(path.relative());
        let parent = host.parent().unwrap_or(root);
        if !std::fs::symlink_metadata(parent).is_ok_and(|m| m.is_dir()) {
            bail!(
                "{path} ({origin}): its parent /{} is not a directory of the Debian base; declare it in the recipe's `directories`",
                parent.strip_prefix(root).unwrap_or(parent).display()
            );
        }
        match (std::fs::symlink_metadata(&host), node) {
            (Ok(m), Node::Directory(mode)) if m.is_dir() => {
                creator.directory_mode(&host, path.relative(), *mode)?
            }
            (Ok(_), _) => bail!(
                "{path} ({origin}) is already in the Debian base the packages installed; drop it from the recipe or add it to `packages.exclude`"
            ),
            (Err(_), _) => creator
                .create_node(root, path, node)
                .with_context(|| format!("{path}: cannot create in {}", root.display()))?,
        }
    }
    Ok(())
}

type Plan = BTreeMap<GuestPath, (Node, String)>;

fn add_node(plan: &mut Plan, path: GuestPath, node: Node, origin: String) -> Result<()> {
    if let Some((_, other)) = plan.get(&path) {
        bail!("{path} comes from both {other} and {origin}");
    }
    plan.insert(path, (node, origin));
    Ok(())
}

fn make_device(host: &Path, device: RecordedDevice) -> Result<()> {
    let sflag = match device.kind {
        DeviceKind::Char => SFlag::S_IFCHR,
        DeviceKind::Block => SFlag::S_IFBLK,
    };
    let dev = makedev(u64::from(device.major), u64::from(device.minor));
    match mknod(host, sflag, NixMode::from_bits_truncate(0o600), dev) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) => bail!(
            "mknod: permission denied: this root lacks CAP_MKNOD (a container?); build as an unprivileged user, which records device nodes instead of making them"
        ),
        Err(e) => Err(e.into()),
    }
}

/// `host`'s path relative to the tree `root`, as the record names it.
fn tree_rel(root: &Path, host: &Path) -> String {
    host.strip_prefix(root)
        .unwrap_or(host)
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn set_mode(host: &Path, mode: Mode) -> Result<()> {
    // chmod after chown: chown clears setuid/setgid bits.
    std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode.0))?;
    Ok(())
}

/// Copies a kernel's `lib/modules/<release>` directory to the tree's
/// `/lib/modules/<release>` (through `/lib` when that is the merged-/usr
/// link to `usr/lib`): directories 0755, files 0644, owned by root. Only
/// directories and regular files are taken; the tree must not have that
/// release's directory yet.
fn install_kernel_modules(modules: &Path, root: &Path, creator: &mut Creator) -> Result<()> {
    let release = modules
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .ok_or_else(|| {
            anyhow!(
                "{}: not a lib/modules/<release> directory",
                modules.display()
            )
        })?;
    if !modules.join("modules.dep").is_file() {
        bail!(
            "{}: no modules.dep (the modules were installed without depmod)",
            modules.display()
        );
    }
    // /lib may be a link (merged /usr), relative or absolute: resolved in
    // the tree, never on the host, before anything is created.
    let mut lib_modules = root.to_path_buf();
    for guest in ["/lib", "/lib/modules"] {
        let host = resolve_in_tree(root, guest)?;
        match std::fs::symlink_metadata(&host) {
            Err(_) => {
                std::fs::create_dir(&host)
                    .with_context(|| format!("{}: cannot create", host.display()))?;
                creator.own(&host)?;
                creator.directory_mode(&host, &tree_rel(root, &host), Mode(0o755))?;
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("{guest} in the tree is not a directory"),
        }
        lib_modules = host;
    }
    let dest = lib_modules.join(release);
    if std::fs::symlink_metadata(&dest).is_ok() {
        bail!("/lib/modules/{release} is already in the tree (from the recipe or its packages)");
    }
    for entry in walkdir::WalkDir::new(modules).sort_by_file_name() {
        let entry = entry?;
        let rel = entry.path().strip_prefix(modules)?;
        let target = dest.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&target)
                .with_context(|| format!("{}: cannot create", target.display()))?;
            creator.own(&target)?;
            creator.directory_mode(&target, &tree_rel(root, &target), Mode(0o755))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    entry.path().display(),
                    target.display()
                )
            })?;
            creator.own(&target)?;
            creator.mode(&target, &tree_rel(root, &target), Mode(0o644))?;
        } else {
            bail!(
                "{}: neither a directory nor a regular file; kernel modules are copied as files",
                entry.path().display()
            );
        }
    }
    Ok(())
}

fn chown_root(host: &Path) -> Result<()> {
    match std::os::unix::fs::lchown(host, Some(0), Some(0)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            bail!("chown to 0:0: permission denied (a build as root needs CAP_CHOWN)")
        }
        Err(e) => Err(e.into()),
    }
}

fn require_elf(path: &Path, what: &str) -> Result<()> {
    let mut magic = [0u8; 4];
    let read =
        std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    read.with_context(|| format!("{what} binary {}: cannot read", path.display()))?;
    if &magic != b"\x7fELF" {
        bail!("{what} binary {}: not an ELF executable", path.display());
    }
    Ok(())
}

/// Applet paths of a busybox binary, from its own `--list-full`.
pub fn busybox_applets(busybox: &Path) -> Result<Vec<GuestPath>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("cannot run `{} --list-full`", busybox.display()))?;
    if !out.status.success() {
        bail!(
            "`{} --list-full` failed ({}): {}",
            busybox.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("busybox --list-full printed non-UTF-8")?;
    let mut applets = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let path = GuestPath::new(&format!("/{}", line.trim()))
            .map_err(|e| anyhow!("busybox --list-full printed an unusable path: {e}"))?;
        applets.push(path);
    }
    if applets.is_empty() {
        bail!("`{} --list-full` listed no applets", busybox.display());
    }
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// Sets atime and mtime of every entry under (and including) `root` to
/// `epoch`, without following symlinks.
pub fn pin_times(root: &Path, epoch: i64) -> Result<()> {
    let ts = TimeSpec::new(epoch, 0);
    for e in walkdir::WalkDir::new(root).follow_root_links(false) {
        let path = e?.into_path();
        utimensat(None, &path, &ts, &ts, UtimensatFlags::NoFollowSymlink)
            .with_context(|| format!("{}: cannot set timestamps", path.display()))?;
    }
    Ok(())
}

/// Upstream-style sanity check of a built tree: init present and executable,
/// the agent present, executable and what init resolves to, osbuilder.yaml
/// present and describing this recipe.
pub fn check_rootfs(dest: &Path, recipe: &Recipe) -> Result<()> {
    if !dest.is_dir() {
        bail!("{}: not a directory", dest.display());
    }
    let executable = |guest: &str| -> Result<PathBuf> {
        let resolved = resolve_in_tree(dest, guest)?;
        let meta = std::fs::metadata(&resolved)
            .with_context(|| format!("{}: {guest} is not installed", dest.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            bail!("{}: {guest} is not an executable file", dest.display());
        }
        Ok(resolved)
    };
    match recipe.init {
        InitMode::Agent => {
            let agent = executable(AGENT_PATH)?;
            for link in AGENT_INIT_LINKS {
                if executable(link)? != agent {
                    bail!(
                        "{}: {link} does not resolve to the agent {AGENT_PATH}",
                        dest.display()
                    );
                }
            }
        }
        InitMode::Systemd => {
            let agent = executable(AGENT_PATH)?;
            if executable("/sbin/init")? == agent {
                bail!(
                    "{}: /sbin/init is the agent, but the recipe says `init: systemd`",
                    dest.display()
                );
            }
        }
    }
    let yaml = dest.join(&OSBUILDER_YAML_PATH[1..]);
    let text = std::fs::read_to_string(&yaml)
        .with_context(|| format!("{}: {OSBUILDER_YAML_PATH} is missing", dest.display()))?;
    let info: OsbuilderInfo = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: cannot parse", yaml.display()))?;
    if info.recipe != recipe.name {
        bail!(
            "{}: {OSBUILDER_YAML_PATH} describes recipe `{}`, not `{}`",
            dest.display(),
            info.recipe,
            recipe.name
        );
    }
    Ok(())
}

/// Resolves a guest path inside `root` as the guest would see it: absolute
/// symlink targets are taken relative to `root`, never the host's `/`.
fn resolve_in_tree(root: &Path, guest: &str) -> Result<PathBuf> {
    let mut pending: Vec<String> = guest
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut current: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                current.pop();
                continue;
            }
            _ => {}
        }
        current.push(component);
        let host = current.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            return Ok(host);
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                bail!("{}: too many symlinks resolving {guest}", root.display());
            }
            let target = std::fs::read_link(&host)?;
            let target = target.to_string_lossy().into_owned();
            current.pop();
            if target.starts_with('/') {
                current.clear();
            }
            pending.extend(
                target
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .rev()
                    .map(String::from),
            );
        }
    }
    Ok(current.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recipe::{DirectorySpec, SymlinkSpec};
    use std::os::unix::fs::MetadataExt;

    pub(crate) fn minimal_recipe() -> Recipe {
        Recipe::find(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes"),
            "minimal",
        )
        .unwrap()
    }

    /// Busybox from the host's busybox-static, and a copy of it standing in
    /// for the static agent.
    pub(crate) fn test_inputs(recipe: &Recipe, scratch: &Path, epoch: i64) -> RootfsInputs {
        let agent = scratch.join("fake-kata-agent");
        std::fs::copy("/bin/busybox", &agent).unwrap();
        let inputs = vec![InputInfo {
            name: "busybox-static".into(),
            version: "test".into(),
            sha256: "0".repeat(64),
        }];
        RootfsInputs {
            busybox: PathBuf::from("/bin/busybox"),
            agent,
            osbuilder: OsbuilderInfo::new(recipe, "0.0.0-test", inputs, epoch),
            source_date_epoch: epoch,
            // The recipe's packages need the archive; these tests build
            // the rest of the tree.
            packages: Vec::new(),
            suite: "bookworm".into(),
            architecture: "amd64".into(),
            log_dir: scratch.to_path_buf(),
            kernel_modules: None,
            privileges: Privileges::Root,
        }
    }

    /// A `lib/modules/<release>` directory as `make modules_install` and
    /// depmod leave it (contents made up).
    fn fake_modules(scratch: &Path) -> PathBuf {
        let dir = scratch.join("installed/lib/modules/6.1.0-test");
        std::fs::create_dir_all(dir.join("kernel/drivers/net")).unwrap();
        std::fs::write(dir.join("kernel/drivers/net/dummy.ko"), b"\x7fELF fake").unwrap();
        std::fs::write(dir.join("modules.dep"), b"kernel/drivers/net/dummy.ko:\n").unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            b"kernel/drivers/block/loop.ko\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_removed_entry_leaves_nothing_in_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let shadow = dir.path().join("shadow");
        std::fs::write(&shadow, b"").unwrap();
        let mut creator = Creator::new(Privileges::Rootless);
        creator.own_as(&shadow, "etc/shadow-", (0, 42)).unwrap();
        creator.mode(&shadow, "etc/shadow-", Mode(0)).unwrap();
        assert_eq!(
            std::fs::metadata(&shadow).unwrap().permissions().mode() & 0o7777,
            0o400
        );
        creator.forget("etc/shadow-");
        let record = creator.finish().unwrap().unwrap();
        assert_eq!(record, RootlessRecord::owned_by_root());
    }

    #[test]
    #[ignore = "needs root (device nodes) and busybox-static (/bin/busybox): run by cargo xtask test unit"]
    fn kernel_modules_land_in_lib_modules_owned_by_root_with_fixed_modes() {
        let recipe = minimal_recipe();
        let scratch = tempfile::tempdir().unwrap();
        let mut inputs = test_inputs(&recipe, scratch.path(), 1_700_000_000);
        let modules = fake_modules(scratch.path());
        std::fs::set_permissions(
            modules.join("modules.dep"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        inputs.kernel_modules = Some(modules);
        let dest = scratch.path().join("tree");
        build_rootfs(&recipe, &inputs, &dest).unwrap();
        let installed = dest.join("lib/modules/6.1.0-test");
        let dummy = installed.join("kernel/drivers/net/dummy.ko");
        assert_eq!(std::fs::read(&dummy).unwrap(), b"\x7fELF fake");
        for (path, mode) in [
            (&installed, 0o755),
            (&dummy, 0o644),
            (&installed.join("modules.dep"), 0o644),
        ] {
            let meta = std::fs::metadata(path).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                mode,
                "{}",
                path.display()
            );
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
            assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_700_000_000);
        }

        // Through an absolute merged-/usr link the modules land in the
        // tree's /usr/lib, never in the host's.
        let mut merged = recipe.clone();
        merged.directories.push(DirectorySpec {
            path: GuestPath::new("/usr/lib").unwrap(),
            mode: Mode(0o755),
        });
        merged.symlinks.push(SymlinkSpec {
            path: GuestPath::new("/lib").unwrap(),
            target: "/usr/lib".into(),
        });
        inputs.kernel_modules = Some(fake_modules(&scratch.path().join("again")));
        let dest = scratch.path().join("merged");
        build_rootfs(&merged, &inputs, &dest).unwrap();
        assert!(dest
            .join("usr/lib/modules/6.1.0-test/modules.dep")
            .is_file());
        assert!(!Path::new("/usr/lib/modules/6.1.0-test").exists());

        // Without depmod's index the modules are refused, and nothing is left.
        let bare = scratch.path().join("bare/lib/modules/6.1.0-bare");
        std::fs::create_dir_all(&bare).unwrap();
        inputs.kernel_modules = Some(bare);
        let dest = scratch.path().join("tree2");
        let err = build_rootfs(&recipe, &inputs, &dest).unwrap_err();
        assert!(format!("{err:#}").contains("no modules.dep"), "{err:#}");
        assert!(!dest.exists());
    }

    #[test]
    #[ignore = "needs root (device nodes) and busybox-static (/bin/busybox): run by cargo xtask test unit"]
    fn minimal_tree_has_agent_init_busybox_devices_and_pinned_metadata() {
        let recipe = minimal_recipe();
        let dir = tempfile::tempdir().unwrap();
        let inputs = test_inputs(&recipe, dir.path(), 1_234_567_890);
        let dest = dir.path().join("rootfs");
        let old_umask = nix::sys::stat::umask(NixMode::from_bits_truncate(0o077));
        let result = build_rootfs(&recipe, &inputs, &dest);
        nix::sys::stat::umask(old_umask);
        result.unwrap();

        assert_eq!(
            std::fs::read_link(dest.join("sbin/init")).unwrap(),
            Path::new(AGENT_PATH)
        );
        assert_eq!(
            std::fs::read_link(dest.join("init")).unwrap(),
            Path::new(AGENT_PATH)
        );
        assert_eq!(
            std::fs::read_link(dest.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(std::fs::symlink_metadata(dest.join("linuxrc")).is_err());
        let agent = std::fs::metadata(dest.join("usr/bin/kata-agent")).unwrap();
        assert_eq!(agent.mode() & 0o7777, 0o755);
        let console = std::fs::symlink_metadata(dest.join("dev/console")).unwrap();
        assert_eq!(
            (libc::major(console.rdev()), libc::minor(console.rdev())),
            (5, 1)
        );
        let null = std::fs::symlink_metadata(dest.join("dev/null")).unwrap();
        assert_eq!(
            (
                libc::major(null.rdev()),
                libc::minor(null.rdev()),
                null.mode() & 0o7777
            ),
            (1, 3, 0o666)
        );
        assert_eq!(
            std::fs::metadata(dest.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o7777, 0o755);
        let info: OsbuilderInfo = serde_yaml_ng::from_str(
            &std::fs::read_to_string(dest.join("var/lib/osbuilder/osbuilder.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(info, inputs.osbuilder);
        // Every entry: owner 0:0, times pinned (symlinks included), and the
        // recipe's permissions despite the 077 umask.
        for entry in crate::walk::list_tree(&dest).unwrap() {
            let m = std::fs::symlink_metadata(&entry.host_path).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0), "{:?}", entry.host_path);
            // atime is pinned too, but any read (this walk) may move it on a
            // relatime mount; no artifact uses it.
            assert_eq!(m.mtime(), 1_234_567_890, "{:?}", entry.host_path);
        }
        for d in &recipe.directories {
            let m = std::fs::metadata(dest.join(d.path.relative())).unwrap();
            assert_eq!(m.mode() & 0o7777, d.mode.0, "{}", d.path);
        }
        for f in &recipe.files {
            let m = std::fs::metadata(dest.join(f.path.relative())).unwrap();
            assert_eq!(m.mode() & 0o7777, f.mode.0, "{}", f.path);
            assert_eq!(
                std::fs::read_to_string(dest.join(f.path.relative())).unwrap(),
                f.content
            );
        }
        // Leaves no temp directory behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        check_rootfs(&dest, &recipe).unwrap();

        // Rebuilding gives the same tree digest.
        let dest2 = dir.path().join("rootfs2");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        build_rootfs(&recipe, &inputs, &dest2).unwrap();
        assert_eq!(
            crate::tree_digest(&dest).unwrap(),
            crate::tree_digest(&dest2).unwrap()
        );

        let err = build_rootfs(&recipe, &inputs, &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    #[ignore = "needs root (device nodes) and busybox-static (/bin/busybox): run by cargo xtask test unit"]
    fn check_rootfs_catches_missing_agent_and_metadata() {
        let recipe = minimal_recipe();
        let dir = tempfile::tempdir().unwrap();
        let inputs = test_inputs(&recipe, dir.path(), 0);
        let dest = dir.path().join("rootfs");
        build_rootfs(&recipe, &inputs, &dest).unwrap();
        std::fs::set_permissions(
            dest.join("usr/bin/kata-agent"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = check_rootfs(&dest, &recipe).unwrap_err().to_string();
        assert!(
            err.contains("/usr/bin/kata-agent is not an executable file"),
            "{err}"
        );
        std::fs::remove_file(dest.join("usr/bin/kata-agent")).unwrap();
        let err = check_rootfs(&dest, &recipe).unwrap_err().to_string();
        assert!(
            err.contains("/usr/bin/kata-agent is not installed"),
            "{err}"
        );
        std::fs::copy("/bin/busybox", dest.join("usr/bin/kata-agent")).unwrap();
        std::fs::remove_file(dest.join("var/lib/osbuilder/osbuilder.yaml")).unwrap();
        let err = check_rootfs(&dest, &recipe).unwrap_err().to_string();
        assert!(err.contains("osbuilder.yaml is missing"), "{err}");
    }

    #[test]
    #[ignore = "needs busybox-static (/bin/busybox): run by cargo xtask test unit"]
    fn bad_inputs_are_named() {
        let recipe = minimal_recipe();
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = test_inputs(&recipe, dir.path(), 0);
        std::fs::write(dir.path().join("not-elf"), "#!/bin/sh\n").unwrap();
        inputs.agent = dir.path().join("not-elf");
        let err = build_rootfs(&recipe, &inputs, &dir.path().join("r"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent binary") && err.contains("not an ELF executable"),
            "{err}"
        );
        let mut inputs = test_inputs(&recipe, dir.path(), 0);
        inputs.source_date_epoch = 5;
        let err = build_rootfs(&recipe, &inputs, &dir.path().join("r"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source_date_epoch"), "{err}");
        assert!(!dir.path().join("r").exists());
    }
}
