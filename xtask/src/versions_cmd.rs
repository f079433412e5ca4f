//! `cargo xtask versions [--json] [--update NAME [--source debian|upstream]]`.

use std::process::Command;

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::bad_input;
use crate::cache::write_atomic;
use crate::context::Ctx;
use crate::hash;
use crate::tools::run_captured;
use crate::versions::{rewrite_scalar, yaml_string, Versions, UPDATABLE};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Source {
    Debian,
    Upstream,
}

pub fn run(ctx: &Ctx, update: Option<&str>, source: Source) -> Result<()> {
    if let Some(name) = update {
        if let Some(recipe) = name.strip_prefix("recipe:") {
            return update_lock(ctx, recipe);
        }
        return update_pin(ctx, name, source);
    }
    let v = &ctx.versions;
    if ctx.json {
        let mut value = serde_json::to_value(v)?;
        value["source_date_epoch_in_force"] = ctx.epoch.into();
        value["file"] = ctx.versions_path.display().to_string().into();
        return ctx.print_json(&value);
    }
    println!("{}: valid", ctx.versions_path.display());
    println!("version             {}", v.version);
    println!(
        "source_date_epoch   {}{}",
        ctx.epoch,
        if ctx.epoch != v.source_date_epoch {
            " (from SOURCE_DATE_EPOCH)"
        } else {
            ""
        }
    );
    println!(
        "distro              {} {} {}",
        v.distro.name, v.distro.suite, v.distro.architecture
    );
    println!(
        "rust                {} ({})",
        v.rust.toolchain, v.rust.musl_target
    );
    println!(
        "kernel              {} kata_config_version {}: {}={} sha256 {}",
        v.kernel.version,
        v.kernel.kata_config_version,
        v.kernel.debian.package,
        v.kernel.debian.version,
        v.kernel.debian.sha256
    );
    if let Some(u) = &v.kernel.upstream {
        println!(
            "kernel (upstream)   {} sha256 {}",
            u.url,
            u.sha256
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "not pinned (not used)".into())
        );
    }
    println!(
        "busybox             {}: {}={} sha256 {}",
        v.busybox.version,
        v.busybox.debian.package,
        v.busybox.debian.version,
        v.busybox.debian.sha256
    );
    println!(
        "reference kernel    {}: {}={} sha256 {} (benchmarks only)",
        v.reference_kernel.version,
        v.reference_kernel.debian.package,
        v.reference_kernel.debian.version,
        v.reference_kernel.debian.sha256
    );
    println!(
        "qemu                >= {} (Debian {}={})",
        v.qemu.minimum_version, v.qemu.debian.package, v.qemu.debian.version
    );
    println!(
        "containerd          >= {} (Debian {}={})",
        v.containerd.minimum_version, v.containerd.debian.package, v.containerd.debian.version
    );
    println!(
        "vhost-device-vsock  {} (crate {} sha256 {})",
        v.vhost_device_vsock.version, v.vhost_device_vsock.crate_name, v.vhost_device_vsock.sha256
    );
    Ok(())
}

/// `--update recipe:NAME`: resolves the recipe's `packages.install` and
/// their dependencies against the Debian archive apt knows (the host's
/// sources, which must serve versions.yaml's suite) and writes the lock.
fn update_lock(ctx: &Ctx, name: &str) -> Result<()> {
    use rootfs_builder::packages::{lock_path, Lock, LockedPackage, LOCK_FORMAT};
    use rootfs_builder::recipe::PackageVariant;
    let (recipe, recipe_file) = crate::rootfs::load_recipe(ctx, name)?;
    let Some(spec) = &recipe.packages else {
        return bad_input!(
            "--update recipe:{name}: {} lists no packages (add `packages: {{install: [...]}}` first)",
            recipe_file.display()
        );
    };
    let mut install = spec.install.clone();
    install.sort();
    install.dedup();
    for package in &install {
        if stanza(package)?.is_none() {
            return bad_input!(
                "{}: packages.install: {package} is not a package of the Debian archive apt knows here (a typo? or run `apt-get update`)",
                recipe_file.display()
            );
        }
    }
    let mut wanted = install.clone();
    if spec.variant == PackageVariant::Essential {
        wanted.extend(essential_set()?);
    }
    let names = apt_closure(&wanted)?;
    let arch = &ctx.versions.distro.architecture;
    let mut packages = Vec::new();
    for package in &names {
        let fields = stanza(package)?.with_context(|| {
            format!("apt-cache show {package}: no record (run `apt-get update`)")
        })?;
        let field = |k: &str| {
            fields
                .get(k)
                .cloned()
                .with_context(|| format!("apt-cache show {package}: no {k} field"))
        };
        let package_arch = field("Architecture")?;
        if package_arch != *arch && package_arch != "all" {
            return bad_input!(
                "--update recipe:{name}: {package} resolves to architecture {package_arch}, not {arch}"
            );
        }
        packages.push(LockedPackage {
            name: package.clone(),
            version: field("Version")?,
            sha256: field("SHA256")?,
        });
    }
    let lock = Lock {
        format: LOCK_FORMAT,
        recipe: name.into(),
        suite: ctx.versions.distro.suite.clone(),
        architecture: arch.clone(),
        variant: spec.variant,
        install,
        packages,
    };
    let file = lock_path(&ctx.recipes_dir(), name);
    let text = lock.to_yaml()?;
    let old = std::fs::read_to_string(&file).unwrap_or_default();
    write_atomic(&file, text.as_bytes())?;
    let summary = format!(
        "{}: {} packages ({}){}",
        file.display(),
        lock.packages.len(),
        lock.packages
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(", "),
        if old == text { ", unchanged" } else { "" }
    );
    ctx.ui.info(&format!("locked {summary}"));
    if ctx.json {
        ctx.print_json(
            &serde_json::json!({ "updated": format!("recipe:{name}"), "summary": summary }),
        )?;
    }
    Ok(())
}

/// What apt would install on an empty system for `wanted`: its own
/// resolver (first alternatives, no Recommends), run as a simulation
/// against an empty dpkg status, so the lock holds exactly what an install
/// uses, no more.
fn apt_closure(wanted: &[String]) -> Result<Vec<String>> {
    let empty = tempfile::NamedTempFile::new()?;
    let out = run_captured(
        Command::new("apt-get")
            .args(["--simulate", "--quiet", "--no-install-recommends"])
            .arg(format!(
                "--option=Dir::State::status={}",
                empty.path().display()
            ))
            .args([
                "--option=APT::Install-Suggests=false",
                "--option=Debug::NoLocking=true",
                "install",
            ])
            .args(wanted),
    )?;
    Ok(parse_simulated_installs(&out))
}

/// The package names of apt-get --simulate's `Inst NAME (VERSION ...)`
/// lines, sorted.
fn parse_simulated_installs(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Debian's `Essential: yes` packages among those apt knows: what
/// mmdebstrap's `essential` variant installs first.
fn essential_set() -> Result<Vec<String>> {
    let text = run_captured(Command::new("apt-cache").arg("dumpavail"))?;
    let mut names = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
        };
        if field("Essential:") == Some("yes") {
            if let Some(n) = field("Package:") {
                names.push(n.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        anyhow::bail!("apt-cache dumpavail lists no Essential: yes package (run `apt-get update`)");
    }
    Ok(names)
}

/// The fields of the archive's candidate record of `package`, or `None`
/// when apt knows no such package.
fn stanza(package: &str) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    let out = crate::tools::run_output(Command::new("apt-cache").args([
        "show",
        "--no-all-versions",
        package,
    ]))
    .context("run apt-cache (is this a Debian host? `cargo xtask doctor` checks)")?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            break; // the first record only
        }
        if let Some((k, v)) = line.split_once(':') {
            if !line.starts_with(char::is_whitespace) {
                fields.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    Ok((!fields.is_empty()).then_some(fields))
}

/// Re-pins one entry to what its source serves now and writes versions.yaml
/// back with its comments.
fn update_pin(ctx: &Ctx, name: &str, source: Source) -> Result<()> {
    if !UPDATABLE.contains(&name) {
        return bad_input!(
            "--update {name}: unknown entry; one of: {}, or recipe:NAME (a recipe's package lock)",
            UPDATABLE.join(", ")
        );
    }
    let text = std::fs::read_to_string(&ctx.versions_path)?;
    let mut edits: Vec<(Vec<&str>, String)> = Vec::new();
    let summary;
    match (name, source) {
        ("kernel" | "busybox", Source::Debian) => {
            let pin = if name == "kernel" {
                &ctx.versions.kernel.debian
            } else {
                &ctx.versions.busybox.debian
            };
            let (version, deb, _work) = crate::fetch::debian_candidate(ctx.cache()?, &pin.package)?;
            let sha = hash::file_sha256(&deb)?;
            summary = format!(
                "{name}: {}={version} sha256 {sha} (was {} {})",
                pin.package, pin.version, pin.sha256
            );
            edits.push((vec![name, "debian", "version"], yaml_string(&version)));
            edits.push((vec![name, "debian", "sha256"], sha));
            if name == "kernel" {
                // linux-source-6.1's version is the upstream one plus the Debian revision.
                let upstream = version.split('-').next().unwrap_or(&version).to_string();
                edits.push((vec!["kernel", "version"], yaml_string(&upstream)));
            }
        }
        ("kernel", Source::Upstream) => {
            let url = ctx
                .versions
                .kernel
                .upstream
                .as_ref()
                .map(|u| u.url.clone())
                .context("kernel.upstream.url is not set")?;
            let work = ctx.cache()?.temp_dir("update")?;
            let file = work.path().join("download");
            run_captured(
                Command::new("curl")
                    .args(["-fsSL", "-o"])
                    .arg(&file)
                    .arg(&url),
            )
            .with_context(|| format!("kernel.upstream.url {url} cannot be fetched from here"))?;
            let sha = hash::file_sha256(&file)?;
            summary = format!("kernel upstream: {url} sha256 {sha}");
            edits.push((vec!["kernel", "upstream", "sha256"], sha));
        }
        ("vhost_device_vsock", Source::Debian | Source::Upstream) => {
            return bad_input!(
                "--update vhost_device_vsock: crates are re-pinned by hand (version + the .crate sha256 from the crates.io index); cargo verifies it"
            );
        }
        (_, Source::Upstream) => {
            return bad_input!("--update {name} --source upstream: {name} has no upstream source")
        }
        _ => unreachable!("checked against UPDATABLE"),
    }
    let mut new_text = text;
    for (path, value) in &edits {
        new_text = rewrite_scalar(&new_text, path, value)
            .map_err(|e| anyhow::anyhow!("{}: {e}", ctx.versions_path.display()))?;
    }
    // Never write a file the loader would refuse.
    Versions::parse(&new_text, &ctx.versions_path)?;
    write_atomic(&ctx.versions_path, new_text.as_bytes())?;
    ctx.ui.info(&format!("re-pinned {summary}"));
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "updated": name, "summary": summary }))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_simulated_installs;

    #[test]
    fn simulated_installs_are_the_inst_lines() {
        let out = "NOTE: This is only a simulation!\n\
                   Inst libc6 (2.36-9+deb12u14 Debian:12.13/stable [amd64])\n\
                   Inst iptables (1.8.9-2 Debian:12.13/stable [amd64])\n\
                   Conf libc6 (2.36-9+deb12u14 Debian:12.13/stable [amd64])\n\
                   Inst libc6 (2.36-9+deb12u14 Debian:12.13/stable [amd64])\n";
        assert_eq!(parse_simulated_installs(out), ["iptables", "libc6"]);
        assert!(parse_simulated_installs("0 upgraded, 0 newly installed\n").is_empty());
    }
}
