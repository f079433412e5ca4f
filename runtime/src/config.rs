//! `configuration.toml`: the runtime's configuration, with upstream Kata's
//! section and key names for what this runtime supports.
//!
//! Lookup order (as upstream): `$KATA_CONF_FILE`,
//! `/etc/kata-containers/configuration.toml`, then
//! `<prefix>/share/defaults/kata-containers/configuration.toml` with the
//! compile-time prefix [`PREFIX`] (`KATA_PREFIX` at build time, default
//! `/opt/kata`).
//!
//! Upstream files carry many keys this runtime does not use: unknown keys
//! (and sections) are collected in [`KataConfig::ignored`], which the shim
//! logs as a warning and `kata-runtime env` prints, so none is dropped
//! silently. A known key with a bad value is an error naming the key and
//! the file. Security-relevant upstream keys whose feature this runtime
//! does not implement (guest seccomp, annotation overrides, the agent's
//! debug console, ...) are accepted only at the value that asks for
//! nothing, and refused otherwise with the fix: a configuration must never
//! believe it got a protection it did not get.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::hypervisor::{
    Accel, BootMedia, ImageFs, QemuConfig, SharedFs, VirtioFsCache, VsockBackend,
    DEFAULT_SHARED_FS_TAG, DEFAULT_STATE_ROOT, DEFAULT_VIRTIOFSD,
};

/// Install prefix compiled in (upstream's `PREFIX`).
pub const PREFIX: &str = match option_env!("KATA_PREFIX") {
    Some(p) => p,
    None => "/opt/kata",
};
/// Environment variable naming the configuration file (first lookup).
pub const CONF_FILE_ENV: &str = "KATA_CONF_FILE";
/// The administrator's configuration (second lookup).
pub const ETC_CONF_FILE: &str = "/etc/kata-containers/configuration.toml";

/// The packaged default configuration (third lookup).
pub fn default_conf_file() -> PathBuf {
    Path::new(PREFIX).join("share/defaults/kata-containers/configuration.toml")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no configuration file found; looked for {tried}; set {CONF_FILE_ENV} or install one")]
    NotFound { tried: String },
    #[error("cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: PathBuf, message: String },
    /// A known key with a value this runtime cannot use.
    #[error("{file}: {key}: {message}")]
    Value {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// `[hypervisor.qemu]`
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QemuSection {
    pub path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub image: Option<PathBuf>,
    /// `rootfs_type`: filesystem of `image` (ext4 or erofs).
    pub rootfs_type: String,
    pub machine_type: String,
    pub kernel_params: Vec<String>,
    pub default_vcpus: u32,
    /// MiB.
    pub default_memory: u32,
    pub shared_fs: String,
    pub virtio_fs_daemon: PathBuf,
    pub virtio_fs_cache: String,
    pub virtio_fs_extra_args: Vec<String>,
    pub enable_debug: bool,
    /// Our extension: `vhost-device-vsock` for hybrid vsock (no
    /// /dev/vhost-vsock). `None`: searched in `$PATH` and `~/.cargo/bin`.
    pub vhost_user_vsock_daemon: Option<PathBuf>,
    /// Our extension: "auto" (KVM when a probe boots, else TCG), "kvm", "tcg".
    pub accelerator: String,
    /// `seccompsandbox`: QEMU's `-sandbox` option, e.g.
    /// `on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`;
    /// empty: none.
    pub seccompsandbox: String,
}

/// `[agent.kata]`
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgentSection {
    pub enable_debug: bool,
    /// Seconds to wait for the agent to answer after boot.
    pub dial_timeout: u64,
    /// Our extension: seconds one agent call may take.
    pub request_timeout: u64,
}

/// `[runtime]`
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuntimeSection {
    pub enable_debug: bool,
    pub internetworking_model: String,
    pub disable_new_netns: bool,
    pub sandbox_cgroup_only: bool,
    pub static_sandbox_resource_mgmt: bool,
    /// Our extension: parent of the per-sandbox state directories.
    pub state_root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KataConfig {
    /// The file this was loaded from.
    pub file: PathBuf,
    pub hypervisor: QemuSection,
    pub agent: AgentSection,
    pub runtime: RuntimeSection,
    /// Keys and sections present in the file that this runtime does not
    /// use, as `[section] key`.
    pub ignored: Vec<String>,
}

/// Security-relevant upstream keys whose feature this runtime does not
/// implement: (section, key, the one accepted value as TOML, the fix).
const UNIMPLEMENTED_SECURITY_KEYS: &[(&str, &str, &str, &str)] = &[
    ("hypervisor.qemu", "enable_annotations", "[]",
     "this runtime applies no io.katacontainers.config.* annotation overrides; set it to [] or remove it"),
    ("hypervisor.qemu", "rootless", "false", "QEMU runs as root here; set rootless = false or remove it"),
    ("hypervisor.qemu", "guest_hook_path", "\"\"", "OCI hooks do not run in the guest; remove guest_hook_path"),
    ("agent.kata", "debug_console_enabled", "false",
     "the agent has no debug console in this release; set debug_console_enabled = false or remove it"),
    ("runtime", "disable_guest_seccomp", "true",
     "the guest does not enforce seccomp profiles yet; set disable_guest_seccomp = true (upstream's default) or remove it"),
    ("runtime", "sandbox_cgroup_only", "false",
     "the VM is not placed in the sandbox cgroup yet; set sandbox_cgroup_only = false or remove it"),
    ("runtime", "experimental", "[]", "no experimental features exist here; set experimental = [] or remove it"),
];

/// Upstream's allow-lists for paths that annotations may override. No
/// override is accepted ([`UNIMPLEMENTED_SECURITY_KEYS`]:
/// `enable_annotations`), so these constrain nothing further; they are
/// type-checked and count as used.
const ANNOTATION_PATH_LISTS: &[&str] = &[
    "valid_hypervisor_paths",
    "valid_jailer_paths",
    "valid_file_mem_backends",
    "valid_virtio_fs_daemon_paths",
    "valid_vhost_user_store_paths",
    "valid_entropy_sources",
];

/// The annotation prefix of upstream's per-pod configuration overrides.
pub const OVERRIDE_ANNOTATION_PREFIX: &str = "io.katacontainers.config.";

/// `Err` naming the first `io.katacontainers.config.*` annotation: this
/// runtime enables none of them (`enable_annotations` must be empty), and
/// ignoring one would let a pod believe its override took effect.
pub fn check_override_annotations<'a>(
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    let mut refused: Vec<&String> = keys
        .into_iter()
        .filter(|k| k.starts_with(OVERRIDE_ANNOTATION_PREFIX))
        .collect();
    refused.sort();
    match refused.first() {
        None => Ok(()),
        Some(k) => Err(format!(
            "annotation {k} is not enabled: this runtime enables no {OVERRIDE_ANNOTATION_PREFIX}* overrides \
             ([hypervisor.qemu] enable_annotations must be empty)"
        )),
    }
}

/// The configuration file to use: the first that exists in the lookup order,
/// given `KATA_CONF_FILE`'s value. A set `KATA_CONF_FILE` that does not exist
/// is an error (a typo must not silently select another file).
pub fn find_config_file(
    env_value: Option<&str>,
    candidates: &[PathBuf],
) -> Result<PathBuf, ConfigError> {
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if p.is_file() {
            return Ok(p);
        }
        return Err(ConfigError::Read {
            file: p,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("named by {CONF_FILE_ENV} but not a readable file"),
            ),
        });
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ConfigError::NotFound {
            tried: std::iter::once(format!("${CONF_FILE_ENV}"))
                .chain(candidates.iter().map(|p| p.display().to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The standard lookup (environment, /etc, packaged default) and load.
pub fn load() -> Result<KataConfig, ConfigError> {
    let env = std::env::var(CONF_FILE_ENV).ok();
    let file = find_config_file(
        env.as_deref(),
        &[PathBuf::from(ETC_CONF_FILE), default_conf_file()],
    )?;
    load_file(&file)
}

pub fn load_file(file: &Path) -> Result<KataConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse(&text, file)
}

/// Typed access to one section, recording which keys were used.
struct Section<'a> {
    file: &'a Path,
    name: &'static str,
    table: Option<&'a Table>,
    used: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            file: self.file.to_owned(),
            key: format!("[{}] {key}", self.name),
            message: message.into(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.table.and_then(|t| t.get(key))
    }

    fn string(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(key, format!("expected a string, found {}", v.type_str()))),
        }
    }

    fn string_or(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.string(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// A path; an empty string counts as unset (upstream templates leave
    /// unused paths empty).
    fn path(&mut self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self
            .string(key)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(v) => Err(self.err(
                key,
                format!("expected true or false, found {}", v.type_str()),
            )),
        }
    }

    fn uint(
        &mut self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Integer(i)) if *i >= min as i64 && (*i as u64) <= max => Ok(*i as u64),
            Some(Value::Integer(i)) => {
                Err(self.err(key, format!("{i} is out of range ({min}..={max})")))
            }
            Some(v) => Err(self.err(key, format!("expected an integer, found {}", v.type_str()))),
        }
    }

    fn string_list(&mut self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.err(
                        key,
                        format!(
                            "expected an array of strings, found an element of type {}",
                            other.type_str()
                        ),
                    )),
                })
                .collect(),
            Some(v) => Err(self.err(
                key,
                format!("expected an array of strings, found {}", v.type_str()),
            )),
        }
    }

    /// The keys this runtime does not use (upstream files have many), as
    /// `[section] key`.
    fn unknown(&self) -> Vec<String> {
        let Some(t) = self.table else {
            return Vec::new();
        };
        t.keys()
            .filter(|k| !self.used.contains(&k.as_str()))
            .map(|k| format!("[{}] {k}", self.name))
            .collect()
    }

    /// [`UNIMPLEMENTED_SECURITY_KEYS`] of this section.
    fn refuse_unimplemented(&mut self) -> Result<(), ConfigError> {
        let name = self.name;
        for (_, key, accepted, fix) in UNIMPLEMENTED_SECURITY_KEYS.iter().filter(|k| k.0 == name) {
            self.refuse_unless(key, accepted, fix)?;
        }
        Ok(())
    }

    /// Refuse, with the fix, a value other than `accepted` (TOML) for a key
    /// whose feature is not implemented.
    fn refuse_unless(
        &mut self,
        key: &'static str,
        accepted: &str,
        fix: &str,
    ) -> Result<(), ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(());
        };
        let want: Value = format!("v = {accepted}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(Value::Boolean(false));
        if *v == want {
            return Ok(());
        }
        Err(self.err(key, format!("{v} is not supported: {fix}")))
    }
}

fn subtable<'a>(root: &'a Table, path: &[&str]) -> Option<&'a Table> {
    let mut t = root;
    for p in path {
        t = t.get(*p)?.as_table()?;
    }
    Some(t)
}

/// Parse configuration text; `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<KataConfig, ConfigError> {
    let root: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
    let mut ignored_sections = Vec::new();
    for (k, v) in &root {
        let known = match k.as_str() {
            "hypervisor" => {
                if let Some(t) = v.as_table() {
                    for h in t.keys().filter(|h| h.as_str() != "qemu") {
                        ignored_sections.push(format!(
                            "[hypervisor.{h}] (only [hypervisor.qemu] is supported)"
                        ));
                    }
                }
                true
            }
            "agent" | "runtime" => true,
            _ => false,
        };
        if !known {
            ignored_sections.push(format!("[{k}]"));
        }
    }

    let mut h = Section {
        file,
        name: "hypervisor.qemu",
        table: subtable(&root, &["hypervisor", "qemu"]),
        used: Vec::new(),
    };
    if h.table.is_none() {
        return Err(h.err("", "section missing: the runtime needs [hypervisor.qemu] with at least kernel and initrd or image"));
    }
    let kernel = h.path("kernel")?.ok_or_else(|| {
        h.err(
            "kernel",
            "missing: set it to the guest kernel (vmlinux or bzImage)",
        )
    })?;
    let initrd = h.path("initrd")?;
    let image = h.path("image")?;
    match (&initrd, &image) {
        (Some(_), Some(_)) => {
            return Err(h.err("initrd", "both initrd and image are set; keep exactly one"))
        }
        (None, None) => {
            return Err(h.err("image", "neither image nor initrd is set; set exactly one"))
        }
        _ => {}
    }
    let rootfs_type = h.string_or("rootfs_type", "ext4")?;
    if !matches!(rootfs_type.as_str(), "ext4" | "erofs") {
        return Err(h.err(
            "rootfs_type",
            format!("{rootfs_type:?} is not supported: use ext4 or erofs"),
        ));
    }
    let machine_type = h.string_or("machine_type", "q35")?;
    if machine_type != "q35" {
        return Err(h.err(
            "machine_type",
            format!("{machine_type:?} is not supported: this runtime only runs q35"),
        ));
    }
    let kernel_params = h
        .string("kernel_params")?
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let default_vcpus = h.uint("default_vcpus", 1, 1, 240)? as u32;
    let default_memory = h.uint("default_memory", 2048, 64, 1 << 20)? as u32;
    let shared_fs = h.string_or("shared_fs", "virtio-fs")?;
    if shared_fs != "virtio-fs" {
        return Err(h.err(
            "shared_fs",
            format!("{shared_fs:?} is not supported: use \"virtio-fs\" (container rootfs sharing needs it)"),
        ));
    }
    let virtio_fs_daemon = h
        .path("virtio_fs_daemon")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VIRTIOFSD));
    let virtio_fs_cache = h.string_or("virtio_fs_cache", "auto")?;
    if let Err(e) = virtio_fs_cache.parse::<VirtioFsCache>() {
        return Err(h.err("virtio_fs_cache", e));
    }
    let virtio_fs_extra_args = h.string_list("virtio_fs_extra_args")?;
    let accelerator = h.string_or("accelerator", "auto")?;
    if let Err(e) = accelerator.parse::<Accel>() {
        return Err(h.err("accelerator", e));
    }
    let seccompsandbox = h.string_or("seccompsandbox", "")?;
    if let Err(e) = crate::hypervisor::check_sandbox_option(&seccompsandbox) {
        return Err(h.err("seccompsandbox", e));
    }
    let hypervisor = QemuSection {
        path: h
            .path("path")?
            .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64")),
        kernel,
        initrd,
        image,
        rootfs_type,
        machine_type,
        kernel_params,
        default_vcpus,
        default_memory,
        shared_fs,
        virtio_fs_daemon,
        virtio_fs_cache,
        virtio_fs_extra_args,
        enable_debug: h.bool("enable_debug", false)?,
        vhost_user_vsock_daemon: h.path("vhost_user_vsock_daemon")?,
        accelerator,
        seccompsandbox,
    };
    for key in ANNOTATION_PATH_LISTS {
        h.string_list(key)?;
    }
    h.refuse_unimplemented()?;
    let mut ignored = h.unknown();

    let mut a = Section {
        file,
        name: "agent.kata",
        table: subtable(&root, &["agent", "kata"]),
        used: Vec::new(),
    };
    let agent = AgentSection {
        enable_debug: a.bool("enable_debug", false)?,
        dial_timeout: a.uint("dial_timeout", 45, 1, 3600)?,
        request_timeout: a.uint("request_timeout", 30, 1, 3600)?,
    };
    a.refuse_unimplemented()?;
    ignored.extend(a.unknown());

    let mut r = Section {
        file,
        name: "runtime",
        table: subtable(&root, &["runtime"]),
        used: Vec::new(),
    };
    let internetworking_model = r.string_or("internetworking_model", "none")?;
    if !matches!(
        internetworking_model.as_str(),
        "none" | "tcfilter" | "macvtap"
    ) {
        return Err(r.err(
            "internetworking_model",
            format!("{internetworking_model:?} is unknown: use none, tcfilter or macvtap"),
        ));
    }
    let runtime = RuntimeSection {
        enable_debug: r.bool("enable_debug", false)?,
        internetworking_model,
        disable_new_netns: r.bool("disable_new_netns", false)?,
        sandbox_cgroup_only: r.bool("sandbox_cgroup_only", false)?,
        static_sandbox_resource_mgmt: r.bool("static_sandbox_resource_mgmt", true)?,
        state_root: r
            .path("state_root")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT)),
    };
    r.refuse_unimplemented()?;
    ignored.extend(r.unknown());

    Ok(KataConfig {
        file: file.to_owned(),
        hypervisor,
        agent,
        runtime,
        ignored: ignored_sections.into_iter().chain(ignored).collect(),
    })
}

impl KataConfig {
    /// Any of the three `enable_debug` switches.
    pub fn debug(&self) -> bool {
        self.hypervisor.enable_debug || self.agent.enable_debug || self.runtime.enable_debug
    }

    pub fn dial_timeout(&self) -> Duration {
        Duration::from_secs(self.agent.dial_timeout)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.agent.request_timeout)
    }

    /// The VM of sandbox `id`, sharing `shared_dir` over virtio-fs.
    pub fn qemu_config(&self, id: &str, shared_dir: &Path) -> QemuConfig {
        let h = &self.hypervisor;
        let boot = match (&h.initrd, &h.image) {
            (Some(i), _) => BootMedia::Initrd(i.clone()),
            (None, Some(img)) => BootMedia::Image {
                path: img.clone(),
                fs: if h.rootfs_type == "erofs" {
                    ImageFs::Erofs
                } else {
                    ImageFs::Ext4
                },
                dax: true,
            },
            // parse() guarantees one of them
            (None, None) => BootMedia::Initrd(PathBuf::new()),
        };
        let mut cfg = QemuConfig::new(id, &h.kernel, boot);
        cfg.qemu_binary = h.path.clone();
        cfg.kernel_params = h.kernel_params.clone();
        if self.agent.enable_debug {
            cfg.kernel_params.insert(0, "agent.log=debug".into());
        }
        cfg.quiet = !h.enable_debug;
        cfg.memory_mib = h.default_memory;
        cfg.vcpus = h.default_vcpus;
        cfg.accel = h.accelerator.parse().unwrap_or_default();
        cfg.vsock = VsockBackend::Auto;
        cfg.vsock_daemon = h.vhost_user_vsock_daemon.clone();
        cfg.state_root = self.runtime.state_root.clone();
        cfg.sandbox_option = Some(self.hypervisor.seccompsandbox.clone()).filter(|s| !s.is_empty());
        cfg.shared_fs = Some(SharedFs {
            daemon: h.virtio_fs_daemon.clone(),
            source: shared_dir.to_owned(),
            tag: DEFAULT_SHARED_FS_TAG.into(),
            cache: h.virtio_fs_cache.parse().unwrap_or_default(),
            extra_args: h.virtio_fs_extra_args.clone(),
        });
        // A TCG boot on a loaded host takes its time; QMP comes up fast.
        cfg.startup_timeout = Duration::from_secs(30);
        // The shim is long-lived and multi-threaded: the thread that starts
        // the VM (a ttrpc worker) may end while the VM must go on.
        cfg.kill_on_parent_death = false;
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[hypervisor.qemu]
kernel = "/k/vmlinuz"
initrd = "/k/initrd.img"
"#;

    fn parse_str(text: &str) -> Result<KataConfig, ConfigError> {
        parse(text, Path::new("/etc/kata-containers/configuration.toml"))
    }

    #[test]
    fn defaults_follow_upstream() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(
            c.hypervisor.path,
            PathBuf::from("/usr/bin/qemu-system-x86_64")
        );
        assert_eq!(c.hypervisor.default_memory, 2048);
        assert_eq!(c.hypervisor.default_vcpus, 1);
        assert_eq!(c.hypervisor.shared_fs, "virtio-fs");
        assert_eq!(
            c.hypervisor.virtio_fs_daemon,
            PathBuf::from(DEFAULT_VIRTIOFSD)
        );
        assert_eq!(c.agent.dial_timeout, 45);
        assert_eq!(c.runtime.state_root, PathBuf::from("/run/kata-containers"));
        assert!(!c.debug());
    }

    #[test]
    fn full_file_and_unknown_keys() {
        let text = r#"
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinuz.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
rootfs_type = "erofs"
machine_type = "q35"
kernel_params = " agent.log=debug  systemd.show_status=0 "
default_vcpus = 2
default_memory = 512
shared_fs = "virtio-fs"
virtio_fs_daemon = "/usr/lib/qemu/virtiofsd"
virtio_fs_cache = "always"
virtio_fs_extra_args = ["--thread-pool-size=1"]
enable_debug = true
vhost_user_vsock_daemon = "/opt/kata/libexec/vhost-device-vsock"
accelerator = "tcg"
# keys upstream has and this runtime ignores
block_device_driver = "virtio-scsi"
enable_iommu = false
valid_hypervisor_paths = ["/usr/bin/qemu-system-x86_64"]

[hypervisor.clh]
path = "/usr/bin/cloud-hypervisor"

[factory]
enable_template = false

[agent.kata]
enable_debug = true
dial_timeout = 120
kernel_modules = []

[runtime]
enable_debug = true
internetworking_model = "tcfilter"
sandbox_cgroup_only = false
static_sandbox_resource_mgmt = true
experimental = []
"#;
        let c = parse_str(text).unwrap();
        assert_eq!(
            c.ignored,
            [
                "[factory]",
                "[hypervisor.clh] (only [hypervisor.qemu] is supported)",
                "[hypervisor.qemu] block_device_driver",
                "[hypervisor.qemu] enable_iommu",
                "[agent.kata] kernel_modules",
            ],
            "every key this runtime does not use is reported"
        );
        let h = &c.hypervisor;
        assert_eq!(
            h.kernel_params,
            ["agent.log=debug", "systemd.show_status=0"]
        );
        assert_eq!(h.default_vcpus, 2);
        assert_eq!(h.rootfs_type, "erofs");
        assert_eq!(h.initrd, None);
        assert_eq!(h.virtio_fs_extra_args, ["--thread-pool-size=1"]);
        assert_eq!(c.agent.dial_timeout, 120);
        assert!(!c.runtime.sandbox_cgroup_only);
        assert!(c.debug());

        let q = c.qemu_config(
            "sb1",
            Path::new("/run/kata-containers/shared/sandboxes/sb1"),
        );
        assert_eq!(q.memory_mib, 512);
        assert_eq!(q.accel, Accel::Tcg);
        assert!(!q.kill_on_parent_death);
        assert!(matches!(
            q.boot,
            BootMedia::Image {
                fs: ImageFs::Erofs,
                dax: true,
                ..
            }
        ));
        let shared = q.shared_fs.unwrap();
        assert_eq!(shared.tag, "kataShared");
        assert_eq!(shared.cache, VirtioFsCache::Always);
        assert_eq!(
            q.vsock_daemon,
            Some(PathBuf::from("/opt/kata/libexec/vhost-device-vsock"))
        );
        assert_eq!(q.kernel_params[0], "agent.log=debug");
    }

    #[test]
    fn bad_values_name_the_key_and_the_file() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "default_memory = \"2G\"",
                "[hypervisor.qemu] default_memory",
                "expected an integer",
            ),
            (
                "default_memory = 16",
                "[hypervisor.qemu] default_memory",
                "out of range",
            ),
            (
                "default_vcpus = 0",
                "[hypervisor.qemu] default_vcpus",
                "out of range",
            ),
            (
                "shared_fs = \"virtio-9p\"",
                "[hypervisor.qemu] shared_fs",
                "virtio-9p",
            ),
            (
                "virtio_fs_cache = \"fast\"",
                "[hypervisor.qemu] virtio_fs_cache",
                "fast",
            ),
            (
                "machine_type = \"pc\"",
                "[hypervisor.qemu] machine_type",
                "q35",
            ),
            (
                "enable_debug = \"yes\"",
                "[hypervisor.qemu] enable_debug",
                "true or false",
            ),
            ("image = \"/k/img\"", "[hypervisor.qemu] initrd", "both"),
            (
                "accelerator = \"hvf\"",
                "[hypervisor.qemu] accelerator",
                "hvf",
            ),
        ];
        for (line, key, what) in cases {
            let text = format!("{MINIMAL}{line}\n");
            let err = parse_str(&text).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("/etc/kata-containers/configuration.toml: "),
                "{line}: {msg}"
            );
            assert!(msg.contains(key), "{line}: {msg}");
            assert!(msg.contains(what), "{line}: {msg}");
        }
        let err = parse_str(
            "[agent.kata]\ndial_timeout = -1\n[hypervisor.qemu]\nkernel=\"/k\"\ninitrd=\"/i\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("[agent.kata] dial_timeout"),
            "{err}"
        );
        let err = parse_str("[hypervisor.qemu]\ninitrd = \"/i\"\n").unwrap_err();
        assert!(err.to_string().contains("kernel: missing"), "{err}");
        let err = parse_str("[runtime]\n").unwrap_err();
        assert!(err.to_string().contains("[hypervisor.qemu]"), "{err}");
        let err = parse_str("[hypervisor.qemu\nkernel=1").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join("env.toml");
        let etc = dir.path().join("etc.toml");
        let share = dir.path().join("share.toml");
        let candidates = [etc.clone(), share.clone()];

        let err = find_config_file(None, &candidates).unwrap_err();
        assert!(err.to_string().contains("etc.toml"), "{err}");
        assert!(err.to_string().contains("share.toml"), "{err}");

        std::fs::write(&share, MINIMAL).unwrap();
        assert_eq!(find_config_file(None, &candidates).unwrap(), share);
        std::fs::write(&etc, MINIMAL).unwrap();
        assert_eq!(find_config_file(None, &candidates).unwrap(), etc);
        assert_eq!(find_config_file(Some(""), &candidates).unwrap(), etc);

        // KATA_CONF_FILE wins, and a wrong one is an error, not a fallback.
        let err = find_config_file(env_file.to_str(), &candidates).unwrap_err();
        assert!(err.to_string().contains("env.toml"), "{err}");
        std::fs::write(&env_file, MINIMAL).unwrap();
        assert_eq!(
            find_config_file(env_file.to_str(), &candidates).unwrap(),
            env_file
        );
        let c = load_file(&env_file).unwrap();
        assert_eq!(c.file, env_file);

        assert_eq!(
            default_conf_file(),
            Path::new(PREFIX).join("share/defaults/kata-containers/configuration.toml")
        );
    }

    #[test]
    fn template_renders_to_a_valid_configuration() {
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/configuration.toml.in"),
        )
        .unwrap();
        let mut ctx = tera::Context::new();
        ctx.insert("prefix", "/opt/kata");
        ctx.insert("libexec", "/opt/kata/libexec");
        let text = tera::Tera::one_off(&template, &ctx, false).unwrap();
        let c = parse_str(&text).unwrap();
        assert_eq!(
            c.hypervisor.kernel,
            PathBuf::from("/opt/kata/share/kata-containers/vmlinuz.container")
        );
        assert_eq!(
            c.hypervisor.vhost_user_vsock_daemon,
            Some(PathBuf::from("/opt/kata/libexec/vhost-device-vsock"))
        );
        assert!(c.hypervisor.image.is_some() ^ c.hypervisor.initrd.is_some());
        assert!(!text.contains("{{"), "unrendered placeholders: {text}");
        assert!(
            c.ignored.is_empty(),
            "the shipped file sets keys the runtime ignores: {:?}",
            c.ignored
        );
        assert!(
            c.hypervisor.seccompsandbox.starts_with("on,"),
            "QEMU's seccomp filter ships on"
        );
    }

    #[test]
    fn unimplemented_security_features_are_refused_with_the_fix() {
        for (section, line, needle) in [
            (
                "hypervisor.qemu",
                "enable_annotations = [\"kernel_params\"]",
                "enable_annotations",
            ),
            ("hypervisor.qemu", "rootless = true", "rootless"),
            (
                "hypervisor.qemu",
                "guest_hook_path = \"/usr/share/oci/hooks\"",
                "guest_hook_path",
            ),
            (
                "agent.kata",
                "debug_console_enabled = true",
                "debug_console_enabled",
            ),
            (
                "runtime",
                "disable_guest_seccomp = false",
                "disable_guest_seccomp",
            ),
            (
                "runtime",
                "sandbox_cgroup_only = true",
                "sandbox_cgroup_only",
            ),
            ("runtime", "experimental = [\"newstore\"]", "experimental"),
        ] {
            let text = if section == "hypervisor.qemu" {
                format!("{MINIMAL}{line}\n")
            } else {
                format!("{MINIMAL}\n[{section}]\n{line}\n")
            };
            let e = parse_str(&text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("[{section}] {needle}")) && e.contains("not supported"),
                "{line}: {e}"
            );
            assert!(
                e.contains("set it to") || e.contains("remove"),
                "{line}: the error must say the fix: {e}"
            );
        }
        // The values that ask for nothing are accepted and not reported.
        let text = format!(
            "{MINIMAL}enable_annotations = []\nrootless = false\nguest_hook_path = \"\"\nvalid_hypervisor_paths = [\"/usr/bin/qemu-system-x86_64\"]\n\
             [agent.kata]\ndebug_console_enabled = false\n[runtime]\ndisable_guest_seccomp = true\nsandbox_cgroup_only = false\nexperimental = []\n"
        );
        let c = parse_str(&text).unwrap();
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let e = parse_str(&format!("{MINIMAL}valid_hypervisor_paths = \"/usr/bin\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("valid_hypervisor_paths") && e.contains("array"),
            "{e}"
        );
    }

    #[test]
    fn seccompsandbox_reaches_qemu_and_typos_are_refused() {
        let on = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
        let c = parse_str(&format!("{MINIMAL}seccompsandbox = \"{on}\"\n")).unwrap();
        let q = c.qemu_config("sb1", Path::new("/s"));
        assert_eq!(q.sandbox_option.as_deref(), Some(on));
        assert_eq!(
            parse_str(MINIMAL)
                .unwrap()
                .qemu_config("sb1", Path::new("/s"))
                .sandbox_option,
            None
        );
        for bad in ["yes", "on,spawn=maybe", "on,spwan=deny", "on,obsolete"] {
            let e = parse_str(&format!("{MINIMAL}seccompsandbox = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("[hypervisor.qemu] seccompsandbox"), "{bad}: {e}");
        }
    }

    #[test]
    fn override_annotations_are_refused_by_name() {
        let keys = [
            "io.kubernetes.cri.sandbox-id".to_string(),
            "io.katacontainers.config.hypervisor.kernel".to_string(),
        ];
        let e = check_override_annotations(&keys).unwrap_err();
        assert!(
            e.contains("io.katacontainers.config.hypervisor.kernel")
                && e.contains("enable_annotations"),
            "{e}"
        );
        assert!(check_override_annotations(&keys[..1]).is_ok());
    }
}
