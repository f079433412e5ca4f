//! Source extraction and the kernel build itself.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// Extracts a kernel source tarball (any compression `tar` detects) into
/// `dest`, dropping the tarball's top directory. The tree is unpacked next to
/// `dest` and renamed into place, so `dest` either does not exist or is
/// complete. `dest` must not exist yet.
pub fn extract_source(tarball: &Path, dest: &Path) -> Result<PathBuf> {
    if dest.exists() {
        return Err(Error::Input {
            path: dest.to_path_buf(),
            problem: "already exists; remove it or extract elsewhere".into(),
        });
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".kernel-extract-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let output = Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(staging.path())
        .arg("--strip-components=1")
        .arg("--no-same-owner")
        .output()
        .map_err(|e| Error::Tool {
            what: "tar".into(),
            detail: format!("cannot run tar: {e}"),
        })?;
    if !output.status.success() {
        return Err(Error::Tool {
            what: format!("extracting {}", tarball.display()),
            detail: String::from_utf8_lossy(&output.stderr)
                .trim_end()
                .to_string(),
        });
    }
    if !staging.path().join("Makefile").is_file() || !staging.path().join("Kconfig").is_file() {
        return Err(Error::Input {
            path: tarball.to_path_buf(),
            problem: "not a kernel source tarball (no top-level Makefile and Kconfig after \
                      stripping its first directory)"
                .into(),
        });
    }
    let staged = staging.keep();
    std::fs::rename(&staged, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        Error::io(dest, e)
    })?;
    Ok(dest.to_path_buf())
}

/// How to run the build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Parallel jobs (`make -j`), at least 1.
    pub jobs: usize,
    /// Where make's output goes (created/truncated).
    pub log_path: PathBuf,
    /// Show a spinner with the current step on stderr.
    pub progress: bool,
    /// Fixes the build timestamp compiled into the kernel.
    pub source_date_epoch: u64,
}

/// What a successful build produced, all inside the build directory.
#[derive(Debug, Clone)]
pub struct KernelOutputs {
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub config: PathBuf,
    pub system_map: PathBuf,
    /// `make kernelrelease`, e.g. `6.1.192`.
    pub version: String,
}

/// Builder identity compiled into the kernel (`uname -v`, `/proc/version`):
/// fixed so two builds of the same inputs are identical.
const BUILD_USER: &str = "kata";
const BUILD_HOST: &str = "kata-builder";

fn make(src_dir: &Path, build_dir: &Path, make_arch: &str, epoch: u64) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src_dir)
        .arg(format!("O={}", build_dir.display()))
        .arg(format!("ARCH={make_arch}"))
        .env("LC_ALL", "C")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("KBUILD_BUILD_TIMESTAMP", format_build_timestamp(epoch))
        .env("KBUILD_BUILD_USER", BUILD_USER)
        .env("KBUILD_BUILD_HOST", BUILD_HOST)
        // Otherwise the `#N` in the version string counts local rebuilds.
        .env("KBUILD_BUILD_VERSION", "1");
    cmd
}

/// `make kernelrelease` for a configured build directory.
pub fn kernel_release(src_dir: &Path, build_dir: &Path, arch: &str) -> Result<String> {
    let (make_arch, _) = crate::kernel_arch(arch)?;
    let output = make(src_dir, build_dir, make_arch, 0)
        .arg("-s")
        .arg("kernelrelease")
        .output()
        .map_err(|e| Error::Tool {
            what: "make kernelrelease".into(),
            detail: e.to_string(),
        })?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || version.is_empty() || version.contains(char::is_whitespace) {
        return Err(Error::Tool {
            what: "make kernelrelease".into(),
            detail: format!(
                "{}: {}{}",
                output.status,
                version,
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(version)
}

/// Builds `vmlinux` and the compressed image in `build_dir`, which
/// [`crate::configure`] must have set up. make's output goes to
/// `options.log_path`; on failure the error names the log and quotes its end.
pub fn build(
    src_dir: &Path,
    build_dir: &Path,
    arch: &str,
    options: &BuildOptions,
) -> Result<KernelOutputs> {
    let (make_arch, bzimage_rel) = crate::kernel_arch(arch)?;
    if options.jobs == 0 {
        return Err(Error::Input {
            path: build_dir.to_path_buf(),
            problem: "jobs must be at least 1".into(),
        });
    }
    let config = build_dir.join(".config");
    if !config.is_file() {
        return Err(Error::Input {
            path: config,
            problem: "no verified .config: run configure first".into(),
        });
    }
    let build_dir = build_dir
        .canonicalize()
        .map_err(|e| Error::io(build_dir, e))?;
    let log_file = File::create(&options.log_path).map_err(|e| Error::io(&options.log_path, e))?;
    let log = Arc::new(Mutex::new(log_file));

    let mut targets = vec!["vmlinux", "bzImage"];
    if modules_enabled(&config)? {
        targets.push("modules");
    }
    let mut child = make(src_dir, &build_dir, make_arch, options.source_date_epoch)
        .arg(format!("-j{}", options.jobs))
        .args(&targets)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool {
            what: "make".into(),
            detail: format!("cannot run make: {e}"),
        })?;

    let bar = if options.progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} kernel build {elapsed} [{pos} steps] {wide_msg}",
            )
            .expect("static template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    // stdout carries kbuild's "  CC  path" step lines; stderr warnings/errors.
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_thread = {
        let (log, bar) = (log.clone(), bar.clone());
        std::thread::spawn(move || copy_lines(stdout, &log, Some(&bar)))
    };
    let err_thread = {
        let log = log.clone();
        std::thread::spawn(move || copy_lines(stderr, &log, None))
    };
    let status = child.wait().map_err(|e| Error::Tool {
        what: "make".into(),
        detail: e.to_string(),
    })?;
    let copied = [out_thread.join(), err_thread.join()];
    bar.finish_and_clear();
    for result in copied {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::io(&options.log_path, e)),
            Err(_) => {
                return Err(Error::Tool {
                    what: "make output copier".into(),
                    detail: "thread panicked".into(),
                })
            }
        }
    }
    if !status.success() {
        return Err(Error::Build {
            log: options.log_path.clone(),
            tail: log_tail(&options.log_path, 25),
        });
    }

    let outputs = KernelOutputs {
        vmlinux: build_dir.join("vmlinux"),
        bzimage: build_dir.join(bzimage_rel),
        config: build_dir.join(".config"),
        system_map: build_dir.join("System.map"),
        version: kernel_release(src_dir, &build_dir, arch)?,
    };
    for path in [&outputs.vmlinux, &outputs.bzimage, &outputs.system_map] {
        if !path.is_file() {
            return Err(Error::Build {
                log: options.log_path.clone(),
                tail: format!("make succeeded but {} is missing", path.display()),
            });
        }
    }
    Ok(outputs)
}

/// Whether a `.config` enables loadable modules.
fn modules_enabled(config: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
    Ok(text.lines().any(|l| l.trim_end() == "CONFIG_MODULES=y"))
}

/// Installs the modules of a [`build`] with modules under
/// `dest/lib/modules/<release>`, stripped, with depmod's index files
/// (`depmod` must be on `PATH`), as a guest's `/lib/modules` holds them.
/// The `build` and `source` links into the build tree are left out. make's
/// output is appended to `log_path`. Returns the `<release>` directory.
pub fn install_modules(
    src_dir: &Path,
    build_dir: &Path,
    arch: &str,
    dest: &Path,
    log_path: &Path,
    source_date_epoch: u64,
) -> Result<PathBuf> {
    let (make_arch, _) = crate::kernel_arch(arch)?;
    let config = build_dir.join(".config");
    if !modules_enabled(&config)? {
        return Err(Error::Input {
            path: config,
            problem: "CONFIG_MODULES is off: this kernel has no modules to install".into(),
        });
    }
    let build_dir = build_dir
        .canonicalize()
        .map_err(|e| Error::io(build_dir, e))?;
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let dest = dest.canonicalize().map_err(|e| Error::io(dest, e))?;
    let output = make(src_dir, &build_dir, make_arch, source_date_epoch)
        .arg(format!("INSTALL_MOD_PATH={}", dest.display()))
        .arg("INSTALL_MOD_STRIP=1")
        .arg("DEPMOD=depmod")
        .arg("modules_install")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Tool {
            what: "make modules_install".into(),
            detail: format!("cannot run make: {e}"),
        })?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path)
        .map_err(|e| Error::io(log_path, e))?;
    log.write_all(&output.stdout)
        .and_then(|()| log.write_all(&output.stderr))
        .map_err(|e| Error::io(log_path, e))?;
    if !output.status.success() {
        return Err(Error::Build {
            log: log_path.to_path_buf(),
            tail: log_tail(log_path, 25),
        });
    }
    let release = kernel_release(src_dir, &build_dir, arch)?;
    let dir = dest.join("lib/modules").join(&release);
    for link in ["build", "source"] {
        let path = dir.join(link);
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    if !dir.join("modules.dep").is_file() {
        return Err(Error::Build {
            log: log_path.to_path_buf(),
            tail: format!(
                "modules_install succeeded but {} is missing (is depmod installed?)",
                dir.join("modules.dep").display()
            ),
        });
    }
    Ok(dir)
}

fn copy_lines(
    stream: impl Read,
    log: &Mutex<File>,
    bar: Option<&indicatif::ProgressBar>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        log.lock().expect("log lock").write_all(&line)?;
        if let Some(bar) = bar {
            bar.inc(1);
            bar.set_message(String::from_utf8_lossy(&line).trim().to_string());
        }
    }
}

/// The last `n` lines of a log, for error messages.
fn log_tail(path: &Path, n: usize) -> String {
    host_support::log::try_tail_lines(path, n).unwrap_or_else(|_| "(log unreadable)".into())
}

/// `date -u` style text (`Thu Jan  1 00:00:00 UTC 1970`) for
/// KBUILD_BUILD_TIMESTAMP: kbuild puts it in the version string as-is and
/// feeds it to `date -d` when it needs seconds.
pub(crate) fn format_build_timestamp(epoch: u64) -> String {
    host_support::date::date_utc(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_timestamp_matches_date_utility_format() {
        assert_eq!(format_build_timestamp(0), "Thu Jan  1 00:00:00 UTC 1970");
        // 2024-02-29 12:34:56 UTC, a leap day and a Thursday.
        assert_eq!(
            format_build_timestamp(1_709_210_096),
            "Thu Feb 29 12:34:56 UTC 2024"
        );
        // 2000-03-01 00:00:00 UTC, Wednesday, right after a 400-year leap day.
        assert_eq!(
            format_build_timestamp(951_868_800),
            "Wed Mar  1 00:00:00 UTC 2000"
        );
    }
}
