//! Guest kernel configuration and build for Kata Containers guests.
//!
//! The kernel configuration is *derived*, never stored: `make allnoconfig`
//! seeded (through `KCONFIG_ALLCONFIG`) with the fragments under
//! `kernel-configs/` (`common/`, `<arch>/`, optionally `debug/`). Kconfig
//! silently drops any option whose dependencies are off, so after
//! configuring, every requested option is checked against the final
//! `.config`, and each miss is reported with the fragment `file:line` that
//! asked for it. Options a kernel version may legitimately lack are listed in
//! `whitelist.conf`.
//!
//! Builds are out of tree (`make O=<build dir>`), so one extracted source can
//! serve several configurations (normal and debug) and stays pristine.
//!
//! This crate does no fetching or caching; the caller (xtask) hands it a
//! verified tarball and decides where things live. It hashes the inputs it
//! consumes via [`Fragments::input_files`] and [`Patches::input_files`].

mod build;
mod config;
mod error;
mod fragments;
mod patches;

pub use build::{
    build, extract_source, install_modules, kernel_release, BuildOptions, KernelOutputs,
};
pub use config::{check_config, configure, read_config, ConfigReport, Missing};
pub use error::{Error, Result};
pub use fragments::{ConfigValue, Fragments, Origin, Request, MODULES_GROUP};
pub use patches::{apply_patches, Patches};

/// The kernel's own name for a Kata architecture, as passed in `ARCH=`, and
/// the compressed image it builds. Only x86_64 is wired up so far.
/// The files named `*.<ext>` in `dir` (not directories), sorted by name, as
/// `(<label>/<name>, path)`; `what` names the dir in errors.
pub(crate) fn sorted_files(
    dir: &std::path::Path,
    ext: &str,
    label: &str,
    what: &str,
) -> Result<Vec<(String, std::path::PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Input {
        path: dir.to_path_buf(),
        problem: format!("cannot list {what}: {e}"),
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::Input {
                path: entry.path(),
                problem: "file name is not UTF-8".into(),
            });
        };
        let file_type = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if name.ends_with(ext) && !file_type.is_dir() {
            files.push((format!("{label}/{name}"), entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn kernel_arch(arch: &str) -> Result<(&'static str, &'static str)> {
    match arch {
        "x86_64" => Ok(("x86_64", "arch/x86/boot/bzImage")),
        other => Err(Error::UnsupportedArch(other.to_string())),
    }
}
