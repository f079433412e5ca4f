//! Running host tools: every external command of the pipeline runs through
//! here, composed with `duct`, so that a failure names the command and shows
//! what it said. Callers describe a command with `std::process::Command`
//! (program, arguments, environment, directory); how it runs (stdin, where
//! its output goes, what a failure says) is decided here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

use anyhow::{bail, Context, Result};

/// The path of a program on PATH or in cargo's bin directories (or a path
/// with a `/` that is an executable file).
pub use host_support::program::which;

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The duct expression for what `cmd` describes: its program, arguments,
/// environment changes and working directory. Exit statuses are the
/// caller's to judge (`unchecked`).
fn expression(cmd: &Command) -> duct::Expression {
    let mut e = duct::cmd(cmd.get_program(), cmd.get_args());
    for (name, value) in cmd.get_envs() {
        e = match value {
            Some(value) => e.env(name, value),
            None => e.env_remove(name),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        e = e.dir(dir);
    }
    e.unchecked()
}

/// Runs a command with no stdin, captures both streams and returns them
/// with its status, whatever the status; for callers that read a failure
/// themselves.
pub fn run_output(cmd: &mut Command) -> Result<Output> {
    let what = describe(cmd);
    expression(cmd)
        .stdin_null()
        .stdout_capture()
        .stderr_capture()
        .run()
        .with_context(|| format!("cannot run `{what}`"))
}

/// Runs a command with the terminal's stdin, stdout and stderr and returns
/// its status, whatever it is.
pub fn run_status(cmd: &mut Command) -> Result<ExitStatus> {
    let what = describe(cmd);
    Ok(expression(cmd)
        .run()
        .with_context(|| format!("cannot run `{what}`"))?
        .status)
}

/// Runs a command, returns its stdout; a failure carries the stderr tail.
pub fn run_captured(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = run_output(cmd)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail = host_support::log::tail_text(&stderr, 8).replace('\n', " | ");
        bail!("`{what}` failed ({}): {tail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with stdout and stderr appended to a log file; on failure
/// the error names the log and quotes its last lines.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    run_into_log(cmd, log, None)
}

/// Runs a command that prints one JSON object (`--json`) with its stderr
/// appended to a log file; returns the object. Its stdout is kept beside
/// the log (`<log>.json`), so a failure to parse can be looked at.
pub fn run_logged_json(cmd: &mut Command, log: &Path) -> Result<serde_json::Value> {
    let json_path = log.with_extension("json");
    let stdout = std::fs::File::create(&json_path)
        .with_context(|| format!("create {}", json_path.display()))?;
    run_into_log(cmd, log, Some(stdout))?;
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("read {}", json_path.display()))?;
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "`{}`: its stdout ({}) is not one JSON object",
            describe(cmd),
            json_path.display()
        )
    })
}

/// `cmd` with its stderr (and its stdout, unless `stdout` is given)
/// appended to `log`.
fn run_into_log(cmd: &mut Command, log: &Path, stdout: Option<std::fs::File>) -> Result<()> {
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
    let stdout = match stdout {
        Some(f) => f,
        None => file.try_clone()?,
    };
    let status = expression(cmd)
        .stdin_null()
        .stdout_file(stdout)
        .stderr_file(file)
        .run()
        .with_context(|| format!("cannot run `{what}`"))?
        .status;
    if !status.success() {
        bail!(
            "`{what}` failed ({status}); full log: {}\n{}",
            log.display(),
            host_support::log::tail_lines(log, 12)
        );
    }
    Ok(())
}

/// Runs a command whose output the user should see as it comes (installers,
/// cargo test, clippy); its stdout goes to stderr so `--json` keeps stdout
/// one JSON object. A failure names the command.
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let status = expression(cmd)
        .stdout_to_stderr()
        .run()
        .with_context(|| format!("cannot run `{what}`"))?
        .status;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// First line of `program --version` (or another flag), for cache keys.
pub fn version_line(program: &str, flag: &str) -> Result<String> {
    let out = expression(Command::new(program).arg(flag))
        .stdin_null()
        .stdout_capture()
        .stderr_capture()
        .run()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_report_is_read_from_stdout_and_stderr_goes_to_the_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("run.log");
        let v = run_logged_json(
            Command::new("sh").args(["-c", "echo progress >&2; echo '{\"steps\": [1, 2]}'"]),
            &log,
        )
        .unwrap();
        assert_eq!(v["steps"], serde_json::json!([1, 2]));
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("progress") && !logged.lines().any(|l| l.starts_with('{')),
            "{logged}"
        );

        let e = run_logged_json(Command::new("sh").args(["-c", "echo not-json"]), &log)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("run.json") && e.contains("not one JSON object"),
            "{e}"
        );
    }

    #[test]
    fn commands_keep_their_environment_directory_and_failures() {
        let d = tempfile::tempdir().unwrap();
        let out = run_captured(
            Command::new("sh")
                .args(["-c", "echo \"$XT_A${XT_B:-unset}\"; pwd"])
                .env("XT_A", "set-")
                .env_remove("XT_B")
                .current_dir(d.path()),
        )
        .unwrap();
        let canon = d.path().canonicalize().unwrap();
        assert_eq!(out, format!("set-unset\n{}\n", canon.display()));
        let err = run_captured(Command::new("sh").args(["-c", "echo a >&2; echo b >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a | b"), "{err}");
        let log = d.path().join("logs/x.log");
        run_logged(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            &log,
        )
        .unwrap();
        let err = run_logged(Command::new("sh").args(["-c", "echo last; exit 1"]), &log)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("$ sh -c echo last; exit 1\nlast"), "{err}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out\nerr\n"), "{text}");
        assert!(run_visible(&mut Command::new("false")).is_err());
        assert_eq!(
            run_status(&mut Command::new("false")).unwrap().code(),
            Some(1)
        );
        assert!(run_output(&mut Command::new("no-such-program-xyz")).is_err());
        assert!(which("sh").is_some());
    }
}
