//! `--from-release`: the files a release ships, unpacked from the tarball
//! or installed from the .deb, and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use xtask::context::Ctx;
use xtask::error::InputError;

use super::SHIM_BINARY;

/// What a `--from-release` run uses, kept until the run ends: the unpacked
/// tarball (removed with its temp dir) or the installed .deb (purged).
pub(super) enum ShippedTree {
    Unpacked(#[allow(dead_code)] tempfile::TempDir),
    Installed(InstalledDeb),
}

/// The release's .deb installed into the host's real /opt/kata by `dpkg -i`,
/// purged again at the end. It is only installed on a host where neither the
/// package nor /opt/kata exists, so the purge restores the host as it was.
pub(super) struct InstalledDeb {
    pub(super) package: String,
    pub(super) purged: bool,
}

impl InstalledDeb {
    pub(super) fn install(ctx: &Ctx, deb: &Path) -> Result<InstalledDeb> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(InputError::new("--install-deb runs `dpkg -i` into /opt/kata and needs root; run as root or drop --install-deb").into());
        }
        let package =
            xtask::tools::run_captured(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Package"))?
                .trim()
                .to_string();
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Status}", &package])
            .output()?;
        if status.status.success()
            && String::from_utf8_lossy(&status.stdout).trim() != "not-installed"
        {
            return Err(InputError::new(format!(
                "--install-deb: {package} is already installed on this host; remove it first (dpkg --purge {package}) so the test can install and purge its own"
            ))
            .into());
        }
        let prefix = Path::new(xtask::release::PREFIX);
        if prefix.exists() {
            return Err(InputError::new(format!(
                "--install-deb: {} exists and is not from {package}; move it away so the test does not overwrite it",
                prefix.display()
            ))
            .into());
        }
        let step = ctx.ui.step(&format!("test e2e: dpkg -i {}", deb.display()));
        let installed = InstalledDeb {
            package,
            purged: false,
        };
        // A failed install is purged too (dpkg may have unpacked files).
        xtask::tools::run_captured(Command::new("dpkg").arg("-i").arg(deb))?;
        step.finish(&format!(
            "{} installed into {}",
            installed.package,
            prefix.display()
        ));
        Ok(installed)
    }

    /// `dpkg --purge`, then checks the package left nothing in /opt/kata.
    pub(super) fn purge(mut self, ctx: &Ctx) -> Result<()> {
        self.purged = true;
        xtask::tools::run_captured(Command::new("dpkg").arg("--purge").arg(&self.package))?;
        let prefix = Path::new(xtask::release::PREFIX);
        if prefix.exists() {
            bail!(
                "dpkg --purge {} left {} behind",
                self.package,
                prefix.display()
            );
        }
        ctx.ui.info(&format!(
            "test e2e: dpkg --purge {}: {} is gone",
            self.package,
            prefix.display()
        ));
        Ok(())
    }
}

impl Drop for InstalledDeb {
    fn drop(&mut self) {
        if !self.purged {
            let _ = Command::new("dpkg")
                .arg("--purge")
                .arg(&self.package)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Builds (or takes from the cache) the release and returns (what holds the
/// shipped files, the shipped shim, the shipped configuration).
///
/// The shipped configuration.toml names `/opt/kata/...` paths. Rather than
/// install into the host's real /opt/kata, the tarball is unpacked under a
/// temp dir and the configuration's `/opt/kata` prefix string is replaced by
/// `<tmp>/opt/kata`: every other line (accelerator = "auto", memory,
/// timeouts) stays as shipped. With `install_deb` the .deb is installed with
/// dpkg into the real /opt/kata and its configuration is used unchanged.
///
/// With a `recipe` other than the default `minimal`, the release also ships
/// that guest (`release --recipes minimal,RECIPE`) and its own
/// `configuration-RECIPE.toml` is the one used.
pub(super) fn from_release(
    ctx: &Ctx,
    install_deb: bool,
    recipe: &str,
) -> Result<(ShippedTree, PathBuf, String)> {
    let default_guest = recipe == "minimal";
    let args = xtask::release::ReleaseArgs {
        recipes: if default_guest {
            Vec::new()
        } else {
            vec!["minimal".into(), recipe.into()]
        },
        ..Default::default()
    };
    let built = xtask::release::build(ctx, &args)?;
    let prefix = Path::new(xtask::release::PREFIX);
    let config_rel = if default_guest {
        "share/defaults/kata-containers/configuration.toml".to_string()
    } else {
        format!("share/defaults/kata-containers/configuration-{recipe}.toml")
    };
    let config_rel = config_rel.as_str();
    if install_deb {
        let installed = InstalledDeb::install(ctx, &built.deb)?;
        let config = std::fs::read_to_string(prefix.join(config_rel)).with_context(|| {
            format!(
                "the .deb installed no {}",
                prefix.join(config_rel).display()
            )
        })?;
        return Ok((
            ShippedTree::Installed(installed),
            prefix.join("bin").join(SHIM_BINARY),
            config,
        ));
    }
    let tree = tempfile::Builder::new()
        .prefix("kata-e2e-release-")
        .tempdir()?;
    xtask::tools::run_captured(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(&built.tarball)
            .arg("-C")
            .arg(tree.path()),
    )
    .context("unpack the release tarball (needs GNU tar and zstd)")?;
    let root = tree
        .path()
        .join(prefix.strip_prefix("/").expect("absolute prefix"));
    let shipped = std::fs::read_to_string(root.join(config_rel))
        .with_context(|| format!("the release tarball has no {config_rel}"))?;
    let config = shipped.replace(xtask::release::PREFIX, &root.display().to_string());
    let shim = root.join("bin").join(SHIM_BINARY);
    if !shim.is_file() {
        bail!("the release tarball has no bin/{SHIM_BINARY}");
    }
    ctx.ui.info(&format!(
        "test e2e: from release {} unpacked at {}",
        built.tarball.display(),
        root.display()
    ));
    Ok((ShippedTree::Unpacked(tree), shim, config))
}
