//! `target/dist/manifest.json`: what every step produced (design section 2).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cache::write_atomic;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Kernel,
    KernelCompressed,
    KernelConfig,
    Agent,
    Rootfs,
    Initrd,
    Image,
    Runtime,
    Shim,
    Monitor,
    Config,
    Tarball,
    Deb,
    Rpm,
    Checksums,
    Sbom,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub kind: Kind,
    /// Relative to the repository root.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub cache_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// A verity image's `root_hash=…,salt=…,data_blocks=…,data_block_size=…,
    /// hash_block_size=…` (upstream's `kernel_verity_params`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_verity_params: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub source_date_epoch: i64,
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    pub fn path(dist: &Path) -> PathBuf {
        dist.join("manifest.json")
    }

    pub fn load(dist: &Path) -> Result<Option<Manifest>> {
        let path = Self::path(dist);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not a manifest", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Adds or replaces (by name) artifacts and writes the manifest
    /// atomically. A manifest of another version or epoch is started afresh:
    /// mixing releases in one manifest would make it lie.
    pub fn record(dist: &Path, version: &str, epoch: i64, new: Vec<Artifact>) -> Result<()> {
        // Read, change, write under the dist dir's lock: two runs recording
        // at once must not lose each other's entries.
        let _lock = lock_dist(dist)?;
        let mut m = match Self::load(dist)? {
            Some(m) if m.version == version && m.source_date_epoch == epoch => m,
            _ => Manifest {
                version: version.to_string(),
                source_date_epoch: epoch,
                artifacts: vec![],
            },
        };
        for a in new {
            m.artifacts.retain(|old| old.name != a.name);
            m.artifacts.push(a);
        }
        m.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut text = serde_json::to_vec_pretty(&m)?;
        text.push(b'\n');
        write_atomic(&Self::path(dist), &text)
    }

    #[cfg(test)]
    pub fn find(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }
}

/// An exclusive lock on the dist dir (`.lock` in it), held while anything
/// is published there or the manifest changes; released on drop.
pub fn lock_dist(dist: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dist).with_context(|| format!("create {}", dist.display()))?;
    let path = dist.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    f.lock()
        .with_context(|| format!("lock {}", path.display()))?;
    // Whoever holds this lock is the only run publishing: temp files left
    // in dist now are a killed run's.
    for e in std::fs::read_dir(dist)?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if PUBLISH_TEMP_PREFIXES.iter().any(|p| name.starts_with(p)) {
            let _ = crate::cache::remove_tree(&e.path());
        }
    }
    Ok(f)
}

/// The prefixes of the temp files and dirs publishing creates in dist.
pub const PUBLISH_TEMP_PREFIXES: &[&str] = &[".publish", ".link", ".tree"];

#[cfg(test)]
mod tests {
    use super::*;

    fn art(name: &str, sha: &str) -> Artifact {
        Artifact {
            name: name.into(),
            kind: Kind::Initrd,
            path: format!("target/dist/{name}"),
            sha256: sha.into(),
            bytes: 1,
            cache_key: "k".into(),
            recipe: Some("minimal".into()),
            kernel_verity_params: None,
        }
    }

    #[test]
    fn record_replaces_by_name_and_keeps_others() {
        let d = tempfile::tempdir().unwrap();
        Manifest::record(d.path(), "1.0.0", 5, vec![art("a", "1"), art("b", "1")]).unwrap();
        Manifest::record(d.path(), "1.0.0", 5, vec![art("a", "2")]).unwrap();
        let m = Manifest::load(d.path()).unwrap().unwrap();
        assert_eq!(m.artifacts.len(), 2);
        assert_eq!(m.find("a").unwrap().sha256, "2");
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(Manifest::path(d.path())).unwrap()).unwrap();
        assert_eq!(raw["artifacts"][0]["kind"], "initrd");
        assert_eq!(raw["source_date_epoch"], 5);
        // another version starts afresh
        Manifest::record(d.path(), "2.0.0", 5, vec![art("c", "1")]).unwrap();
        assert_eq!(
            Manifest::load(d.path()).unwrap().unwrap().artifacts.len(),
            1
        );
    }

    #[test]
    fn kinds_use_the_design_names() {
        assert_eq!(
            serde_json::to_string(&Kind::KernelCompressed).unwrap(),
            "\"kernel-compressed\""
        );
        assert_eq!(
            serde_json::to_string(&Kind::KernelConfig).unwrap(),
            "\"kernel-config\""
        );
    }

    /// Two processes (this test binary, re-run as children) each record
    /// 40 artifacts one at a time into one dist dir: none may be lost.
    #[test]
    fn concurrent_processes_lose_no_entries() {
        const CHILD: &str = "KATA_XTASK_TEST_RECORD_INTO";
        if let Some(dist) = std::env::var_os(CHILD) {
            let who = std::env::var("KATA_XTASK_TEST_WHO").unwrap();
            for i in 0..40 {
                let a = art(&format!("{who}-{i}"), "1");
                Manifest::record(Path::new(&dist), "1.0.0", 5, vec![a]).unwrap();
            }
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let children: Vec<_> = ["a", "b"]
            .iter()
            .map(|who| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "manifest::tests::concurrent_processes_lose_no_entries",
                    ])
                    .env(CHILD, d.path())
                    .env("KATA_XTASK_TEST_WHO", who)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let m = Manifest::load(d.path()).unwrap().unwrap();
        assert_eq!(m.artifacts.len(), 80, "every entry of both processes");
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "manifest.json" && n != ".lock")
            .collect();
        assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    }
}
