//! The release tree under the install prefix, as data.
//!
//! Every writer (tarball, .deb, .rpm) consumes the same [`Layout`], so the three
//! packages carry the same files with the same modes and link targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What one path of the release tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory (created implicitly for every parent, mode 0755).
    Dir { mode: u32 },
    /// A regular file copied from `source`.
    File { source: PathBuf, mode: u32 },
    /// A regular file generated in memory (rendered configuration, VERSION).
    Contents { bytes: Vec<u8>, mode: u32 },
    /// A symbolic link; targets are kept exactly as given (relative in releases).
    Symlink { target: String },
}

/// One entry of an archive, with its path relative to `/` (no leading `./`).
#[derive(Clone, Debug)]
pub struct ArchiveEntry<'a> {
    pub path: String,
    pub kind: &'a EntryKind,
}

/// The directory mode of every directory the packages create.
pub const DIR_MODE: u32 = 0o755;
static PREFIX_DIR: EntryKind = EntryKind::Dir { mode: DIR_MODE };

/// The release tree: entries keyed by their path relative to the prefix.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
    entries: BTreeMap<String, EntryKind>,
}

/// Typed inputs of a release, as `cargo xtask release` resolves them.
#[derive(Clone, Debug)]
pub struct ReleaseInputs {
    pub version: String,
    pub source_date_epoch: u64,
    /// Install prefix, absolute: upstream uses `/opt/kata`.
    pub prefix: String,
    /// Installed as `bin/containerd-shim-kata-v2`.
    pub shim: PathBuf,
    /// Installed as `bin/kata-runtime`.
    pub runtime: PathBuf,
    /// Installed as `bin/kata-monitor`.
    pub monitor: PathBuf,
    /// Helper daemons the runtime starts, installed as `libexec/<name>`
    /// (here: `vhost-device-vsock`).
    pub helpers: Vec<(String, PathBuf)>,
    /// Guest kernels, installed as `share/kata-containers/<name>`
    /// (`vmlinux-<version>-<kata_config_version>`, `vmlinuz-...`).
    pub kernel_files: Vec<(String, PathBuf)>,
    /// `(link name, target file name)` in `share/kata-containers/`, e.g.
    /// `("vmlinux.container", "vmlinux-6.1.192-1")`.
    pub kernel_symlinks: Vec<(String, String)>,
    /// Guest images and initrds, installed as `share/kata-containers/<name>`.
    pub image_files: Vec<(String, PathBuf)>,
    /// `(link name, target file name)`, e.g. `("kata-containers.img", "kata-containers-minimal-0.1.0.img")`.
    pub image_symlinks: Vec<(String, String)>,
    /// Already rendered; installed as `share/defaults/kata-containers/configuration.toml`.
    pub configuration_toml: String,
    /// The configurations of the other guests a release ships, rendered:
    /// `(file name, text)`, installed next to configuration.toml (upstream
    /// names one per guest flavour, e.g. `configuration-debian.toml`).
    pub extra_configurations: Vec<(String, String)>,
    /// Installed as `versions.yaml` at the prefix root, next to `VERSION`.
    pub versions_yaml: PathBuf,
}

/// Directory (relative to the prefix) that holds kernels, images and initrds.
pub const GUEST_ASSETS_DIR: &str = "share/kata-containers";
/// Where the default runtime configuration lives, relative to the prefix.
pub const CONFIGURATION_PATH: &str = "share/defaults/kata-containers/configuration.toml";
/// containerd's CRI `kata` runtime handler, relative to the prefix: a
/// snippet an operator imports from `/etc/containerd/config.toml`.
pub const CONTAINERD_SNIPPET_PATH: &str = "share/defaults/kata-containers/containerd-kata.toml";
/// The binaries a distribution package links into `/usr/bin`: containerd
/// resolves runtime `io.containerd.kata.v2` to `containerd-shim-kata-v2`
/// on its PATH, and operators type `kata-runtime` and `kata-monitor`.
pub const PATH_BINARIES: [&str; 3] = ["containerd-shim-kata-v2", "kata-runtime", "kata-monitor"];

/// containerd's CRI configuration (config version 2, containerd 1.6+) for
/// the `kata` runtime handler (a Kubernetes RuntimeClass `handler: kata`),
/// with the configuration file of the release under `prefix`.
///
/// containerd 1.6 replaces a plugin's whole table when a config file it
/// imports sets it, so importing this file drops CRI settings made in the
/// main config.toml; the README says to copy the table there in that case.
pub fn containerd_snippet(prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    format!(
        "# The Kata Containers runtime handler for containerd's CRI plugin.\n\
         # Use it from /etc/containerd/config.toml (version = 2) with\n\
         #   imports = [\"{prefix}/{CONTAINERD_SNIPPET_PATH}\"]\n\
         # or, if config.toml already configures the CRI plugin, copy these tables\n\
         # there: containerd replaces a plugin's whole table on import.\n\
         version = 2\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\n\
         runtime_type = \"io.containerd.kata.v2\"\n\
         privileged_without_host_devices = true\n\
         pod_annotations = [\"io.katacontainers.*\"]\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\n\
         ConfigPath = \"{prefix}/{CONFIGURATION_PATH}\"\n"
    )
}

impl Layout {
    /// An empty tree under `prefix` (absolute, e.g. `/opt/kata`).
    pub fn new(prefix: &str) -> Result<Self> {
        let trimmed = prefix.trim_end_matches('/');
        if !trimmed.starts_with('/') || trimmed.len() < 2 {
            bail!("install prefix {prefix:?} must be an absolute directory other than / (e.g. /opt/kata)");
        }
        check_relative_path(&trimmed[1..]).with_context(|| format!("install prefix {prefix:?}"))?;
        Ok(Self {
            prefix: trimmed.to_string(),
            entries: BTreeMap::new(),
        })
    }

    /// The release tree of `inputs`, with upstream's names and modes.
    pub fn from_inputs(inputs: &ReleaseInputs) -> Result<Self> {
        if inputs.version.is_empty()
            || inputs
                .version
                .chars()
                .any(|c| c.is_whitespace() || c == '/')
        {
            bail!(
                "release version {:?} must be non-empty without spaces or '/'",
                inputs.version
            );
        }
        let mut layout = Layout::new(&inputs.prefix)?;
        layout
            .add_file("bin/containerd-shim-kata-v2", &inputs.shim, 0o755)
            .context("release input `shim`")?;
        layout
            .add_file("bin/kata-runtime", &inputs.runtime, 0o755)
            .context("release input `runtime`")?;
        layout
            .add_file("bin/kata-monitor", &inputs.monitor, 0o755)
            .context("release input `monitor`")?;
        for (name, source) in &inputs.helpers {
            check_file_name(name).context("release input `helpers`")?;
            layout
                .add_file(&format!("libexec/{name}"), source, 0o755)
                .context("release input `helpers`")?;
        }
        layout.add_dir(GUEST_ASSETS_DIR)?;
        for (field, files) in [
            ("kernel_files", &inputs.kernel_files),
            ("image_files", &inputs.image_files),
        ] {
            for (name, source) in files {
                check_file_name(name).with_context(|| format!("release input `{field}`"))?;
                layout
                    .add_file(&format!("{GUEST_ASSETS_DIR}/{name}"), source, 0o644)
                    .with_context(|| format!("release input `{field}`"))?;
            }
        }
        for (field, links) in [
            ("kernel_symlinks", &inputs.kernel_symlinks),
            ("image_symlinks", &inputs.image_symlinks),
        ] {
            for (link, target) in links {
                check_file_name(link).with_context(|| format!("release input `{field}`"))?;
                check_file_name(target).with_context(|| {
                    format!("release input `{field}`: the target of {link} must be a file name in {GUEST_ASSETS_DIR}/")
                })?;
                let target_path = format!("{GUEST_ASSETS_DIR}/{target}");
                if !matches!(
                    layout.entries.get(&target_path),
                    Some(EntryKind::File { .. })
                ) {
                    bail!(
                        "release input `{field}`: {link} -> {target} would dangle: {target} is not among the kernel/image files"
                    );
                }
                layout
                    .add_symlink(&format!("{GUEST_ASSETS_DIR}/{link}"), target)
                    .with_context(|| format!("release input `{field}`"))?;
            }
        }
        layout.add_contents(
            CONFIGURATION_PATH,
            inputs.configuration_toml.as_bytes().to_vec(),
            0o644,
        )?;
        let defaults_dir = CONFIGURATION_PATH
            .rsplit_once('/')
            .map(|(dir, _)| dir)
            .expect("a path with a directory");
        for (name, text) in &inputs.extra_configurations {
            check_file_name(name).context("release input `extra_configurations`")?;
            if !name.starts_with("configuration-") || !name.ends_with(".toml") {
                bail!("release input `extra_configurations`: {name} must be named configuration-<guest>.toml");
            }
            layout.add_contents(
                &format!("{defaults_dir}/{name}"),
                text.as_bytes().to_vec(),
                0o644,
            )?;
        }
        layout.add_contents(
            CONTAINERD_SNIPPET_PATH,
            containerd_snippet(&inputs.prefix).into_bytes(),
            0o644,
        )?;
        layout.add_contents(
            "VERSION",
            format!("{}\n", inputs.version).into_bytes(),
            0o644,
        )?;
        layout
            .add_file("versions.yaml", &inputs.versions_yaml, 0o644)
            .context("release input `versions_yaml`")?;
        Ok(layout)
    }

    /// The install prefix, absolute, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What a distribution package (.deb, .rpm) adds outside the prefix so
    /// the binaries are on PATH: `(usr/bin/<name>, absolute target)`. The
    /// targets are absolute, as Debian policy wants for links between
    /// top-level directories. The tarball keeps upstream's layout, with
    /// everything under the prefix.
    pub fn path_links(&self) -> Result<Vec<(String, String)>> {
        PATH_BINARIES
            .iter()
            .map(|name| {
                let target = format!("bin/{name}");
                match self.entries.get(&target) {
                    Some(EntryKind::File { .. }) => Ok((
                        format!("usr/bin/{name}"),
                        format!("{}/{target}", self.prefix),
                    )),
                    _ => {
                        bail!("usr/bin/{name} would dangle: {target} is not a file of the release")
                    }
                }
            })
            .collect()
    }

    /// Entries relative to the prefix, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &EntryKind)> {
        self.entries.iter().map(|(p, k)| (p.as_str(), k))
    }

    /// Adds a directory (and its parents). Adding an existing directory is a no-op.
    pub fn add_dir(&mut self, path: &str) -> Result<()> {
        check_relative_path(path)?;
        self.add_parents(path)?;
        match self.entries.get(path) {
            Some(EntryKind::Dir { .. }) => Ok(()),
            Some(_) => bail!(
                "{path}: already in the layout as a file or symlink, cannot also be a directory"
            ),
            None => {
                self.entries
                    .insert(path.to_string(), EntryKind::Dir { mode: DIR_MODE });
                Ok(())
            }
        }
    }

    /// Adds a regular file copied from `source` with permission bits `mode`.
    pub fn add_file(&mut self, path: &str, source: &Path, mode: u32) -> Result<()> {
        let meta = std::fs::metadata(source)
            .with_context(|| format!("{path}: cannot read source file {}", source.display()))?;
        if !meta.is_file() {
            bail!("{path}: source {} is not a regular file", source.display());
        }
        self.insert(
            path,
            EntryKind::File {
                source: source.to_path_buf(),
                mode: check_mode(path, mode)?,
            },
        )
    }

    /// Adds a regular file with in-memory contents.
    pub fn add_contents(&mut self, path: &str, bytes: Vec<u8>, mode: u32) -> Result<()> {
        self.insert(
            path,
            EntryKind::Contents {
                bytes,
                mode: check_mode(path, mode)?,
            },
        )
    }

    /// Adds a symbolic link. Targets are not rewritten; the host-safety check
    /// refuses ones that leave the prefix.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if target.is_empty() || target.contains('\0') || target.contains('\n') {
            bail!("{path}: symlink target {target:?} must be non-empty, without NUL or newline");
        }
        self.insert(
            path,
            EntryKind::Symlink {
                target: target.to_string(),
            },
        )
    }

    fn insert(&mut self, path: &str, kind: EntryKind) -> Result<()> {
        check_relative_path(path)?;
        self.add_parents(path)?;
        if self.entries.contains_key(path) {
            bail!("{path}: added to the layout twice");
        }
        self.entries.insert(path.to_string(), kind);
        Ok(())
    }

    fn add_parents(&mut self, path: &str) -> Result<()> {
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            match self.entries.get(&parent) {
                Some(EntryKind::Dir { .. }) => {}
                Some(_) => {
                    bail!("{path}: parent {parent} is already a file or symlink in the layout")
                }
                None => {
                    self.entries
                        .insert(parent.clone(), EntryKind::Dir { mode: DIR_MODE });
                }
            }
        }
        Ok(())
    }

    /// Every entry as an archive sees it: the prefix's own directories
    /// (`opt`, `opt/kata`) first, then the tree, paths relative to `/`, sorted.
    pub fn archive_entries(&self) -> Vec<ArchiveEntry<'_>> {
        let rel_prefix = &self.prefix[1..];
        let mut out = Vec::with_capacity(self.entries.len() + 2);
        let mut acc = String::new();
        for c in rel_prefix.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            out.push(ArchiveEntry {
                path: acc.clone(),
                kind: &PREFIX_DIR,
            });
        }
        for (p, k) in &self.entries {
            out.push(ArchiveEntry {
                path: format!("{rel_prefix}/{p}"),
                kind: k,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Size in KiB as dpkg counts it: each file rounded up to 1 KiB, each
    /// directory and symlink 1 KiB.
    pub fn installed_size_kib(&self) -> Result<u64> {
        let mut total = 0u64;
        for (path, kind) in &self.entries {
            total += match kind {
                EntryKind::File { source, .. } => {
                    let len = std::fs::metadata(source)
                        .with_context(|| {
                            format!("{path}: cannot read source file {}", source.display())
                        })?
                        .len();
                    len.div_ceil(1024)
                }
                EntryKind::Contents { bytes, .. } => (bytes.len() as u64).div_ceil(1024),
                EntryKind::Dir { .. } | EntryKind::Symlink { .. } => 1,
            };
        }
        Ok(total)
    }
}

fn check_mode(path: &str, mode: u32) -> Result<u32> {
    if mode & !0o7777 != 0 {
        bail!("{path}: mode {mode:o} has bits beyond permissions (0o7777)");
    }
    Ok(mode)
}

fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{name:?} must be a plain file name (no '/')");
    }
    Ok(())
}

/// Layout paths are relative, normalised and printable on one line (md5sums
/// and SHA256SUMS are line-based).
fn check_relative_path(path: &str) -> Result<()> {
    if path.is_empty() || path.ends_with('/') || path.contains("//") {
        bail!("path {path:?} must be relative without empty components or a trailing '/'");
    }
    if path.chars().any(|c| c.is_control()) {
        bail!("path {path:?} must not contain control characters");
    }
    if path.starts_with('/') || path.split('/').any(|c| c == "." || c == "..") {
        bail!("path {path:?} must be relative without '.' or '..' components");
    }
    Ok(())
}

#[cfg(test)]
mod path_tests {
    use super::{containerd_snippet, Layout};

    #[test]
    fn path_links_point_at_the_prefix_binaries_and_refuse_to_dangle() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("b");
        std::fs::write(&bin, b"x").unwrap();
        let mut layout = Layout::new("/opt/kata/").unwrap();
        layout
            .add_file("bin/containerd-shim-kata-v2", &bin, 0o755)
            .unwrap();
        let err = layout.path_links().unwrap_err().to_string();
        assert!(err.contains("usr/bin/kata-runtime would dangle"), "{err}");
        layout.add_file("bin/kata-runtime", &bin, 0o755).unwrap();
        layout.add_file("bin/kata-monitor", &bin, 0o755).unwrap();
        assert_eq!(
            layout.path_links().unwrap(),
            vec![
                (
                    "usr/bin/containerd-shim-kata-v2".to_string(),
                    "/opt/kata/bin/containerd-shim-kata-v2".to_string()
                ),
                (
                    "usr/bin/kata-runtime".to_string(),
                    "/opt/kata/bin/kata-runtime".to_string()
                ),
                (
                    "usr/bin/kata-monitor".to_string(),
                    "/opt/kata/bin/kata-monitor".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_containerd_snippet_names_the_shim_and_the_release_config() {
        let text = containerd_snippet("/opt/kata/");
        let doc: toml::Table = text.parse().unwrap();
        let kata = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["kata"];
        assert_eq!(kata["runtime_type"].as_str(), Some("io.containerd.kata.v2"));
        assert_eq!(
            kata["options"]["ConfigPath"].as_str(),
            Some("/opt/kata/share/defaults/kata-containers/configuration.toml")
        );
        assert_eq!(doc["version"].as_integer(), Some(2));
    }
}
