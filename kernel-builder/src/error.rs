//! Errors, split so a caller can tell bad input (exit status 2: a broken
//! fragment, a missing directory) from work that failed (exit status 1: a
//! patch that does not apply, a compiler error, a config check failure).

use std::path::PathBuf;

use crate::config::Missing;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fragment or whitelist line that does not parse.
    #[error("{file}:{line}: {problem}")]
    Syntax {
        file: String,
        line: usize,
        problem: String,
    },

    /// Two fragments ask for different values of one option.
    #[error(
        "{name} is set to {first_value} at {first} and to {second_value} at {second}; \
         keep one of them"
    )]
    Conflict {
        name: String,
        first_value: String,
        first: String,
        second_value: String,
        second: String,
    },

    /// A directory or file of the configs tree is missing or unreadable.
    #[error("{path}: {problem}")]
    Input { path: PathBuf, problem: String },

    #[error("architecture `{0}` is not supported by kernel-builder (supported: x86_64)")]
    UnsupportedArch(String),

    /// The final .config lacks options the fragments asked for.
    #[error("{}", config_check_message(.config, .failures))]
    ConfigCheck {
        config: PathBuf,
        failures: Vec<Missing>,
    },

    #[error("patch {patch} does not apply to {src}:\n{output}")]
    Patch {
        patch: PathBuf,
        src: PathBuf,
        output: String,
    },

    /// An external tool (make, tar, patch) could not be started or failed.
    #[error("{what} failed: {detail}")]
    Tool { what: String, detail: String },

    #[error("kernel build failed; full log: {log}\nlast lines:\n{tail}")]
    Build { log: PathBuf, tail: String },

    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// True when the error is the user's input (fragments, whitelist,
    /// architecture) rather than a failure of the work itself.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Syntax { .. }
                | Error::Conflict { .. }
                | Error::Input { .. }
                | Error::UnsupportedArch(_)
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

fn config_check_message(config: &std::path::Path, failures: &[Missing]) -> String {
    let mut msg = format!(
        "{} requested option(s) did not end up in {} as asked:",
        failures.len(),
        config.display()
    );
    for m in failures {
        msg.push_str("\n  ");
        msg.push_str(&m.to_string());
    }
    msg.push_str(
        "\nAn option that is absent usually has a dependency that is off: enable \
         the dependency in a fragment, or list the option in whitelist.conf if this \
         kernel version does not have it.",
    );
    msg
}
