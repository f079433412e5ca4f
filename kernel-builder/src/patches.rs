//! Kernel patches: `kernel-configs/patches/<series>/*.patch`, applied in
//! file-name order (hence the `0001-` style prefixes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The patches of one series, in application order.
#[derive(Debug, Clone, Default)]
pub struct Patches {
    series: String,
    files: Vec<(String, PathBuf)>,
}

impl Patches {
    /// Lists `<configs_dir>/patches/<series>/*.patch`. The series directory
    /// must exist (a misspelt series should not silently mean "no patches");
    /// it may hold no patch at all.
    pub fn load(configs_dir: &Path, series: &str) -> Result<Patches> {
        if series.is_empty() || series.contains(['/', '\\']) || series.starts_with('.') {
            return Err(Error::Input {
                path: configs_dir.join("patches"),
                problem: format!("`{series}` is not a patch series name"),
            });
        }
        let dir = configs_dir.join("patches").join(series);
        let files = crate::sorted_files(
            &dir,
            ".patch",
            &format!("patches/{series}"),
            &format!("patch series `{series}`"),
        )?;
        Ok(Patches {
            series: series.to_string(),
            files,
        })
    }

    pub fn series(&self) -> &str {
        &self.series
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// (relative path, absolute path) in application order, for cache keys.
    pub fn input_files(&self) -> Vec<(String, PathBuf)> {
        self.files.clone()
    }
}

/// Applies every patch to `src_dir` with `patch -p1 --forward --batch`. Each
/// patch is first tried with `--dry-run`, so a patch that does not apply
/// leaves the tree as the previous patch left it (no half-applied hunks, no
/// `.rej` files) and the error names it.
pub fn apply_patches(src_dir: &Path, patches: &Patches, log: &mut dyn Write) -> Result<()> {
    for (rel, path) in &patches.files {
        for dry_run in [true, false] {
            let mut cmd = Command::new("patch");
            cmd.arg("-p1")
                .arg("--forward")
                .arg("--batch")
                .arg("-d")
                .arg(src_dir)
                .arg("-i")
                .arg(path);
            if dry_run {
                cmd.arg("--dry-run");
            }
            let output = cmd.output().map_err(|e| Error::Tool {
                what: format!("patch {rel}"),
                detail: format!("cannot run patch: {e}"),
            })?;
            let _ = log.write_all(&output.stdout);
            let _ = log.write_all(&output.stderr);
            if !output.status.success() {
                return Err(Error::Patch {
                    patch: path.clone(),
                    src: src_dir.to_path_buf(),
                    output: format!(
                        "{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    )
                    .trim_end()
                    .to_string(),
                });
            }
        }
    }
    Ok(())
}
