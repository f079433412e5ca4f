//! `configuration.toml`: the runtime's configuration, with upstream Kata's
//! section and key names for what this runtime supports.
//!
//! Lookup order (as upstream): `$KATA_CONF_FILE`,
//! `/etc/kata-containers/configuration.toml`, then
//! `<prefix>/share/defaults/kata-containers/configuration.toml` with the
//! compile-time prefix [`PREFIX`] (`KATA_PREFIX` at build time, default
//! `/opt/kata`).
//!
//! The schema is one set of serde types, [`ConfigFile`] and its sections
//! (their `Default` impls are the defaults): [`parse`] reads through them,
//! [`ConfigFile::to_toml`] writes through them (`kata-runtime env`, the e2e
//! harness), and the shipped template is tested against them.
//!
//! Upstream files carry many keys this runtime does not use: unknown keys
//! (and sections) are collected in [`KataConfig::ignored`], which the shim
//! logs as a warning and `kata-runtime env` prints, so none is dropped
//! silently. A known key with a bad value is an error naming the key and
//! the file. Security-relevant upstream keys whose feature this runtime
//! does not implement (annotation overrides, the agent's
//! debug console, ...) are accepted only at the value that asks for
//! nothing, and refused otherwise with the fix: a configuration must never
//! believe it got a protection it did not get.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hypervisor::{
    verity::VerityParams, Accel, BootMedia, ImageFs, QemuConfig, SharedFs, VirtioFsCache,
    VsockBackend, DEFAULT_SHARED_FS_TAG, DEFAULT_STATE_ROOT, DEFAULT_VIRTIOFSD,
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
/// `[runtime] internetworking_model` values.
pub const NETWORK_MODEL_TCFILTER: &str = "tcfilter";
pub const NETWORK_MODEL_NONE: &str = "none";

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

/// `[hypervisor.qemu]`. Missing keys take upstream's defaults
/// ([`Default`]); `kernel` has none (empty: unset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QemuSection {
    /// Empty: the default.
    #[serde(deserialize_with = "de::path")]
    pub path: PathBuf,
    #[serde(deserialize_with = "de::path")]
    pub kernel: PathBuf,
    /// QEMU's `-bios`. Empty: QEMU's default firmware (SeaBIOS).
    #[serde(deserialize_with = "de::path")]
    pub firmware: PathBuf,
    #[serde(
        deserialize_with = "de::opt_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub initrd: Option<PathBuf>,
    #[serde(
        deserialize_with = "de::opt_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub image: Option<PathBuf>,
    /// `rootfs_type`: filesystem of `image` (ext4 or erofs).
    #[serde(deserialize_with = "de::string")]
    pub rootfs_type: String,
    /// Upstream's `root_hash=…,salt=…,data_blocks=…,data_block_size=…,
    /// hash_block_size=…` of a verity image (what `xtask image --verity`
    /// records in the manifest): the guest mounts `image` through
    /// dm-verity. Empty: no verity.
    #[serde(
        deserialize_with = "de::string",
        skip_serializing_if = "String::is_empty"
    )]
    pub kernel_verity_params: String,
    #[serde(deserialize_with = "de::string")]
    pub machine_type: String,
    /// One string in the file (split at whitespace).
    #[serde(
        deserialize_with = "de::kernel_params",
        serialize_with = "ser::kernel_params"
    )]
    pub kernel_params: Vec<String>,
    #[serde(deserialize_with = "de::uint::<_, u32, 1, 240>")]
    pub default_vcpus: u32,
    /// MiB.
    #[serde(deserialize_with = "de::uint::<_, u32, 64, 1048576>")]
    pub default_memory: u32,
    #[serde(deserialize_with = "de::string")]
    pub shared_fs: String,
    /// Empty: the default.
    #[serde(deserialize_with = "de::path")]
    pub virtio_fs_daemon: PathBuf,
    #[serde(deserialize_with = "de::string")]
    pub virtio_fs_cache: String,
    #[serde(deserialize_with = "de::strings")]
    pub virtio_fs_extra_args: Vec<String>,
    #[serde(deserialize_with = "de::boolean")]
    pub enable_debug: bool,
    /// Our extension: `vhost-device-vsock` for hybrid vsock (no
    /// /dev/vhost-vsock). `None`: searched in `$PATH` and `~/.cargo/bin`.
    #[serde(
        deserialize_with = "de::opt_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub vhost_user_vsock_daemon: Option<PathBuf>,
    /// Our extension: "auto" (KVM when a probe boots, else TCG), "kvm", "tcg".
    #[serde(deserialize_with = "de::string")]
    pub accelerator: String,
    /// Our extension: MiB of TCG's translation cache (QEMU's
    /// `-accel tcg,tb-size=`) when the accelerator is TCG; 0: QEMU's
    /// default (1 GiB, filled as the guest runs code), the default: a
    /// smaller cache saves memory and slows container starts (README,
    /// "Start time and footprint").
    #[serde(deserialize_with = "de::uint::<_, u32, 0, 4096>")]
    pub tcg_tb_size: u32,
    /// `seccompsandbox`: QEMU's `-sandbox` option, e.g.
    /// `on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`;
    /// empty: none.
    #[serde(deserialize_with = "de::string")]
    pub seccompsandbox: String,

    // Upstream keys of features this runtime does not implement: accepted
    // only at the value that asks for nothing (UNIMPLEMENTED_SECURITY_KEYS),
    // written out only when set otherwise.
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub enable_annotations: Vec<String>,
    #[serde(deserialize_with = "de::boolean", skip_serializing_if = "is_false")]
    pub rootless: bool,
    #[serde(
        deserialize_with = "de::string",
        skip_serializing_if = "String::is_empty"
    )]
    pub guest_hook_path: String,

    // Upstream's allow-lists for paths that annotations may override. No
    // override is accepted (`enable_annotations` must be empty), so these
    // constrain nothing further: type-checked, and not reported as ignored.
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub valid_hypervisor_paths: Vec<String>,
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub valid_jailer_paths: Vec<String>,
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub valid_file_mem_backends: Vec<String>,
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub valid_virtio_fs_daemon_paths: Vec<String>,
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub valid_vhost_user_store_paths: Vec<String>,
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub valid_entropy_sources: Vec<String>,
}

/// The default QEMU binary (upstream's).
pub const DEFAULT_QEMU: &str = "/usr/bin/qemu-system-x86_64";

impl Default for QemuSection {
    fn default() -> Self {
        QemuSection {
            path: PathBuf::from(DEFAULT_QEMU),
            kernel: PathBuf::new(),
            firmware: PathBuf::new(),
            initrd: None,
            image: None,
            rootfs_type: "ext4".into(),
            kernel_verity_params: String::new(),
            machine_type: "q35".into(),
            kernel_params: Vec::new(),
            default_vcpus: 1,
            default_memory: 2048,
            shared_fs: "virtio-fs".into(),
            virtio_fs_daemon: PathBuf::from(DEFAULT_VIRTIOFSD),
            virtio_fs_cache: "auto".into(),
            virtio_fs_extra_args: Vec::new(),
            enable_debug: false,
            vhost_user_vsock_daemon: None,
            accelerator: "auto".into(),
            tcg_tb_size: 0,
            seccompsandbox: String::new(),
            enable_annotations: Vec::new(),
            rootless: false,
            guest_hook_path: String::new(),
            valid_hypervisor_paths: Vec::new(),
            valid_jailer_paths: Vec::new(),
            valid_file_mem_backends: Vec::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
            valid_vhost_user_store_paths: Vec::new(),
            valid_entropy_sources: Vec::new(),
        }
    }
}

/// `[agent.kata]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSection {
    #[serde(deserialize_with = "de::boolean")]
    pub enable_debug: bool,
    /// Seconds to wait for the agent to answer after boot.
    #[serde(deserialize_with = "de::uint::<_, u64, 1, 3600>")]
    pub dial_timeout: u64,
    /// Our extension: seconds one agent call may take.
    #[serde(deserialize_with = "de::uint::<_, u64, 1, 3600>")]
    pub request_timeout: u64,
    /// A root shell in the guest for `kata-runtime exec <sandbox-id>`: the
    /// guest kernel gets [`DEBUG_CONSOLE_KERNEL_PARAMS`], the agent listens
    /// on vsock port [`DEBUG_CONSOLE_VPORT`]. Off by default (upstream's).
    #[serde(deserialize_with = "de::boolean", skip_serializing_if = "is_false")]
    pub debug_console_enabled: bool,
    /// Modules the agent loads in the guest at CreateSandbox, upstream's
    /// `"NAME KEY=VALUE ..."` entries (checked here, by the rule the agent
    /// applies). The guest's image must carry them under /lib/modules.
    #[serde(
        deserialize_with = "de::kernel_modules",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub kernel_modules: Vec<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            enable_debug: false,
            dial_timeout: 45,
            request_timeout: 30,
            debug_console_enabled: false,
            kernel_modules: Vec::new(),
        }
    }
}

/// `[runtime]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeSection {
    #[serde(deserialize_with = "de::boolean")]
    pub enable_debug: bool,
    /// How the pod's network reaches the guest: `tcfilter` (upstream's
    /// default: a tap per pod veth, tc redirects both ways, see
    /// [`crate::network`]) or `none` (no NIC; containers get the guest's
    /// loopback only).
    #[serde(deserialize_with = "de::string")]
    pub internetworking_model: String,
    /// Upstream's key: `true` leaves the pod's network namespace alone; it
    /// needs `internetworking_model = "none"`, as upstream.
    #[serde(deserialize_with = "de::boolean")]
    pub disable_new_netns: bool,
    /// Not implemented: only `false` is accepted.
    #[serde(deserialize_with = "de::boolean")]
    pub sandbox_cgroup_only: bool,
    /// The VM is sized at start for the pod's limits (see `shim::sizing`).
    #[serde(deserialize_with = "de::boolean")]
    pub static_sandbox_resource_mgmt: bool,
    /// Our extension: parent of the per-sandbox state directories. Empty:
    /// the default.
    #[serde(deserialize_with = "de::path")]
    pub state_root: PathBuf,
    /// Upstream's key: `true` (the default) leaves the container's seccomp
    /// profile out of what the guest gets (the VM is the boundary); `false`
    /// has the agent enforce it.
    #[serde(deserialize_with = "de::boolean")]
    pub disable_guest_seccomp: bool,
    /// Not implemented: only `[]` is accepted.
    #[serde(
        deserialize_with = "de::strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub experimental: Vec<String>,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            enable_debug: false,
            internetworking_model: NETWORK_MODEL_TCFILTER.into(),
            disable_new_netns: false,
            sandbox_cgroup_only: false,
            static_sandbox_resource_mgmt: true,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            disable_guest_seccomp: true,
            experimental: Vec::new(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `[factory]`: VM templating (see `crate::hypervisor::template`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FactorySection {
    /// Start sandboxes from the template `kata-runtime factory init` made,
    /// instead of booting each. Off by default, as upstream: clones begin
    /// from the same guest memory, the cross-VM side-channel exposure
    /// upstream documents for templating (CVE-2015-2877 class).
    #[serde(deserialize_with = "de::boolean")]
    pub enable_template: bool,
    /// Where the template lives (a private tmpfs). Empty: the default.
    #[serde(deserialize_with = "de::path")]
    pub template_path: PathBuf,
    /// Upstream's VMCache (a pool of booted VMs): not implemented, only 0
    /// is accepted.
    #[serde(deserialize_with = "de::uint::<_, u32, 0, 1024>")]
    pub vm_cache_number: u32,
}

impl Default for FactorySection {
    fn default() -> Self {
        FactorySection {
            enable_template: false,
            template_path: PathBuf::from(crate::hypervisor::template::DEFAULT_TEMPLATE_PATH),
            vm_cache_number: 0,
        }
    }
}

/// `[hypervisor]`: only `[hypervisor.qemu]` is supported.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Hypervisors {
    pub qemu: QemuSection,
}

/// `[agent]`: only `[agent.kata]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Agents {
    pub kata: AgentSection,
}

/// The schema of `configuration.toml`: what [`parse`] reads and what
/// [`ConfigFile::to_toml`] writes (the one source of truth for both; the
/// e2e harness writes its configuration through it).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    pub hypervisor: Hypervisors,
    pub agent: Agents,
    pub runtime: RuntimeSection,
    pub factory: FactorySection,
}

impl ConfigFile {
    /// The file's text, which [`parse`] reads back to the same value.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// A loaded configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KataConfig {
    /// The file this was loaded from.
    pub file: PathBuf,
    pub hypervisor: QemuSection,
    pub agent: AgentSection,
    pub runtime: RuntimeSection,
    pub factory: FactorySection,
    /// Keys and sections present in the file that this runtime does not
    /// use, as `[section] key` (a whole section: `[section]`).
    pub ignored: Vec<String>,
}

/// Security-relevant upstream keys whose feature this runtime does not
/// implement: (section, key, the one accepted value as TOML, the fix). Each
/// is a field of its section, whose default is that value.
const UNIMPLEMENTED_SECURITY_KEYS: &[(&str, &str, &str, &str)] = &[
    ("hypervisor.qemu", "enable_annotations", "[]",
     "this runtime applies no io.katacontainers.config.* annotation overrides; set it to [] or remove it"),
    ("hypervisor.qemu", "rootless", "false", "QEMU runs as root here; set rootless = false or remove it"),
    ("hypervisor.qemu", "guest_hook_path", "\"\"", "OCI hooks do not run in the guest; remove guest_hook_path"),
    ("runtime", "sandbox_cgroup_only", "false",
     "the VM is not placed in the sandbox cgroup yet; set sandbox_cgroup_only = false or remove it"),
    ("runtime", "experimental", "[]", "no experimental features exist here; set experimental = [] or remove it"),
    ("factory", "vm_cache_number", "0",
     "VMCache (a pool of booted VMs) is not implemented; set it to 0 or remove it (templating is enable_template)"),
];

/// The guest vsock port of the agent's debug console (upstream's fixed
/// value; no configuration key sets it).
pub const DEBUG_CONSOLE_VPORT: u32 = 1026;

/// What `debug_console_enabled = true` appends to the guest kernel command
/// line (upstream's two parameters: the flag, then the port).
pub const DEBUG_CONSOLE_KERNEL_PARAMS: [&str; 2] =
    ["agent.debug_console", "agent.debug_console_vport=1026"];

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

/// Field deserializers: the type errors say what the key wants in words
/// (`expected an integer, found string`), and the bounds of a number are
/// checked where it is read, so the error carries the key's path.
mod de {
    use std::path::PathBuf;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use toml::Value;

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(s),
            v => Err(D::Error::custom(format!(
                "expected a string, found {}",
                v.type_str()
            ))),
        }
    }

    pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        string(d).map(PathBuf::from)
    }

    /// A path; an empty string counts as unset (upstream templates leave
    /// unused paths empty).
    pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Some(string(d)?)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    }

    pub fn kernel_params<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(string(d)?.split_whitespace().map(str::to_string).collect())
    }

    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match Value::deserialize(d)? {
            Value::Boolean(b) => Ok(b),
            v => Err(D::Error::custom(format!(
                "expected true or false, found {}",
                v.type_str()
            ))),
        }
    }

    /// An integer in `MIN..=MAX`.
    pub fn uint<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let out_of_range =
            |i: i64| D::Error::custom(format!("{i} is out of range ({MIN}..={MAX})"));
        match Value::deserialize(d)? {
            Value::Integer(i) if i >= 0 && (MIN..=MAX).contains(&(i as u64)) => {
                T::try_from(i as u64).map_err(|_| out_of_range(i))
            }
            Value::Integer(i) => Err(out_of_range(i)),
            v => Err(D::Error::custom(format!(
                "expected an integer, found {}",
                v.type_str()
            ))),
        }
    }

    /// `["NAME KEY=VALUE ...", ...]`, each entry checked.
    pub fn kernel_modules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let entries = strings(d)?;
        for e in &entries {
            protocols::kernel_modules::parse_entry(e).map_err(D::Error::custom)?;
        }
        Ok(entries)
    }

    pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        match Value::deserialize(d)? {
            Value::Array(a) => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!(
                        "expected an array of strings, found an element of type {}",
                        other.type_str()
                    ))),
                })
                .collect(),
            v => Err(D::Error::custom(format!(
                "expected an array of strings, found {}",
                v.type_str()
            ))),
        }
    }
}

mod ser {
    use serde::Serializer;

    /// `kernel_params` is one string in the file.
    pub fn kernel_params<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.join(" "))
    }
}

/// `[a.b] key` for the path `a.b.key`; `[a]` for a top-level `a`.
fn key_name(path: &[String]) -> String {
    match path {
        [] => String::new(),
        [section] => format!("[{section}]"),
        [section @ .., key] => format!("[{}] {key}", section.join(".")),
    }
}

/// How an unused key or section (its path) is reported, and where it sorts:
/// whole sections first, then keys section by section.
fn describe_ignored(path: &[String]) -> ((u8, u8), String) {
    match path {
        [h, name] if h == "hypervisor" => (
            (0, 0),
            format!("[hypervisor.{name}] (only [hypervisor.qemu] is supported)"),
        ),
        [_] => ((0, 0), key_name(path)),
        [section @ .., _] => {
            let rank = match section.join(".").as_str() {
                "hypervisor.qemu" => 0,
                "agent.kata" => 1,
                "runtime" => 2,
                _ => 3,
            };
            ((1, rank), key_name(path))
        }
        [] => ((0, 0), String::new()),
    }
}

fn ignored_path(p: &serde_ignored::Path, out: &mut Vec<String>) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push(index.to_string());
        }
        Path::Map { parent, key } => {
            ignored_path(parent, out);
            out.push(key.clone());
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent, out),
    }
}

/// Parse configuration text; `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<KataConfig, ConfigError> {
    let value_err = |key: String, message: String| ConfigError::Value {
        file: file.to_owned(),
        key,
        message,
    };
    let root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
    if root
        .get("hypervisor")
        .and_then(|h| h.get("qemu"))
        .and_then(toml::Value::as_table)
        .is_none()
    {
        return Err(value_err(
            "[hypervisor.qemu] ".into(),
            "section missing: the runtime needs [hypervisor.qemu] with at least kernel and initrd or image".into(),
        ));
    }

    let mut ignored: Vec<((u8, u8), String)> = Vec::new();
    let mut collect = |p: serde_ignored::Path| {
        let mut segments = Vec::new();
        ignored_path(&p, &mut segments);
        ignored.push(describe_ignored(&segments));
    };
    let de = serde_ignored::Deserializer::new(toml::Value::Table(root.clone()), &mut collect);
    let mut cf: ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => index.to_string(),
                serde_path_to_error::Segment::Map { key } => key.clone(),
                serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                serde_path_to_error::Segment::Unknown => "?".into(),
            })
            .collect();
        value_err(key_name(&path), e.into_inner().message().to_string())
    })?;
    ignored.sort();

    // Empty paths count as unset.
    let h = &mut cf.hypervisor.qemu;
    if h.path.as_os_str().is_empty() {
        h.path = PathBuf::from(DEFAULT_QEMU);
    }
    if h.virtio_fs_daemon.as_os_str().is_empty() {
        h.virtio_fs_daemon = PathBuf::from(DEFAULT_VIRTIOFSD);
    }
    if cf.runtime.state_root.as_os_str().is_empty() {
        cf.runtime.state_root = PathBuf::from(DEFAULT_STATE_ROOT);
    }
    if cf.factory.template_path.as_os_str().is_empty() {
        cf.factory.template_path = FactorySection::default().template_path;
    }
    if !cf.factory.template_path.is_absolute() {
        return Err(value_err(
            "[factory] template_path".into(),
            format!(
                "{:?} is relative; use an absolute path such as {}",
                cf.factory.template_path,
                crate::hypervisor::template::DEFAULT_TEMPLATE_PATH
            ),
        ));
    }
    cf.validate()
        .map_err(|(key, message)| value_err(key.into(), message))?;
    refuse_unimplemented(&root).map_err(|(key, message)| value_err(key, message))?;

    let ConfigFile {
        hypervisor: Hypervisors { qemu },
        agent: Agents { kata },
        runtime,
        factory,
    } = cf;
    Ok(KataConfig {
        file: file.to_owned(),
        hypervisor: qemu,
        agent: kata,
        runtime,
        factory,
        ignored: ignored.into_iter().map(|(_, s)| s).collect(),
    })
}

/// Refuse, with the fix, a value other than the accepted one for a key of
/// [`UNIMPLEMENTED_SECURITY_KEYS`] (compared as written in the file).
fn refuse_unimplemented(root: &toml::Table) -> Result<(), (String, String)> {
    for (section, key, accepted, fix) in UNIMPLEMENTED_SECURITY_KEYS {
        let table = section
            .split('.')
            .try_fold(root, |t, name| t.get(name)?.as_table());
        let Some(v) = table.and_then(|t| t.get(*key)) else {
            continue;
        };
        let want: toml::Value = format!("v = {accepted}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::Boolean(false));
        if *v != want {
            return Err((
                format!("[{section}] {key}"),
                format!("{v} is not supported: {fix}"),
            ));
        }
    }
    Ok(())
}

impl ConfigFile {
    /// The checks beyond types and ranges: (`[section] key`, message) of
    /// the first value this runtime cannot use.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let h = &self.hypervisor.qemu;
        if h.kernel.as_os_str().is_empty() {
            return Err((
                "[hypervisor.qemu] kernel",
                "missing: set it to the guest kernel (vmlinux or bzImage)".into(),
            ));
        }
        match (&h.initrd, &h.image) {
            (Some(_), Some(_)) => {
                return Err((
                    "[hypervisor.qemu] initrd",
                    "both initrd and image are set; keep exactly one".into(),
                ))
            }
            (None, None) => {
                return Err((
                    "[hypervisor.qemu] image",
                    "neither image nor initrd is set; set exactly one".into(),
                ))
            }
            _ => {}
        }
        if !h.kernel_verity_params.is_empty() {
            if let Err(e) = h.kernel_verity_params.parse::<VerityParams>() {
                return Err(("[hypervisor.qemu] kernel_verity_params", e));
            }
            if h.image.is_none() {
                return Err((
                    "[hypervisor.qemu] kernel_verity_params",
                    "set with initrd: verity protects an image's root partition; set image to an image built with `cargo xtask image --verity`, or remove kernel_verity_params".into(),
                ));
            }
        }
        if !matches!(h.rootfs_type.as_str(), "ext4" | "erofs") {
            return Err((
                "[hypervisor.qemu] rootfs_type",
                format!("{:?} is not supported: use ext4 or erofs", h.rootfs_type),
            ));
        }
        if h.machine_type != "q35" {
            return Err((
                "[hypervisor.qemu] machine_type",
                format!(
                    "{:?} is not supported: this runtime only runs q35",
                    h.machine_type
                ),
            ));
        }
        if h.shared_fs != "virtio-fs" {
            return Err((
                "[hypervisor.qemu] shared_fs",
                format!(
                    "{:?} is not supported: use \"virtio-fs\" (container rootfs sharing needs it)",
                    h.shared_fs
                ),
            ));
        }
        if let Err(e) = h.virtio_fs_cache.parse::<VirtioFsCache>() {
            return Err(("[hypervisor.qemu] virtio_fs_cache", e.to_string()));
        }
        if let Err(e) = h.accelerator.parse::<Accel>() {
            return Err(("[hypervisor.qemu] accelerator", e.to_string()));
        }
        if let Err(e) = crate::hypervisor::check_sandbox_option(&h.seccompsandbox) {
            return Err(("[hypervisor.qemu] seccompsandbox", e.to_string()));
        }
        let model = &self.runtime.internetworking_model;
        if model != NETWORK_MODEL_TCFILTER && model != NETWORK_MODEL_NONE {
            return Err((
                "[runtime] internetworking_model",
                format!("{model:?} is not supported: use \"tcfilter\" (the default) or \"none\""),
            ));
        }
        if self.runtime.disable_new_netns && model != NETWORK_MODEL_NONE {
            return Err((
                "[runtime] disable_new_netns",
                format!("true needs internetworking_model = \"none\" (it is {model:?}): set one or the other"),
            ));
        }
        Ok(())
    }
}

impl KataConfig {
    /// The file's sections, e.g. to write them out with
    /// [`ConfigFile::to_toml`].
    pub fn to_file(&self) -> ConfigFile {
        ConfigFile {
            hypervisor: Hypervisors {
                qemu: self.hypervisor.clone(),
            },
            agent: Agents {
                kata: self.agent.clone(),
            },
            runtime: self.runtime.clone(),
            factory: self.factory.clone(),
        }
    }

    /// Whether the pod's network is wired to the guest (`tcfilter`); with
    /// `none` (or `disable_new_netns`) the guest has no NIC.
    pub fn wires_pod_network(&self) -> bool {
        self.runtime.internetworking_model == NETWORK_MODEL_TCFILTER
            && !self.runtime.disable_new_netns
    }

    /// Settings that are valid but cost a feature, each as one line saying
    /// which and what to change (the shim logs them, `kata-runtime env` and
    /// `check` print them).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let firmware = &self.hypervisor.firmware;
        if firmware.file_name() == Path::new(crate::hypervisor::QBOOT_FIRMWARE).file_name() {
            warnings.push(format!(
                "{}: [hypervisor.qemu] firmware = {:?} is qboot, which leaves the PCI hotplug \
                 bridge without memory windows: hot-plugged block devices (direct-assigned \
                 volumes) get no BARs and never reach the guest; leave firmware empty \
                 (SeaBIOS) to use them",
                self.file.display(),
                firmware.display().to_string()
            ));
        }
        warnings
    }

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

    /// `[agent.kata] kernel_modules` as CreateSandbox carries them.
    pub fn kernel_modules(&self) -> Vec<protocols::agent::KernelModule> {
        self.agent
            .kernel_modules
            .iter()
            .filter_map(|e| protocols::kernel_modules::parse_entry(e).ok())
            .map(|(name, parameters)| protocols::agent::KernelModule {
                name,
                parameters,
                ..Default::default()
            })
            .collect()
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
                // validate() parsed it already
                verity: h.kernel_verity_params.parse().ok(),
            },
            // parse() guarantees one of them
            (None, None) => BootMedia::Initrd(PathBuf::new()),
        };
        let mut cfg = QemuConfig::new(id, &h.kernel, boot);
        cfg.qemu_binary = h.path.clone();
        cfg.firmware = Some(h.firmware.clone()).filter(|f| !f.as_os_str().is_empty());
        cfg.kernel_params = h.kernel_params.clone();
        if self.agent.enable_debug {
            cfg.kernel_params.insert(0, "agent.log=debug".into());
        }
        if self.agent.debug_console_enabled {
            cfg.kernel_params
                .extend(DEBUG_CONSOLE_KERNEL_PARAMS.iter().map(|p| p.to_string()));
        }
        cfg.quiet = !h.enable_debug;
        cfg.memory_mib = h.default_memory;
        cfg.vcpus = h.default_vcpus;
        cfg.accel = h.accelerator.parse().unwrap_or_default();
        cfg.tcg_tb_size_mib = h.tcg_tb_size;
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
    fn qboot_firmware_is_warned_about_and_seabios_is_not() {
        assert!(parse_str(MINIMAL).unwrap().warnings().is_empty());
        let with = |firmware: &str| {
            parse_str(&format!("{MINIMAL}firmware = {firmware:?}\n"))
                .unwrap()
                .warnings()
        };
        assert!(with("/usr/share/seabios/bios.bin").is_empty());
        let w = with("/opt/fw/qboot.rom");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("[hypervisor.qemu] firmware")
                && w[0].contains("/opt/fw/qboot.rom")
                && w[0].contains("leave firmware empty"),
            "{}",
            w[0]
        );
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
                "[hypervisor.clh] (only [hypervisor.qemu] is supported)",
                "[hypervisor.qemu] block_device_driver",
                "[hypervisor.qemu] enable_iommu",
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
                verity: None,
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
        assert!(
            !q.kernel_params.iter().any(|p| p.contains("debug_console")),
            "the console is off by default: {:?}",
            q.kernel_params
        );
    }

    #[test]
    fn debug_console_adds_the_agent_kernel_params() {
        let text = format!(
            "{MINIMAL}kernel_params = \"quiet agent.log=info\"\n[agent.kata]\ndebug_console_enabled = true\n"
        );
        let c = parse_str(&text).unwrap();
        assert!(c.agent.debug_console_enabled);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let q = c.qemu_config("s1", Path::new("/run/kata-containers/shared/s1"));
        assert_eq!(
            q.kernel_params,
            [
                "quiet",
                "agent.log=info",
                "agent.debug_console",
                "agent.debug_console_vport=1026"
            ]
        );
        assert_eq!(
            DEBUG_CONSOLE_KERNEL_PARAMS[1],
            format!("agent.debug_console_vport={DEBUG_CONSOLE_VPORT}")
        );
        // and it survives a round trip through the file format (env, the e2e harness)
        let back = parse_str(&c.to_file().to_toml().unwrap()).unwrap();
        assert!(back.agent.debug_console_enabled);
        // false and absent: no console parameters
        for text in [
            MINIMAL.to_string(),
            format!("{MINIMAL}[agent.kata]\ndebug_console_enabled = false\n"),
        ] {
            let q = parse_str(&text).unwrap().qemu_config("s1", Path::new("/x"));
            assert!(q.kernel_params.is_empty(), "{:?}", q.kernel_params);
        }
    }

    #[test]
    fn kernel_modules_reach_create_sandbox_as_name_and_parameters() {
        let c = parse_str(&format!(
            "{MINIMAL}[agent.kata]\nkernel_modules = [\"bonding max_bonds=2 miimon=100\", \"dummy\"]\n"
        ))
        .unwrap();
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let m = c.kernel_modules();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "bonding");
        assert_eq!(m[0].parameters, ["max_bonds=2", "miimon=100"]);
        assert_eq!(m[1].name, "dummy");
        assert!(m[1].parameters.is_empty());
        // Through the file format the shim hands on (env, the e2e harness).
        let back = parse_str(&c.to_file().to_toml().unwrap()).unwrap();
        assert_eq!(back.agent.kernel_modules, c.agent.kernel_modules);
        assert!(parse_str(MINIMAL).unwrap().kernel_modules().is_empty());
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
                "kernel_verity_params = \"root_hash=zz\"",
                "[hypervisor.qemu] kernel_verity_params",
                "64 hex digits",
            ),
            (
                "kernel_verity_params = \"root_hash=69f1faf047532e95037e25fda9c284f4114c830e1c43421e6227d3604b41f6f9,salt=ab,data_blocks=8,data_block_size=4096,hash_block_size=4096\"",
                "[hypervisor.qemu] kernel_verity_params",
                "set with initrd",
            ),
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
        let err = parse_str(&format!(
            "{MINIMAL}[agent.kata]\nkernel_modules = [\"dummy numdummies=2\", \"../evil\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("[agent.kata] kernel_modules")
                && err.to_string().contains("\"../evil\""),
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
            PathBuf::from("/opt/kata/share/kata-containers/vmlinux.container")
        );
        // SeaBIOS: qboot would break hot-plugged devices.
        assert_eq!(c.hypervisor.firmware, PathBuf::new());
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
        assert_eq!(c.hypervisor.tcg_tb_size, 0, "QEMU's own TCG cache ships");
    }

    #[test]
    fn factory_section() {
        let c = parse_str(MINIMAL).unwrap();
        assert!(!c.factory.enable_template);
        assert_eq!(c.factory.template_path, Path::new("/run/vc/vm/template"));
        let c = parse_str(&format!(
            "{MINIMAL}[factory]\nenable_template = true\ntemplate_path = \"/run/t\"\nvm_cache_number = 0\n"
        ))
        .unwrap();
        assert!(c.factory.enable_template && c.ignored.is_empty());
        assert_eq!(c.factory.template_path, Path::new("/run/t"));
        let e = parse_str(&format!("{MINIMAL}[factory]\ntemplate_path = \"t\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[factory] template_path") && e.contains("absolute"),
            "{e}"
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
                "runtime",
                "sandbox_cgroup_only = true",
                "sandbox_cgroup_only",
            ),
            ("runtime", "experimental = [\"newstore\"]", "experimental"),
            ("factory", "vm_cache_number = 3", "vm_cache_number"),
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
    fn tcg_tb_size_reaches_qemu_and_is_bounded() {
        let q = parse_str(MINIMAL)
            .unwrap()
            .qemu_config("sb1", Path::new("/s"));
        assert_eq!(q.tcg_tb_size_mib, 0, "QEMU's default unless set");
        for set in [16, 64] {
            let c = parse_str(&format!("{MINIMAL}tcg_tb_size = {set}\n")).unwrap();
            assert_eq!(c.qemu_config("sb1", Path::new("/s")).tcg_tb_size_mib, set);
        }
        for bad in ["-1", "4097", "\"16M\""] {
            let e = parse_str(&format!("{MINIMAL}tcg_tb_size = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("[hypervisor.qemu] tcg_tb_size"), "{bad}: {e}");
        }
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
    fn unknown_keys_are_reported_with_their_path() {
        let text = format!(
            "{MINIMAL}block_device_driver = \"virtio-blk\"\n\
             [hypervisor.qemu.extra]\nx = 1\n\
             [agent.kata]\ntracing = true\n\
             [agent.other]\nx = 1\n\
             [runtime]\nsandbox_bind_mounts = []\nnested.key = 1\n\
             [factory]\nenable_template = false\nvm_cache_endpoint = \"/run/vc/cache.sock\"\n\
             [hypervisor.firecracker]\npath = \"/fc\"\n"
        );
        let c = parse_str(&text).unwrap();
        assert_eq!(
            c.ignored,
            [
                "[hypervisor.firecracker] (only [hypervisor.qemu] is supported)",
                "[hypervisor.qemu] block_device_driver",
                "[hypervisor.qemu] extra",
                "[agent.kata] tracing",
                "[runtime] nested",
                "[runtime] sandbox_bind_mounts",
                "[agent] other",
                "[factory] vm_cache_endpoint",
            ]
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (section, line, key, what) in [
            (
                "hypervisor.qemu",
                "path = 1",
                "[hypervisor.qemu] path",
                "expected a string, found integer",
            ),
            (
                "hypervisor.qemu",
                "kernel_params = [\"quiet\"]",
                "[hypervisor.qemu] kernel_params",
                "expected a string, found array",
            ),
            (
                "hypervisor.qemu",
                "virtio_fs_extra_args = [1]",
                "[hypervisor.qemu] virtio_fs_extra_args",
                "element of type integer",
            ),
            (
                "hypervisor.qemu",
                "default_vcpus = 1.5",
                "[hypervisor.qemu] default_vcpus",
                "expected an integer, found float",
            ),
            (
                "agent.kata",
                "request_timeout = \"30s\"",
                "[agent.kata] request_timeout",
                "expected an integer, found string",
            ),
            (
                "agent.kata",
                "enable_debug = 1",
                "[agent.kata] enable_debug",
                "expected true or false, found integer",
            ),
            (
                "runtime",
                "state_root = false",
                "[runtime] state_root",
                "expected a string, found boolean",
            ),
            (
                "runtime",
                "static_sandbox_resource_mgmt = \"no\"",
                "[runtime] static_sandbox_resource_mgmt",
                "true or false",
            ),
            (
                "runtime",
                "internetworking_model = \"bridged\"",
                "[runtime] internetworking_model",
                "\"bridged\" is not supported: use \"tcfilter\" (the default) or \"none\"",
            ),
            (
                "runtime",
                "internetworking_model = \"macvtap\"",
                "[runtime] internetworking_model",
                "use \"tcfilter\" (the default) or \"none\"",
            ),
            (
                "runtime",
                "disable_new_netns = true",
                "[runtime] disable_new_netns",
                "true needs internetworking_model = \"none\" (it is \"tcfilter\")",
            ),
        ] {
            let text = if section == "hypervisor.qemu" {
                format!("{MINIMAL}{line}\n")
            } else {
                format!("{MINIMAL}[{section}]\n{line}\n")
            };
            let e = parse_str(&text).unwrap_err().to_string();
            assert_eq!(e.lines().count(), 1, "{line}: one line: {e}");
            assert!(
                e.starts_with(&format!("/etc/kata-containers/configuration.toml: {key}: ")),
                "{line}: {e}"
            );
            assert!(e.contains(what), "{line}: {e}");
        }
        let e = parse_str(&format!(
            "{MINIMAL}[runtime]\nenable_debug = true\n[agent]\nkata = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("[agent] kata: "), "{e}");
    }

    #[test]
    fn network_model_none_and_disable_new_netns_turn_wiring_off() {
        let c = parse_str(&format!(
            "{MINIMAL}[runtime]\ninternetworking_model = \"none\"\n"
        ))
        .unwrap();
        assert!(!c.wires_pod_network());
        let c = parse_str(&format!(
            "{MINIMAL}[runtime]\ninternetworking_model = \"none\"\ndisable_new_netns = true\n"
        ))
        .unwrap();
        assert!(!c.wires_pod_network());
        assert!(parse_str(MINIMAL).unwrap().wires_pod_network());
    }

    #[test]
    fn each_default() {
        let c = parse_str(MINIMAL).unwrap();
        let h = &c.hypervisor;
        assert_eq!(h.path, PathBuf::from("/usr/bin/qemu-system-x86_64"));
        assert_eq!(h.kernel, PathBuf::from("/k/vmlinuz"));
        assert_eq!(h.initrd, Some(PathBuf::from("/k/initrd.img")));
        assert_eq!(h.image, None);
        assert_eq!(h.rootfs_type, "ext4");
        assert_eq!(h.machine_type, "q35");
        assert!(h.kernel_params.is_empty());
        assert_eq!(h.default_vcpus, 1);
        assert_eq!(h.default_memory, 2048);
        assert_eq!(h.shared_fs, "virtio-fs");
        assert_eq!(h.virtio_fs_daemon, PathBuf::from("/usr/lib/qemu/virtiofsd"));
        assert_eq!(h.virtio_fs_cache, "auto");
        assert!(h.virtio_fs_extra_args.is_empty());
        assert!(!h.enable_debug);
        assert_eq!(h.vhost_user_vsock_daemon, None);
        assert_eq!(h.accelerator, "auto");
        assert_eq!(h.seccompsandbox, "");
        assert!(h.enable_annotations.is_empty());
        assert!(!h.rootless);
        assert_eq!(h.guest_hook_path, "");
        assert!(h.valid_hypervisor_paths.is_empty());
        assert!(!c.agent.enable_debug);
        assert_eq!(c.agent.dial_timeout, 45);
        assert_eq!(c.agent.request_timeout, 30);
        assert!(!c.agent.debug_console_enabled);
        let r = &c.runtime;
        assert!(!r.enable_debug);
        assert_eq!(r.internetworking_model, "tcfilter");
        assert!(c.wires_pod_network());
        assert!(!r.disable_new_netns);
        assert!(!r.sandbox_cgroup_only);
        assert!(r.static_sandbox_resource_mgmt);
        assert_eq!(r.state_root, PathBuf::from("/run/kata-containers"));
        assert!(r.disable_guest_seccomp);
        assert!(r.experimental.is_empty());
        assert!(c.ignored.is_empty());
        assert_eq!(c.dial_timeout(), Duration::from_secs(45));
        assert_eq!(c.request_timeout(), Duration::from_secs(30));

        // The Default impls are those defaults (the harness builds on them).
        let mut d = ConfigFile::default();
        d.hypervisor.qemu.kernel = "/k/vmlinuz".into();
        d.hypervisor.qemu.initrd = Some("/k/initrd.img".into());
        assert_eq!(c.to_file(), d);
        // An empty path is unset: the default.
        let c = parse_str(&format!(
            "{MINIMAL}path = \"\"\nvirtio_fs_daemon = \"\"\n[runtime]\nstate_root = \"\"\n"
        ))
        .unwrap();
        assert_eq!(c.to_file(), d);
    }

    #[test]
    fn written_configuration_reads_back_the_same() {
        let mut f = ConfigFile::default();
        let q = &mut f.hypervisor.qemu;
        q.kernel = "/k/vmlinuz".into();
        q.image = Some("/k/img".into());
        q.rootfs_type = "erofs".into();
        q.kernel_params = vec!["quiet".into(), "agent.log=debug".into()];
        q.default_memory = 512;
        q.accelerator = "tcg".into();
        q.vhost_user_vsock_daemon = Some("/bin/vhost-device-vsock".into());
        q.virtio_fs_extra_args = vec!["--thread-pool-size=1".into()];
        f.agent.kata.dial_timeout = 120;
        f.agent.kata.enable_debug = true;
        f.runtime.internetworking_model = "tcfilter".into();
        let text = f.to_toml().unwrap();
        assert!(text.contains("[hypervisor.qemu]"), "{text}");
        assert!(text.contains("[agent.kata]"), "{text}");
        assert!(
            text.contains("kernel_params = \"quiet agent.log=debug\""),
            "{text}"
        );
        let c = parse_str(&text).unwrap();
        assert_eq!(c.to_file(), f);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
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
