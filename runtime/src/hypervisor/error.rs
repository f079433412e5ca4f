//! Errors of the hypervisor layer. Each names what failed and, once the VM
//! has started, where its console went, with the last console lines inlined:
//! the state directory (and a console log inside it) is removed on teardown,
//! so the error message has to carry the evidence itself.

use std::path::PathBuf;
use std::time::Duration;

use super::qmp::QmpError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration cannot work; `field` names the offending setting.
    #[error("invalid VM configuration: {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },

    /// A file or directory operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A helper program could not be started.
    #[error("cannot start {program}{hint}")]
    Spawn {
        program: String,
        hint: String,
        #[source]
        source: std::io::Error,
    },

    /// Something did not happen within its bound.
    #[error(
        "timed out after {after:?} waiting for {what}{}",
        diagnostics(console_log, console_tail, stderr_tail)
    )]
    Timeout {
        what: String,
        after: Duration,
        console_log: Option<PathBuf>,
        console_tail: String,
        stderr_tail: String,
    },

    /// QEMU exited while it was expected to run (crash, kill, bad arguments).
    #[error(
        "QEMU exited unexpectedly ({status}){}",
        diagnostics(console_log, console_tail, stderr_tail)
    )]
    QemuExited {
        status: String,
        console_log: Option<PathBuf>,
        console_tail: String,
        stderr_tail: String,
    },

    /// A helper daemon (vhost-device-vsock, virtiofsd) exited while the VM
    /// needed it.
    #[error("{name} exited unexpectedly ({status}); its log: {log_tail}")]
    HelperDaemonExited {
        name: &'static str,
        status: String,
        log_tail: String,
    },

    /// A QMP exchange failed.
    // Every QmpError message already says "QMP"; transparent keeps its
    // cause chain instead of printing it a second time.
    #[error(transparent)]
    Qmp(#[from] QmpError),

    /// Teardown could not remove everything; lists what was left.
    #[error("teardown incomplete: {0}")]
    Teardown(String),
}

fn diagnostics(console_log: &Option<PathBuf>, console_tail: &str, stderr_tail: &str) -> String {
    let mut out = String::new();
    if !stderr_tail.trim().is_empty() {
        out.push_str("\n--- QEMU stderr (last lines) ---\n");
        out.push_str(stderr_tail.trim_end());
    }
    if let Some(log) = console_log {
        out.push_str(&format!(
            "\n--- console log {} (last lines) ---\n",
            log.display()
        ));
        if console_tail.trim().is_empty() {
            out.push_str("(empty: the guest printed nothing on the serial console)");
        } else {
            out.push_str(console_tail.trim_end());
        }
    }
    out
}

impl VmError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        VmError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Self {
        VmError::Config {
            field,
            message: message.into(),
        }
    }
}
