//! `cargo xtask doctor [--install]`: what this host lacks, and the exact
//! command that fixes each gap.

use std::process::Command;

use anyhow::Result;
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
/// lines): name and installed version.
fn apt_removals(simulation: &str) -> Vec<(String, String)> {
    simulation
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|rest| {
            let (name, version) = rest.trim().split_once(' ')?;
            let version = version.trim().trim_start_matches('[').trim_end_matches(']');
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

/// The packages an `apt-get install -s` run would install or upgrade (its
/// `Inst` lines), with the version each would get.
fn apt_installs(simulation: &str) -> Vec<(String, String)> {
    simulation
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|rest| {
            let (name, rest) = rest.trim().split_once(' ')?;
            let new = rest.split_once('(')?.1;
            let version = new.split_whitespace().next()?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

/// The first word of a control field (`Source: qemu (1:7.2+dfsg-7)` ->
/// `qemu`), if the stanza has it.
fn control_field(stanza: &str, field: &str) -> Option<String> {
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string)
}

/// A package apt would install, with its source package.
#[derive(Debug, Clone, PartialEq)]
struct Sibling {
    name: String,
    version: String,
    source: String,
}

/// How apt's removals can be avoided: each removed package is a sibling
/// (same source package) of one being installed, and the archive has it at
/// that one's version. Debian builds such siblings from one upstream release
/// and often requires them in lockstep (backports' qemu-utils 10 breaks
/// qemu-system-common 7.2), so the host keeps the tool, at the version that
/// can live beside what is installed. `archive_source` gives a package's
/// source at a version the archive has. Returns the `name=version` pins, or
/// the removals that no sibling explains.
fn lockstep_pins(
    removals: &[(String, String)],
    installs: &[Sibling],
    installed_source: impl Fn(&str) -> Option<String>,
    archive_source: impl Fn(&str, &str) -> Option<String>,
) -> std::result::Result<Vec<String>, Vec<String>> {
    let mut pins = Vec::new();
    let mut unexplained = Vec::new();
    for (name, old) in removals {
        let pin = installed_source(name).and_then(|source| {
            installs
                .iter()
                .filter(|s| s.source == source)
                .find(|s| archive_source(name, &s.version).as_deref() == Some(source.as_str()))
                .map(|s| format!("{name}={}", s.version))
        });
        match pin {
            Some(p) => pins.push(p),
            None => unexplained.push(format!("{name} [{old}]")),
        }
    }
    if unexplained.is_empty() {
        Ok(pins)
    } else {
        Err(unexplained)
    }
}

fn installed_source(package: &str) -> Option<String> {
    run_captured(Command::new("dpkg-query").args(["-W", "-f=${source:Package}", package]))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The archive's stanzas for `name=version` each, as siblings with their
/// source package (the package's own name when `Source` is absent).
fn parse_siblings(stanzas: &str) -> Vec<Sibling> {
    stanzas
        .split("\n\n")
        .filter_map(|stanza| {
            let name = control_field(stanza, "Package")?;
            Some(Sibling {
                version: control_field(stanza, "Version")?,
                source: control_field(stanza, "Source").unwrap_or_else(|| name.clone()),
                name,
            })
        })
        .collect()
}

/// What the archive says of `name=version` for each package given, in one
/// `apt-cache show` (an install plan lists hundreds of packages).
fn archive_siblings(packages: &[(String, String)]) -> Vec<Sibling> {
    if packages.is_empty() {
        return Vec::new();
    }
    run_captured(
        Command::new("apt-cache")
            .args(["show", "--no-all-versions"])
            .args(packages.iter().map(|(n, v)| format!("{n}={v}"))),
    )
    .map(|out| parse_siblings(&out))
    .unwrap_or_default()
}

/// The source package of `package` at `version`, if the archive has it.
fn archive_source(package: &str, version: &str) -> Option<String> {
    archive_siblings(&[(package.to_string(), version.to_string())])
        .pop()
        .map(|s| s.source)
}

/// apt's plan for installing `packages` (`pkg` or `pkg=version`).
fn simulate(packages: &[String], allow_downgrades: bool) -> Result<String> {
    run_captured(
        Command::new("apt-get")
            .args(["install", "-s", "--no-install-recommends"])
            .args(allow_downgrades.then_some("--allow-downgrades"))
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The error when apt's plan would remove what the host has.
fn removal_refused(packages: &[String], removed: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "installing {} would make apt remove {}; doctor never removes what the host has. \
         See why with `apt-get install -s --no-install-recommends {}`, decide which to keep, install by hand, then rerun",
        packages.join(" "),
        removed.join(", "),
        packages.join(" ")
    )
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
        // Never remove what the host has: ask apt what it would do first.
        // A removal that only a lockstep sibling causes (backports'
        // qemu-utils against Debian's qemu-system-x86) is avoided by
        // installing the sibling at the matching version; anything else
        // stops with the packages named. --no-remove guards the real run.
        let mut packages: Vec<String> = apt.iter().map(|p| p.to_string()).collect();
        let simulated = simulate(&packages, false)?;
        let removals = apt_removals(&simulated);
        let downgrades = !removals.is_empty();
        if downgrades {
            let installs = archive_siblings(&apt_installs(&simulated));
            let pins = lockstep_pins(&removals, &installs, installed_source, archive_source)
                .map_err(|unexplained| removal_refused(&packages, &unexplained))?;
            for ((name, old), pin) in removals.iter().zip(&pins) {
                ui.info(&format!(
                    "warning: {name} {old} cannot stay beside what is installed (same source package, kept in lockstep by Debian): installing {pin} instead of removing it"
                ));
            }
            packages.extend(pins);
            let again = apt_removals(&simulate(&packages, true)?);
            if !again.is_empty() {
                let again: Vec<String> = again.iter().map(|(n, v)| format!("{n} [{v}]")).collect();
                return Err(removal_refused(&packages, &again));
            }
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
                .args(downgrades.then_some("--allow-downgrades"))
                .args(&packages)
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
    fn apt_simulations_name_what_would_be_removed_and_installed() {
        let sim = "NOTE: This is only a simulation!\n\
                   Inst perl [5.36.0-7+deb12u2] (5.36.0-7+deb12u4 Debian-Security:12 [amd64]) []\n\
                   Remv qemu-utils [1:10.0.2+ds-1~bpo12+1]\n\
                   Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18 Debian:12.12/stable [amd64])\n\
                   Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u18 Debian:12.12/stable [amd64])\n";
        assert_eq!(
            apt_removals(sim),
            [(
                "qemu-utils".to_string(),
                "1:10.0.2+ds-1~bpo12+1".to_string()
            )]
        );
        assert_eq!(
            apt_installs(sim),
            [
                ("perl".to_string(), "5.36.0-7+deb12u4".to_string()),
                (
                    "qemu-system-x86".to_string(),
                    "1:7.2+dfsg-7+deb12u18".to_string()
                )
            ]
        );
        assert!(apt_removals("Inst cpio (2.13)\nConf cpio (2.13)\n").is_empty());
        assert_eq!(
            control_field(
                "Package: qemu-utils\nSource: qemu (1:7.2+dfsg-7)\n",
                "Source"
            )
            .as_deref(),
            Some("qemu")
        );
        assert_eq!(control_field("Package: cpio\n", "Source"), None);
    }

    #[test]
    fn only_a_lockstep_sibling_is_pinned_instead_of_removed() {
        let sibling = |name: &str, version: &str, source: &str| Sibling {
            name: name.into(),
            version: version.into(),
            source: source.into(),
        };
        let installs = [
            sibling("qemu-system-x86", "1:7.2", "qemu"),
            sibling("cpio", "2.13", "cpio"),
        ];
        let installed = |p: &str| Some(if p == "busybox" { "busybox" } else { "qemu" }.to_string());
        // The archive has qemu-utils at 7.2 (source qemu), no busybox there.
        let archive =
            |p: &str, v: &str| (p == "qemu-utils" && v == "1:7.2").then(|| "qemu".to_string());
        let qemu_utils = [("qemu-utils".to_string(), "1:10.0".to_string())];
        assert_eq!(
            lockstep_pins(&qemu_utils, &installs, installed, archive),
            Ok(vec!["qemu-utils=1:7.2".to_string()])
        );
        let both = [
            ("qemu-utils".to_string(), "1:10.0".to_string()),
            ("busybox".to_string(), "1:1.35".to_string()),
        ];
        assert_eq!(
            lockstep_pins(&both, &installs, installed, archive),
            Err(vec!["busybox [1:1.35]".to_string()])
        );
        // A sibling the archive lacks at the installed version is not pinned.
        assert!(lockstep_pins(&qemu_utils, &installs, installed, |_: &str, _: &str| None).is_err());
        let stanzas = "Package: qemu-utils\nSource: qemu (1:7.2)\nVersion: 1:7.2\n\n\
                       Package: cpio\nVersion: 2.13\n\n";
        assert_eq!(
            parse_siblings(stanzas),
            [
                sibling("qemu-utils", "1:7.2", "qemu"),
                sibling("cpio", "2.13", "cpio")
            ]
        );
        let err = removal_refused(&["a".into(), "b".into()], &["c [1]".into()]).to_string();
        assert!(
            err.starts_with("installing a b would make apt remove c [1]; "),
            "{err}"
        );
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
            removed.iter().any(|(name, _)| name == "busybox-static"),
            "{removed:?} from:\n{sim}"
        );
        // The archive and dpkg name both sides' source package.
        let installs = archive_siblings(&apt_installs(&sim));
        assert!(
            installs
                .iter()
                .any(|s| s.name == "busybox" && s.source == "busybox"),
            "{installs:?}"
        );
        assert_eq!(
            installed_source("busybox-static").as_deref(),
            Some("busybox")
        );
    }
}
