//! `kata-runtime env`: upstream's `EnvInfo` (kata-env.go, format 1.0.27):
//! the same sections and keys, as TOML or JSON, so scripts reading
//! upstream's output (`.Hypervisor.Path`, `.Host.VMContainerCapable`...)
//! read this one unchanged. Values this runtime has no notion of carry
//! upstream's "nothing" (`no-port`, empty lists, `false`).

use std::path::Path;

use serde::Serialize;

use crate::config::KataConfig;

/// Upstream's `formatVersion` of the structure below.
pub const FORMAT_VERSION: &str = "1.0.27";

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnvInfo {
    pub kernel: KernelInfo,
    pub meta: MetaInfo,
    pub image: PathInfo,
    pub initrd: PathInfo,
    pub hypervisor: HypervisorInfo,
    pub runtime: RuntimeInfo,
    pub host: HostInfo,
    pub agent: AgentInfo,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetaInfo {
    pub version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KernelInfo {
    pub path: String,
    pub parameters: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PathInfo {
    pub path: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HypervisorInfo {
    pub machine_type: String,
    pub version: String,
    pub path: String,
    pub block_device_driver: String,
    pub entropy_source: String,
    #[serde(rename = "SharedFS")]
    pub shared_fs: String,
    #[serde(rename = "VirtioFSDaemon")]
    pub virtio_fs_daemon: String,
    pub socket_path: String,
    pub msize9p: u32,
    pub memory_slots: u32,
    #[serde(rename = "HotPlugVFIO")]
    pub hot_plug_vfio: String,
    #[serde(rename = "ColdPlugVFIO")]
    pub cold_plug_vfio: String,
    #[serde(rename = "PCIeRootPort")]
    pub pcie_root_port: u32,
    #[serde(rename = "PCIeSwitchPort")]
    pub pcie_switch_port: u32,
    pub debug: bool,
    pub security_info: SecurityInfo,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityInfo {
    pub rootless: bool,
    pub disable_seccomp: bool,
    pub guest_hook_path: String,
    pub enable_annotations: Vec<String>,
    pub confidential_guest: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeInfo {
    pub config: PathInfo,
    pub path: String,
    pub guest_se_linux_label: String,
    pub experimental: Vec<String>,
    pub version: RuntimeVersionInfo,
    pub debug: bool,
    pub trace: bool,
    pub disable_guest_seccomp: bool,
    pub disable_new_net_ns: bool,
    pub sandbox_cgroup_only: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeVersionInfo {
    #[serde(rename = "OCI")]
    pub oci: String,
    pub version: VersionInfo,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VersionInfo {
    pub semver: String,
    pub commit: String,
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostInfo {
    pub available_guest_protections: Vec<String>,
    pub kernel: String,
    pub architecture: String,
    pub distro: DistroInfo,
    #[serde(rename = "CPU")]
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    #[serde(rename = "VMContainerCapable")]
    pub vm_container_capable: bool,
    pub support_v_socks: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DistroInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CpuInfo {
    pub vendor: String,
    pub model: String,
    #[serde(rename = "CPUs")]
    pub cpus: usize,
}

/// KiB, as /proc/meminfo gives them (upstream reports the same numbers).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemoryInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentInfo {
    pub debug: bool,
    pub trace: bool,
}

/// What upstream's `VMContainerCapable` means: the CPU has hardware
/// virtualisation and /dev/kvm opens read-write. (Whether a guest really
/// boots under KVM is `check`'s test boot.)
pub fn vm_container_capable(cpuinfo: &str) -> bool {
    cpu_virtualisation_flag(cpuinfo).is_some()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// `vmx` or `svm` in the first `flags` line of /proc/cpuinfo.
pub fn cpu_virtualisation_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    ["vmx", "svm"].into_iter().find(|f| flags.contains(f))
}

/// The value of `key` in /proc/cpuinfo's first processor.
fn cpuinfo_field(cpuinfo: &str, key: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn meminfo_kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// `NAME` and `VERSION_ID` of os-release(5).
fn os_release(text: &str) -> DistroInfo {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    DistroInfo {
        name: get("NAME"),
        version: get("VERSION_ID"),
    }
}

/// Go's name of this architecture, as upstream's `runtime.GOARCH`.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn path_string(p: &Path) -> String {
    p.display().to_string()
}

/// The `EnvInfo` of `cfg` on this host; `qemu_version` is QEMU's first
/// `--version` line (or why it could not be read).
pub fn collect(cfg: &KataConfig, qemu_version: String) -> EnvInfo {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let os = {
        let etc = read("/etc/os-release");
        if etc.is_empty() {
            read("/usr/lib/os-release")
        } else {
            etc
        }
    };
    let semver = env!("CARGO_PKG_VERSION");
    let mut parts = semver.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let h = &cfg.hypervisor;
    EnvInfo {
        kernel: KernelInfo {
            path: path_string(&h.kernel),
            parameters: h.kernel_params.join(" "),
        },
        meta: MetaInfo {
            version: FORMAT_VERSION.into(),
        },
        image: PathInfo {
            path: h.image.as_deref().map(path_string).unwrap_or_default(),
        },
        initrd: PathInfo {
            path: h.initrd.as_deref().map(path_string).unwrap_or_default(),
        },
        hypervisor: HypervisorInfo {
            machine_type: h.machine_type.clone(),
            version: qemu_version,
            path: path_string(&h.path),
            // What this runtime attaches and reads (no block devices yet;
            // the guest's entropy comes from its own kernel).
            block_device_driver: "virtio-blk".into(),
            entropy_source: "/dev/urandom".into(),
            shared_fs: h.shared_fs.clone(),
            virtio_fs_daemon: path_string(&h.virtio_fs_daemon),
            socket_path: String::new(),
            msize9p: 0,
            memory_slots: 0,
            hot_plug_vfio: "no-port".into(),
            cold_plug_vfio: "no-port".into(),
            pcie_root_port: 0,
            pcie_switch_port: 0,
            debug: h.enable_debug,
            security_info: SecurityInfo {
                rootless: h.rootless,
                disable_seccomp: h.seccompsandbox.is_empty(),
                guest_hook_path: h.guest_hook_path.clone(),
                enable_annotations: h.enable_annotations.clone(),
                confidential_guest: false,
            },
        },
        runtime: RuntimeInfo {
            config: PathInfo {
                path: path_string(&cfg.file),
            },
            path: std::env::current_exe()
                .map(|p| path_string(&p))
                .unwrap_or_default(),
            guest_se_linux_label: String::new(),
            experimental: cfg.runtime.experimental.clone(),
            version: RuntimeVersionInfo {
                oci: oci_spec::runtime::Spec::default().version().clone(),
                version: VersionInfo {
                    semver: semver.into(),
                    commit: option_env!("KATA_GIT_COMMIT").unwrap_or("").into(),
                    major: parts.next().unwrap_or(0),
                    minor: parts.next().unwrap_or(0),
                    patch: parts.next().unwrap_or(0),
                },
            },
            debug: cfg.runtime.enable_debug,
            trace: false,
            disable_guest_seccomp: cfg.runtime.disable_guest_seccomp,
            disable_new_net_ns: cfg.runtime.disable_new_netns,
            sandbox_cgroup_only: cfg.runtime.sandbox_cgroup_only,
        },
        host: HostInfo {
            available_guest_protections: Vec::new(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            architecture: go_arch().into(),
            distro: os_release(&os),
            cpu: CpuInfo {
                vendor: cpuinfo_field(&cpuinfo, "vendor_id"),
                model: cpuinfo_field(&cpuinfo, "model name"),
                cpus: cpuinfo
                    .lines()
                    .filter(|l| l.starts_with("processor"))
                    .count(),
            },
            memory: MemoryInfo {
                total: meminfo_kib(&meminfo, "MemTotal"),
                free: meminfo_kib(&meminfo, "MemFree"),
                available: meminfo_kib(&meminfo, "MemAvailable"),
            },
            vm_container_capable: vm_container_capable(&cpuinfo),
            support_v_socks: Path::new("/dev/vhost-vsock").exists(),
        },
        agent: AgentInfo {
            debug: cfg.agent.enable_debug,
            trace: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_parse() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon X\nflags\t\t: fpu vmx sse\nprocessor\t: 1\n";
        assert_eq!(cpuinfo_field(cpuinfo, "vendor_id"), "GenuineIntel");
        assert_eq!(cpuinfo_field(cpuinfo, "model name"), "Xeon X");
        assert_eq!(cpu_virtualisation_flag(cpuinfo), Some("vmx"));
        assert_eq!(cpu_virtualisation_flag("flags : fpu sse\n"), None);
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable: 200 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), 24_000_000);
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), 200);
        assert_eq!(meminfo_kib(meminfo, "Nope"), 0);
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n";
        let d = os_release(os);
        assert_eq!(
            (d.name.as_str(), d.version.as_str()),
            ("Debian GNU/Linux", "12")
        );
    }

    #[test]
    fn keys_are_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("configuration.toml");
        std::fs::write(
            &file,
            "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"/k/vmlinux\"\ninitrd = \"/k/initrd\"\nkernel_params = \"a=1 b\"\n[agent.kata]\nenable_debug = true\n[runtime]\ndisable_new_netns = false\n",
        )
        .unwrap();
        let cfg = crate::config::load_file(&file).unwrap();
        let env = collect(&cfg, "QEMU emulator version 7.2.0".into());
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["Meta"]["Version"], FORMAT_VERSION);
        assert_eq!(json["Kernel"]["Path"], "/k/vmlinux");
        assert_eq!(json["Kernel"]["Parameters"], "a=1 b");
        assert_eq!(json["Initrd"]["Path"], "/k/initrd");
        assert_eq!(json["Image"]["Path"], "");
        assert_eq!(json["Hypervisor"]["Path"], "/usr/bin/qemu-system-x86_64");
        assert_eq!(json["Hypervisor"]["Version"], "QEMU emulator version 7.2.0");
        assert_eq!(json["Hypervisor"]["SharedFS"], "virtio-fs");
        assert_eq!(json["Hypervisor"]["HotPlugVFIO"], "no-port");
        assert!(json["Hypervisor"]["SecurityInfo"]["EnableAnnotations"].is_array());
        assert_eq!(
            json["Runtime"]["Config"]["Path"],
            file.display().to_string()
        );
        assert_eq!(json["Runtime"]["DisableNewNetNs"], false);
        assert!(json["Runtime"]["Version"]["OCI"]
            .as_str()
            .unwrap()
            .starts_with('1'));
        assert_eq!(json["Agent"]["Debug"], true);
        assert_eq!(json["Host"]["Architecture"], "amd64");
        assert!(json["Host"]["CPU"]["CPUs"].as_u64().unwrap() >= 1);
        assert!(json["Host"]["Memory"]["Total"].as_u64().unwrap() > 0);
        assert!(json["Host"]["VMContainerCapable"].is_boolean());
        assert!(json["Host"]["SupportVSocks"].is_boolean());
        // The TOML form has the same sections.
        let toml = toml::to_string(&env).unwrap();
        for section in [
            "[Kernel]",
            "[Meta]",
            "[Hypervisor]",
            "[Hypervisor.SecurityInfo]",
            "[Runtime.Version.Version]",
            "[Host.CPU]",
            "[Agent]",
        ] {
            assert!(toml.contains(section), "{section} missing:\n{toml}");
        }
    }
}
