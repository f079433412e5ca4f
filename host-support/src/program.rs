//! Finding host programs (through the `which` crate).

use std::path::PathBuf;

/// The path of `program` on `PATH`, then in cargo's bin directories
/// (`$CARGO_HOME/bin`, `~/.cargo/bin`: `cargo install` puts tools there even
/// when the shell did not add them to `PATH`). A name with a `/` is taken as
/// a path and must be an executable file.
pub fn which(program: &str) -> Option<PathBuf> {
    if let Ok(p) = ::which::which(program) {
        return Some(p);
    }
    if program.contains('/') {
        return None;
    }
    let cargo_bins = cargo_bin_dirs();
    if cargo_bins.is_empty() {
        return None;
    }
    let paths = std::env::join_paths(cargo_bins).ok()?;
    ::which::which_in_global(program, Some(paths)).ok()?.next()
}

fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_by_path() {
        let sh = which("sh").expect("sh on PATH");
        assert!(sh.is_absolute());
        assert_eq!(which(sh.to_str().unwrap()), Some(sh));
        assert_eq!(which("/nonexistent/xyz"), None);
        assert_eq!(which("surely-no-such-program-here"), None);
    }
}
