//! The short-lived, single-threaded helper process that drives youki's
//! `libcontainer` to create a container or exec a process into one.
//!
//! Why a separate process rather than calling libcontainer in the agent:
//! - libcontainer forks with a raw `clone3` syscall, which skips the C
//!   library's fork bookkeeping; in the multi-threaded agent another thread
//!   may hold the allocator lock at that moment and the child would deadlock
//!   on its first allocation (musl's malloc is not reset as `fork()` would).
//! - it changes process-wide state of its caller: the working directory
//!   (console socket set-up), `/proc/self/oom_score_adj` and the dumpable flag.
//!
//! The agent runs `/proc/self/exe` with [`HELPER_FLAG`] as first argument:
//!
//! ```text
//! kata-agent --libcontainer-helper create <state-root> <id> <bundle-dir>      <console-socket|->
//! kata-agent --libcontainer-helper exec   <state-root> <id> <process.json>    <console-socket|->
//! ```
//!
//! Without a console socket the process's stdin/stdout/stderr are the
//! helper's fds 3, 4 and 5. On success the helper prints the pid of the
//! container process on stdout and exits 0; otherwise it prints one error
//! line on stderr and exits 1. The container process is a child of the
//! helper (libcontainer clones it as a sibling of its intermediate process);
//! when the helper exits it is re-parented to the agent, which is PID 1 or a
//! child subreaper, and the agent's reaper collects its exit status.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

/// First argument that turns the agent binary into the helper.
pub const HELPER_FLAG: &str = "--libcontainer-helper";
/// Fds carrying the container process's stdio into the helper.
pub const STDIO_FDS: [i32; 3] = [3, 4, 5];
/// Console-socket argument meaning "no terminal".
pub const NO_CONSOLE: &str = "-";

/// Runs the helper when `args` asks for it; never returns then.
pub fn run_if_requested(args: &[String]) {
    if args.get(1).map(String::as_str) != Some(HELPER_FLAG) {
        return;
    }
    let code = match run(&args[2..]) {
        Ok(pid) => {
            println!("{pid}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    };
    std::process::exit(code);
}

/// The error with its whole chain of causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// pivot_root(2) refuses to move the initramfs (EINVAL): an initrd guest's
/// `/` is a ramfs or tmpfs that can never be unmounted. There the container
/// root is entered with MS_MOVE + chroot instead, as runc's --no-pivot does.
fn root_is_initramfs() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    match nix::sys::statfs::statfs("/") {
        Ok(st) => {
            // The type is i64 with glibc but c_ulong with musl (the shipped
            // agent's target): the cast is only a no-op on the host build.
            #[allow(clippy::unnecessary_cast)]
            let t = st.filesystem_type().0 as i64;
            t == RAMFS_MAGIC || t == TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// The BPF filter of the `linux.seccomp` profile in a bundle's config.json.
fn seccomp_filter(config: &std::path::Path) -> Result<Option<crate::seccomp::Filter>, String> {
    let text = std::fs::read(config).map_err(|e| format!("read {}: {e}", config.display()))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("parse {}: {e}", config.display()))?;
    crate::seccomp::compile(spec.pointer("/linux/seccomp")).map_err(|e| e.to_string())
}

fn run(args: &[String]) -> Result<i32, String> {
    let [action, state_root, id, path, console] = args else {
        return Err(format!(
            "{HELPER_FLAG}: expected <create|exec> <state-root> <id> <path> <console-socket|->, got {args:?}"
        ));
    };
    let mut builder = ContainerBuilder::new(id.clone(), SyscallType::default())
        .validate_id()
        .and_then(|b| b.with_root_path(PathBuf::from(state_root)))
        .map_err(|e| format!("container {id}: {}", chain(&e)))?;
    if console == NO_CONSOLE {
        // SAFETY: the agent set these fds up for this process (see module doc)
        // and nothing else in the helper owns them.
        let [stdin, stdout, stderr] = STDIO_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        builder = builder
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr);
    } else {
        builder = builder.with_console_socket(Some(PathBuf::from(console)));
    }
    // The container's seccomp profile, from its config.json (an exec'd
    // process gets the container's profile too, as with runc); the executor
    // installs it right before the workload's execve.
    let config = match action.as_str() {
        "create" => PathBuf::from(path).join("config.json"),
        _ => libcontainer::container::Container::load(PathBuf::from(state_root).join(id))
            .map_err(|e| format!("exec in container {id}: load its state: {}", chain(&e)))?
            .bundle()
            .join("config.json"),
    };
    let filter = seccomp_filter(&config).map_err(|e| format!("container {id}: {e}"))?;
    builder = builder.with_executor(crate::seccomp::SeccompExecutor { filter });
    match action.as_str() {
        "create" => {
            let container = builder
                .as_init(PathBuf::from(path))
                .with_systemd(false)
                .with_no_pivot(root_is_initramfs())
                .with_detach(true)
                .build()
                .map_err(|e| format!("create container {id}: {}", chain(&e)))?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| format!("create container {id}: libcontainer reported no pid"))
        }
        "exec" => builder
            .as_tenant()
            .with_process(Some(PathBuf::from(path)))
            .with_detach(true)
            .build()
            .map(|p| p.as_raw())
            .map_err(|e| format!("exec in container {id}: {}", chain(&e))),
        other => Err(format!(
            "{HELPER_FLAG}: unknown action {other:?}, expected create or exec"
        )),
    }
}
