//! Running host tools: every external command goes through here so that a
//! failure names the command and shows what it said.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command, returns its stdout; a failure carries the stderr tail.
pub fn run_captured(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{what}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("`{what}` failed ({}): {}", out.status, tail.join(" | "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with stdout and stderr appended to a log file; on failure
/// the error names the log and quotes its last lines.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let what = describe(cmd);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    {
        use std::io::Write;
        let mut f = &file;
        writeln!(f, "$ {what}")?;
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot run `{what}`"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "`{what}` failed ({status}); full log: {}\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

/// Runs a command whose output the user should see as it comes (installers,
/// cargo test, clippy); its stdout goes to stderr so `--json` keeps stdout
/// one JSON object. A failure names the command.
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("cannot run `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// The path of a program on PATH (or an absolute path that exists).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // cargo-installed helpers live here even when the shell did not add it.
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        dirs.push(home.join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// First line of `program --version` (or another flag), for cache keys.
pub fn version_line(program: &str, flag: &str) -> Result<String> {
    let out = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow::Error::new(crate::error::InputError::new(format!(
            "host tool `{program}` cannot be run ({e}); `cargo xtask doctor` says how to install it"
        )))
        })?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Creates `log` afresh (truncating an earlier run's).
pub fn fresh_log(path: &Path) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    File::create(path).with_context(|| format!("create {}", path.display()))?;
    Ok(path.to_path_buf())
}
