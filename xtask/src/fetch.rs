//! Fetching pinned inputs, verified before use.
//!
//! Downloads land in a temp dir inside the cache, are hashed, and only a file
//! whose sha256 equals the pin is moved to `inputs/<sha256>/`. A mismatch is
//! an error naming the pin to fix; `--offline` never downloads and says what
//! is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::bad_input;
use crate::cache::{Cache, StepInputs};
use crate::context::Ctx;
use crate::graph::{Graph, StepId};
use crate::hash;
use crate::host_tools;
use crate::tools::run_captured;
use crate::ui::Ui;
use crate::versions::{DebianPackagePin, Sha256Hex};

pub struct Fetcher<'a> {
    pub cache: &'a Cache,
    pub ui: &'a Ui,
    pub offline: bool,
}

impl<'a> Fetcher<'a> {
    fn stored(&self, sha: &Sha256Hex) -> Option<PathBuf> {
        self.cache.stored_input(sha.as_str())
    }

    /// The verified `.deb` of a pinned Debian package. `pin_key` is the
    /// versions.yaml entry name (for messages).
    pub fn debian_package(&self, pin_key: &str, pin: &DebianPackagePin) -> Result<PathBuf> {
        if let Some(path) = self.stored(&pin.sha256) {
            return Ok(path);
        }
        let spec = format!("{}={}", pin.package, pin.version);
        if self.offline {
            return bad_input!(
                "--offline: {spec} ({pin_key}) is not in the cache {}; run once without --offline to fetch it",
                self.cache.root().display()
            );
        }
        let progress = self.ui.step(&format!("fetch {spec}"));
        let work = self.cache.temp_dir("fetch")?;
        let out = crate::tools::run_output(
            Command::new("apt-get")
                .arg("download")
                .arg(&spec)
                .current_dir(work.path()),
        )
        .context("run apt-get (is this a Debian host? `cargo xtask doctor` checks)")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr
                .lines()
                .find(|l| l.starts_with("E:"))
                .unwrap_or(stderr.trim());
            return bad_input!(
                "{pin_key}: {spec} can no longer be fetched ({first}); if `apt-get update` does not help, re-pin it with `cargo xtask versions --update {pin_key}`"
            );
        }
        let file = fs::read_dir(work.path())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {spec} produced no .deb"))?;
        let path = self.verify_and_store(
            pin_key,
            &file,
            &pin.sha256,
            &format!("{pin_key}.debian.sha256"),
        )?;
        progress.finish("fetched and verified");
        Ok(path)
    }

    /// A file from an upstream URL. An unpinned digest refuses to fetch.
    pub fn url(&self, pin_key: &str, url: &str, sha: Option<&Sha256Hex>) -> Result<PathBuf> {
        let Some(sha) = sha else {
            return bad_input!(
                "{pin_key}: {url} has no sha256 pinned, so it is not used; pin it with `cargo xtask versions --update {pin_key} --source upstream`"
            );
        };
        if let Some(path) = self.stored(sha) {
            return Ok(path);
        }
        if self.offline {
            return bad_input!("--offline: {url} ({pin_key}) is not in the cache");
        }
        let work = self.cache.temp_dir("fetch")?;
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("download");
        let file = work.path().join(name);
        let progress = self.ui.step(&format!("fetch {url}"));
        run_captured(
            Command::new("curl")
                .args(["-fsSL", "--retry", "2", "-o"])
                .arg(&file)
                .arg(url),
        )
        .with_context(|| format!("{pin_key}: download {url}"))?;
        let path =
            self.verify_and_store(pin_key, &file, sha, &format!("{pin_key}.upstream.sha256"))?;
        progress.finish("fetched and verified");
        Ok(path)
    }

    fn verify_and_store(
        &self,
        pin_key: &str,
        file: &Path,
        want: &Sha256Hex,
        field: &str,
    ) -> Result<PathBuf> {
        let got = hash::file_sha256(file)?;
        if got != want.as_str() {
            return bad_input!(
                "{pin_key}: {} has sha256 {got} but versions.yaml pins {field} = {want}; refusing to use it (re-pin with `cargo xtask versions --update {pin_key}` if the source really changed)",
                file.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        self.cache.store_input(file, want.as_str())
    }
}

/// The step `unpack:<pin_key>`: one member of a pinned, verified `.deb`
/// (the busybox binary, the kernel source tarball), as the file
/// [`member_file_name`] in its entry.
pub fn add_debian_member<'g>(
    g: &mut Graph<'g>,
    ctx: &'g Ctx,
    pin_key: &'static str,
    pin: &'g DebianPackagePin,
) -> StepId {
    let id = format!("unpack:{pin_key}");
    if let Some(found) = g.find(&id) {
        return found;
    }
    let mut inputs = StepInputs::new("unpack", 1);
    inputs
        .value("deb.sha256", &pin.sha256)
        .value("member", &pin.member);
    let member = pin.member.trim_start_matches('/').to_string();
    g.add(
        id,
        inputs,
        &[],
        &[host_tools::APT_GET, host_tools::DPKG_DEB],
        move |_, out| {
            let deb = ctx.fetcher()?.debian_package(pin_key, pin)?;
            let tree = out.join("tree");
            run_captured(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
            let found = tree.join(&member);
            if !found.is_file() {
                return bad_input!(
                    "{pin_key}.debian.member: {} has no file {member}",
                    deb.file_name().unwrap_or_default().to_string_lossy()
                );
            }
            fs::rename(&found, out.join(member_file_name(pin)))?;
            crate::cache::remove_tree(&tree)
        },
    )
}

impl Ctx {
    /// One member of a pinned `.deb` (the `unpack:<pin_key>` step alone),
    /// for the tests and benchmarks that use one outside a release.
    pub fn debian_member(&self, pin_key: &'static str, pin: &DebianPackagePin) -> Result<PathBuf> {
        let entry =
            crate::graph::build_one(self, |g| Ok(add_debian_member(g, self, pin_key, pin)))?;
        Ok(entry.path(&member_file_name(pin)))
    }
}

/// The file name of a pin's member in its `unpack:` entry.
pub fn member_file_name(pin: &DebianPackagePin) -> String {
    Path::new(&pin.member)
        .file_name()
        .expect("versions.yaml checks that a member has a file name")
        .to_string_lossy()
        .into_owned()
}

/// What the Debian archive serves now for a package: (version, .deb path).
pub fn debian_candidate(
    cache: &Cache,
    package: &str,
) -> Result<(String, PathBuf, tempfile::TempDir)> {
    let out = run_captured(Command::new("apt-cache").args(["policy", package]))?;
    let version = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Candidate:")
                .map(|v| v.trim().to_string())
        })
        .filter(|v| v != "(none)")
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the Debian archive has no candidate for {package} (run `apt-get update`?)"
            )
        })?;
    let work = cache.temp_dir("update")?;
    run_captured(
        Command::new("apt-get")
            .arg("download")
            .arg(format!("{package}={version}"))
            .current_dir(work.path()),
    )?;
    let deb = fs::read_dir(work.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    Ok((version, deb, work))
}
