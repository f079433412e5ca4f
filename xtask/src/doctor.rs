//! `cargo xtask doctor [--install]`: what this host lacks, and the exact
//! command that fixes each gap.

use std::process::Command;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::host_tools::{self, HostTool};
use crate::tools::{run_captured, run_visible};
use crate::ui::Ui;
use crate::versions::Versions;

#[derive(Debug, Clone)]
enum Check {
    Tool(HostTool),
    RustTarget(String),
    QemuAtLeast(String),
}

#[derive(Debug, Clone)]
enum Fix {
    Apt(&'static str),
    Pip(&'static str),
    RustupTarget(String),
}

impl Fix {
    fn command(&self) -> String {
        match self {
            Fix::Apt(p) => format!("apt-get install -y {p}"),
            Fix::Pip(p) => format!("python3 -m pip install {p}"),
            Fix::RustupTarget(t) => format!("rustup target add {t}"),
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

/// Every host tool of the registry (what the steps and the tests run),
/// then what is not a Debian package or needs more than presence.
fn requirements(v: &Versions) -> Vec<Requirement> {
    let mut reqs: Vec<Requirement> = host_tools::ALL
        .iter()
        .map(|t| Requirement {
            what: t.name.to_string(),
            needed_for: t.needed_for,
            check: Check::Tool(*t),
            fix: Fix::Apt(t.package),
        })
        .collect();
    reqs.extend([
        Requirement {
            what: format!("qemu-system-x86_64 >= {}", v.qemu.minimum_version),
            needed_for: "booting guests (tests, runtime)",
            check: Check::QemuAtLeast(v.qemu.minimum_version.clone()),
            fix: Fix::Apt("qemu-system-x86"),
        },
        Requirement {
            what: "pyspdxtools".into(),
            needed_for: "validating the release SBOM (tests)",
            check: Check::Tool(HostTool {
                name: "pyspdxtools",
                probe: host_tools::Probe::Program("pyspdxtools"),
                package: "spdx-tools",
                needed_for: "validating the release SBOM (tests)",
            }),
            fix: Fix::Pip("spdx-tools"),
        },
        Requirement {
            what: format!("rust target {}", v.rust.musl_target),
            needed_for: "the static kata-agent",
            check: Check::RustTarget(v.rust.musl_target.clone()),
            fix: Fix::RustupTarget(v.rust.musl_target.clone()),
        },
    ]);
    reqs
}

fn problem(check: &Check) -> Option<String> {
    match check {
        Check::Tool(t) => t.problem(),
        Check::RustTarget(t) => {
            let installed =
                run_captured(Command::new("rustup").args(["target", "list", "--installed"]))
                    .map(|o| o.lines().any(|l| l.trim() == t))
                    .unwrap_or(false);
            (!installed).then(|| format!("rust target {t} is not installed"))
        }
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
        let fake = HostTool {
            name: "surely-not-a-real-program-xyz",
            probe: host_tools::Probe::Program("surely-not-a-real-program-xyz"),
            package: "xyz",
            needed_for: "testing",
        };
        let p = problem(&Check::Tool(fake)).unwrap();
        assert!(p.contains("surely-not-a-real-program-xyz"));
        assert_eq!(Fix::Apt("cpio").command(), "apt-get install -y cpio");
        assert!(problem(&Check::Tool(host_tools::TAR)).is_none());
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
