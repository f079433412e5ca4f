//! `allnoconfig` seeded with the fragments, and the check that every request
//! survived Kconfig's dependency resolution.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::fragments::{parse_line, ConfigValue, Fragments, Line, Origin};

/// A requested option whose final value differs from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub name: String,
    pub wanted: ConfigValue,
    /// `None`: the option is not in the `.config` at all (it does not exist
    /// in this kernel, or a dependency is off).
    pub actual: Option<ConfigValue>,
    /// The fragment line that asked for it.
    pub origin: Origin,
    /// Listed in the whitelist: tolerated when absent.
    pub whitelisted: bool,
}

impl Missing {
    /// A whitelisted option may be absent; present with another value is
    /// still wrong.
    pub fn is_tolerated(&self) -> bool {
        self.whitelisted && self.actual.is_none()
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actual = match &self.actual {
            Some(v) => v.to_string(),
            None => "absent from .config".to_string(),
        };
        write!(
            f,
            "{}: wanted {}, got {} (asked by {})",
            self.name, self.wanted, actual, self.origin
        )?;
        if self.whitelisted {
            f.write_str(" [whitelisted]")?;
        }
        Ok(())
    }
}

/// What `configure` found besides success.
#[derive(Debug, Clone)]
pub struct ConfigReport {
    /// The verified configuration (`<build dir>/.config`).
    pub config: PathBuf,
    /// Whitelisted options this kernel does not have (notes, not errors).
    pub whitelisted_missing: Vec<Missing>,
    /// `warning:` lines Kconfig printed (e.g. unmet dependencies of a select).
    pub kconfig_warnings: Vec<String>,
}

/// Reads a `.config` into name -> value. Options shown as `is not set` map to
/// `No`; options absent from the file are absent from the map.
pub fn read_config(config_path: &Path) -> Result<BTreeMap<String, ConfigValue>> {
    let text = std::fs::read_to_string(config_path).map_err(|e| Error::io(config_path, e))?;
    let mut values = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        match parse_line(raw) {
            Ok(Line::Setting(name, value)) => {
                values.insert(name, value);
            }
            Ok(Line::Blank) => {}
            Err(problem) => {
                return Err(Error::Syntax {
                    file: config_path.display().to_string(),
                    line: n + 1,
                    problem,
                })
            }
        }
    }
    Ok(values)
}

/// Compares every request of `fragments` with `config_path`. Returns all
/// differences, whitelisted ones included (see [`Missing::is_tolerated`]).
/// A request for `n` is met by an absent option: both mean "not built".
pub fn check_config(config_path: &Path, fragments: &Fragments) -> Result<Vec<Missing>> {
    let actual = read_config(config_path)?;
    let mut missing = Vec::new();
    for request in fragments.requests() {
        let found = actual.get(&request.name);
        let ok = match (found, &request.value) {
            (Some(v), wanted) => v == wanted,
            (None, ConfigValue::No) => true,
            (None, _) => false,
        };
        if !ok {
            missing.push(Missing {
                name: request.name.clone(),
                wanted: request.value.clone(),
                actual: found.cloned(),
                origin: request.origin.clone(),
                whitelisted: fragments.is_whitelisted(&request.name),
            });
        }
    }
    Ok(missing)
}

/// Configures `build_dir` (an out-of-tree `O=` directory, created if needed)
/// from the kernel source in `src_dir`: `make allnoconfig` with
/// `KCONFIG_ALLCONFIG` pointing at the merged fragments, then
/// [`check_config`]. Kconfig's output goes to `log`.
///
/// On success `<build_dir>/.config` is the verified configuration that
/// [`crate::build`] compiles. On a check failure it is renamed to
/// `.config.rejected` (so no build can pick it up by accident) and the error
/// lists every failed option at once.
pub fn configure(
    src_dir: &Path,
    build_dir: &Path,
    fragments: &Fragments,
    log: &mut dyn Write,
) -> Result<ConfigReport> {
    let (make_arch, _) = crate::kernel_arch(fragments.arch())?;
    std::fs::create_dir_all(build_dir).map_err(|e| Error::io(build_dir, e))?;
    let build_dir = build_dir
        .canonicalize()
        .map_err(|e| Error::io(build_dir, e))?;
    let config = build_dir.join(".config");

    // Kconfig reads the seed while we hold the temp file; it is removed after.
    let mut seed = tempfile::Builder::new()
        .prefix(".kata-fragments-")
        .suffix(".conf")
        .tempfile_in(&build_dir)
        .map_err(|e| Error::io(&build_dir, e))?;
    seed.write_all(fragments.merged().as_bytes())
        .and_then(|_| seed.flush())
        .map_err(|e| Error::io(seed.path(), e))?;

    let output = Command::new("make")
        .arg("-C")
        .arg(src_dir)
        .arg(format!("O={}", build_dir.display()))
        .arg(format!("ARCH={make_arch}"))
        .arg(format!("KCONFIG_ALLCONFIG={}", seed.path().display()))
        .arg("allnoconfig")
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| Error::Tool {
            what: "make allnoconfig".into(),
            detail: format!("cannot run make: {e}"),
        })?;
    let write_log = |log: &mut dyn Write| -> std::io::Result<()> {
        log.write_all(&output.stdout)?;
        log.write_all(&output.stderr)?;
        log.flush()
    };
    write_log(log).map_err(|e| Error::Tool {
        what: "writing the configure log".into(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail = host_support::log::tail_text(&stderr, 20);
        return Err(Error::Tool {
            what: format!("make allnoconfig in {}", src_dir.display()),
            detail: format!("{}\n{}", output.status, tail),
        });
    }
    let kconfig_warnings = String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
        .filter(|l| l.contains("warning:"))
        .map(str::to_string)
        .collect();

    let differences = check_config(&config, fragments)?;
    let (whitelisted_missing, failures): (Vec<Missing>, Vec<Missing>) =
        differences.into_iter().partition(Missing::is_tolerated);
    if !failures.is_empty() {
        let rejected = build_dir.join(".config.rejected");
        std::fs::rename(&config, &rejected).map_err(|e| Error::io(&config, e))?;
        return Err(Error::ConfigCheck {
            config: rejected,
            failures,
        });
    }
    for note in &whitelisted_missing {
        let _ = writeln!(
            log,
            "note: {note}: not in this kernel, allowed by the whitelist"
        );
    }
    Ok(ConfigReport {
        config,
        whitelisted_missing,
        kconfig_warnings,
    })
}
