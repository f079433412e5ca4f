//! `cargo xtask doctor [--install]`: what this host lacks, and the exact
//! command that fixes each gap.

use std::process::Command;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::tools::{run_captured, run_visible, which};
use crate::ui::Ui;
use crate::versions::Versions;

#[derive(Debug, Clone)]
enum Check {
    Program(&'static str),
    File(&'static str),
    RustTarget(String),
    CargoBinary { name: String, version: String },
    QemuAtLeast(String),
}

#[derive(Debug, Clone)]
enum Fix {
    Apt(&'static str),
    Pip(&'static str),
    RustupTarget(String),
    CargoInstall { name: String, version: String },
}

impl Fix {
    fn command(&self) -> String {
        match self {
            Fix::Apt(p) => format!("apt-get install -y {p}"),
            Fix::Pip(p) => format!("python3 -m pip install {p}"),
            Fix::RustupTarget(t) => format!("rustup target add {t}"),
            Fix::CargoInstall { name, version } => {
                format!("cargo install --locked {name} --version {version}")
            }
        }
    }
}

struct Requirement {
    what: String,
    needed_for: &'static str,
    check: Check,
    fix: Fix,
}

#[derive(Debug, Serialize)]
pub struct Gap {
    pub what: String,
    pub needed_for: String,
    pub problem: String,
    pub fix: String,
}

fn requirements(v: &Versions) -> Vec<Requirement> {
    let apt = |what: &str, needed_for, check, pkg| Requirement {
        what: what.to_string(),
        needed_for,
        check,
        fix: Fix::Apt(pkg),
    };
    vec![
        apt(
            "apt-get",
            "fetching pinned Debian packages",
            Check::Program("apt-get"),
            "apt",
        ),
        apt(
            "dpkg-deb",
            "unpacking pinned Debian packages",
            Check::Program("dpkg-deb"),
            "dpkg",
        ),
        apt(
            "mke2fs",
            "ext4 rootfs images",
            Check::Program("mke2fs"),
            "e2fsprogs",
        ),
        apt(
            "e2fsck",
            "checking images",
            Check::Program("e2fsck"),
            "e2fsprogs",
        ),
        apt(
            "debugfs",
            "deterministic ext4 images",
            Check::Program("debugfs"),
            "e2fsprogs",
        ),
        apt(
            "mkfs.erofs",
            "erofs rootfs images",
            Check::Program("mkfs.erofs"),
            "erofs-utils",
        ),
        apt(
            "cpio",
            "independent initrd checks in the tests",
            Check::Program("cpio"),
            "cpio",
        ),
        apt(
            "zstd",
            "zstd initrds and the release tarball checks",
            Check::Program("zstd"),
            "zstd",
        ),
        apt(
            "readelf",
            "checking the agent is static (tests)",
            Check::Program("readelf"),
            "binutils",
        ),
        apt(
            "rpm",
            "checking the release .rpm",
            Check::Program("rpm"),
            "rpm",
        ),
        apt(
            "lintian",
            "checking the release .deb",
            Check::Program("lintian"),
            "lintian",
        ),
        apt(
            "busybox",
            "the kernel boot test's shell",
            Check::File("/bin/busybox"),
            "busybox-static",
        ),
        apt(
            "musl-gcc",
            "C parts of the static agent",
            Check::Program("musl-gcc"),
            "musl-tools",
        ),
        apt("make", "the kernel build", Check::Program("make"), "make"),
        apt("gcc", "the kernel build", Check::Program("gcc"), "gcc"),
        apt("flex", "the kernel build", Check::Program("flex"), "flex"),
        apt(
            "bison",
            "the kernel build",
            Check::Program("bison"),
            "bison",
        ),
        apt("bc", "the kernel build", Check::Program("bc"), "bc"),
        apt("patch", "kernel patches", Check::Program("patch"), "patch"),
        apt(
            "xz",
            "the kernel source tarball",
            Check::Program("xz"),
            "xz-utils",
        ),
        apt(
            "libelf-dev",
            "the kernel build (objtool)",
            Check::File("/usr/include/libelf.h"),
            "libelf-dev",
        ),
        apt(
            "libssl-dev",
            "the kernel build (certs tooling)",
            Check::File("/usr/include/openssl/ssl.h"),
            "libssl-dev",
        ),
        apt(
            "curl",
            "fetching upstream URLs",
            Check::Program("curl"),
            "curl",
        ),
        Requirement {
            what: format!("qemu-system-x86_64 >= {}", v.qemu.minimum_version),
            needed_for: "booting guests (tests, runtime)",
            check: Check::QemuAtLeast(v.qemu.minimum_version.clone()),
            fix: Fix::Apt("qemu-system-x86"),
        },
        apt(
            "virtiofsd",
            "sharing container rootfs",
            Check::File("/usr/lib/qemu/virtiofsd"),
            "qemu-system-common",
        ),
        apt(
            "containerd",
            "the end-to-end container test",
            Check::Program("containerd"),
            "containerd",
        ),
        apt(
            "ctr",
            "the end-to-end container test",
            Check::Program("ctr"),
            "containerd",
        ),
        apt(
            "gzip",
            "the e2e test image's layer",
            Check::Program("gzip"),
            "gzip",
        ),
        Requirement {
            what: "pyspdxtools".into(),
            needed_for: "validating the release SBOM (tests)",
            check: Check::Program("pyspdxtools"),
            fix: Fix::Pip("spdx-tools"),
        },
        apt(
            "runc",
            "the start-latency benchmark baseline",
            Check::Program("runc"),
            "runc",
        ),
        Requirement {
            what: format!("rust target {}", v.rust.musl_target),
            needed_for: "the static kata-agent",
            check: Check::RustTarget(v.rust.musl_target.clone()),
            fix: Fix::RustupTarget(v.rust.musl_target.clone()),
        },
        Requirement {
            what: format!(
                "{} {}",
                v.vhost_device_vsock.crate_name, v.vhost_device_vsock.version
            ),
            needed_for: "the host side of vsock where /dev/vhost-vsock is missing",
            check: Check::CargoBinary {
                name: v.vhost_device_vsock.crate_name.clone(),
                version: v.vhost_device_vsock.version.clone(),
            },
            fix: Fix::CargoInstall {
                name: v.vhost_device_vsock.crate_name.clone(),
                version: v.vhost_device_vsock.version.clone(),
            },
        },
    ]
}

fn problem(check: &Check) -> Option<String> {
    match check {
        Check::Program(p) => which(p).is_none().then(|| format!("`{p}` is not on PATH")),
        Check::File(f) => (!std::path::Path::new(f).exists()).then(|| format!("{f} is missing")),
        Check::RustTarget(t) => {
            let installed =
                run_captured(Command::new("rustup").args(["target", "list", "--installed"]))
                    .map(|o| o.lines().any(|l| l.trim() == t))
                    .unwrap_or(false);
            (!installed).then(|| format!("rust target {t} is not installed"))
        }
        Check::CargoBinary { name, version } => match which(name) {
            None => Some(format!("`{name}` is not installed")),
            Some(path) => {
                // `cargo install` records what it installed; a different
                // version is as good as missing.
                let listed = run_captured(Command::new("cargo").args(["install", "--list"]))
                    .unwrap_or_default();
                let want = format!("{name} v{version}:");
                (!listed.lines().any(|l| l.trim() == want))
                    .then(|| format!("{} is not version {version}", path.display()))
            }
        },
        Check::QemuAtLeast(min) => {
            match run_captured(Command::new("qemu-system-x86_64").arg("--version")) {
                Err(_) => Some("`qemu-system-x86_64` is not on PATH".into()),
                Ok(out) => {
                    let found = out
                        .split_whitespace()
                        .skip_while(|w| *w != "version")
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    (version_tuple(&found) < version_tuple(min))
                        .then(|| format!("QEMU {found} is older than {min}"))
                }
            }
        }
    }
}

fn version_tuple(v: &str) -> Vec<u32> {
    v.split(['.', '+', '-', ' ', '~'])
        .map_while(|p| p.parse().ok())
        .collect()
}

pub fn gaps(v: &Versions) -> Vec<Gap> {
    requirements(v)
        .into_iter()
        .filter_map(|r| {
            problem(&r.check).map(|p| Gap {
                what: r.what.clone(),
                needed_for: r.needed_for.to_string(),
                problem: p,
                fix: r.fix.command(),
            })
        })
        .collect()
}

/// The packages an `apt-get install -s` run would remove (its `Remv`
/// lines), with their versions.
fn apt_removals(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .map(|rest| rest.trim().to_string())
        .collect()
}

/// Fixes every gap: one apt-get for all packages, then rustup and cargo.
pub fn install(v: &Versions, ui: &Ui) -> Result<()> {
    let reqs: Vec<Requirement> = requirements(v)
        .into_iter()
        .filter(|r| problem(&r.check).is_some())
        .collect();
    let mut apt: Vec<&str> = reqs
        .iter()
        .filter_map(|r| {
            if let Fix::Apt(p) = r.fix {
                Some(p)
            } else {
                None
            }
        })
        .collect();
    apt.sort();
    apt.dedup();
    if !apt.is_empty() {
        ui.info(&format!("installing Debian packages: {}", apt.join(" ")));
        run_visible(Command::new("apt-get").arg("update").arg("-qq"))?;
        // Never remove what the host has: ask apt what it would do first,
        // and stop with that if it would remove anything (a package from
        // backports that conflicts, say). --no-remove guards the real run.
        let simulated = run_captured(
            Command::new("apt-get")
                .args(["install", "-s", "--no-install-recommends"])
                .args(&apt)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        let removals = apt_removals(&simulated);
        if !removals.is_empty() {
            bail!(
                "installing {} would make apt remove {}; doctor never removes or downgrades what the host has. \
                 See why with `apt-get install -s --no-install-recommends {}`, decide which to keep, install by hand, then rerun",
                apt.join(" "),
                removals.join(", "),
                apt.join(" ")
            );
        }
        run_visible(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "--no-remove",
                ])
                .args(&apt)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    for r in &reqs {
        match &r.fix {
            Fix::Apt(_) => {}
            Fix::Pip(p) => {
                ui.info(&format!("installing {p} from PyPI"));
                run_visible(Command::new("python3").args(["-m", "pip", "install", "--quiet", p]))?;
            }
            Fix::RustupTarget(t) => {
                ui.info(&format!("adding rust target {t}"));
                run_visible(Command::new("rustup").args(["target", "add", t]))?;
            }
            Fix::CargoInstall { name, version } => {
                ui.info(&format!(
                    "installing {name} {version} with cargo (takes a few minutes)"
                ));
                run_visible(Command::new("cargo").args([
                    "install",
                    "--locked",
                    name,
                    "--version",
                    version,
                ]))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_tuple("7.2.19") >= version_tuple("7.2"));
        assert!(version_tuple("10.0.2") > version_tuple("7.2"));
        assert!(version_tuple("6.2.0") < version_tuple("7.2"));
    }

    #[test]
    fn a_missing_program_is_a_gap_with_a_fix() {
        let p = problem(&Check::Program("surely-not-a-real-program-xyz")).unwrap();
        assert!(p.contains("surely-not-a-real-program-xyz"));
        assert_eq!(Fix::Apt("cpio").command(), "apt-get install -y cpio");
        assert!(problem(&Check::Program("sh")).is_none());
    }

    #[test]
    fn apt_simulations_name_what_would_be_removed() {
        let sim = "NOTE: This is only a simulation!\n\
                   Remv qemu-utils [1:10.0.2+ds-1~bpo12+1]\n\
                   Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18 Debian:12.12/stable [amd64])\n\
                   Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u18 Debian:12.12/stable [amd64])\n";
        assert_eq!(apt_removals(sim), ["qemu-utils [1:10.0.2+ds-1~bpo12+1]"]);
        assert!(apt_removals("Inst cpio (2.13)\nConf cpio (2.13)\n").is_empty());
    }

    #[test]
    #[ignore = "needs apt-get with busybox-static installed (doctor installs it): run by cargo xtask test unit"]
    fn a_real_conflicting_install_is_seen_before_anything_changes() {
        // busybox and busybox-static conflict: apt would remove the one the
        // pipeline installed. Only a simulation runs.
        let sim = run_captured(Command::new("apt-get").args([
            "install",
            "-s",
            "--no-install-recommends",
            "busybox",
        ]))
        .unwrap();
        let removed = apt_removals(&sim);
        assert!(
            removed.iter().any(|r| r.starts_with("busybox-static ")),
            "{removed:?} from:\n{sim}"
        );
    }
}
