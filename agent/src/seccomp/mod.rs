//! The container's OCI `linux.seccomp` profile, enforced in the guest.
//!
//! The profile (runtime-spec JSON, as written to config.json) is translated
//! to one classic-BPF program with rust-vmm's `seccompiler` and installed in
//! the container process by [`SeccompExecutor`], the libcontainer executor
//! that runs last in the container's init (after capabilities are dropped and
//! the start signal came) right before it execs the workload: as late as
//! possible, as runc does for a process with `noNewPrivileges`.
//!
//! # Translation
//! `seccompiler` builds filters with one "match" and one "mismatch" action,
//! while a profile gives each rule its own action. So for every action `A`
//! the rules use, a program returns `A` when one of its rules matches and
//! ALLOW otherwise; a last program returns ALLOW for any rule of the profile
//! and the default action for everything else. The programs are chained into
//! one (each ALLOW return but the last program's becomes a jump to the next
//! program), ordered by the kernel's action precedence (KILL_PROCESS,
//! KILL_THREAD, TRAP, ERRNO, TRACE, LOG): the first non-ALLOW verdict is the
//! answer, which is what the kernel would pick among separately installed
//! filters, and one `seccomp(2)` call installs it all (a first filter could
//! otherwise deny the `seccomp` call that installs the second).
//!
//! As libseccomp and runc do:
//! - a rule whose action is the default action is a no-op and is skipped;
//! - a syscall name that does not exist on x86_64 is skipped;
//! - the conditions of a rule are ANDed, unless two of them test the same
//!   argument: then each condition is a rule of its own (ORed);
//! - SCMP_ACT_ERRNO without errnoRet returns EPERM, SCMP_ACT_TRACE without
//!   errnoRet passes EPERM to the tracer; SCMP_ACT_KILL is KILL_THREAD;
//! - comparisons are on the 64-bit argument; SCMP_CMP_MASKED_EQ tests
//!   `(arg & value) == valueTwo`.
//!
//! The filter is built for x86_64 only: `architectures` is accepted, but a
//! syscall made through another ABI (i386 `int 0x80`) kills the process.
//! Refused (INVALID_ARGUMENT at CreateContainer, naming the field):
//! SCMP_ACT_NOTIFY and `listenerPath` (no seccomp agent in the guest), flag
//! SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (only meaningful with NOTIFY),
//! argument indexes above 5, errnoRet on actions other than ERRNO/TRACE,
//! errno values above 4095, and a profile larger than one BPF program
//! (4096 instructions).
//!
//! # No new privileges
//! Without CAP_SYS_ADMIN the kernel installs a filter only once the process
//! has `no_new_privs` set. libcontainer drops the capabilities before the
//! executor runs, so a process without `noNewPrivileges` that does not keep
//! CAP_SYS_ADMIN gets `no_new_privs` set here just before the filter (runc
//! would install the filter before dropping the capabilities instead; the
//! difference: set-user-id programs in such a container do not gain
//! privileges).

use std::collections::BTreeMap;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use serde_json::Value;

mod x86_64;

/// The number of a syscall on x86_64, by its libseccomp name.
pub fn syscall_number(name: &str) -> Option<i64> {
    x86_64::X86_64
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| i64::from(x86_64::X86_64[i].1))
}

/// A profile that cannot be enforced: the field (runtime-spec path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ProfileError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ProfileError {
    ProfileError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The BPF program of a profile and the `seccomp(2)` flags to install it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub program: BpfProgram,
    pub flags: u32,
}

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
/// BPF_MAXINSNS: the kernel's limit for one program.
const MAX_INSTRUCTIONS: usize = 4096;
/// The kernel caps SECCOMP_RET_ERRNO data at MAX_ERRNO.
const MAX_ERRNO: u64 = 4095;

const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 4;

/// The kernel's precedence of an action (lower wins).
fn precedence(a: &SeccompAction) -> u8 {
    match a {
        SeccompAction::KillProcess => 0,
        SeccompAction::KillThread => 1,
        SeccompAction::Trap => 2,
        SeccompAction::Errno(_) => 3,
        SeccompAction::Trace(_) => 4,
        SeccompAction::Log => 5,
        SeccompAction::Allow => 6,
    }
}

fn str_field<'a>(v: &'a Value, key: &str, field: &str) -> Result<Option<&'a str>, ProfileError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(field, format!("must be a string, not {other}"))),
    }
}

fn u64_field(v: &Value, key: &str, field: &str) -> Result<Option<u64>, ProfileError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(field, format!("must be an unsigned integer, not {n}"))),
    }
}

fn array<'a>(v: &'a Value, key: &str, field: &str) -> Result<&'a [Value], ProfileError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(bad(field, format!("must be an array, not {other}"))),
    }
}

/// An action name (and its errnoRet) as a seccompiler action.
fn action(
    name: &str,
    errno_ret: Option<u64>,
    field: &str,
    errno_field: &str,
) -> Result<SeccompAction, ProfileError> {
    let errno = |default: u32| -> Result<u32, ProfileError> {
        match errno_ret {
            None => Ok(default),
            Some(e) if e <= MAX_ERRNO => Ok(e as u32),
            Some(e) => Err(bad(
                errno_field,
                format!("{e} is not an errno value (at most {MAX_ERRNO})"),
            )),
        }
    };
    let a = match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => return Ok(SeccompAction::Errno(errno(libc::EPERM as u32)?)),
        "SCMP_ACT_TRACE" => return Ok(SeccompAction::Trace(errno(libc::EPERM as u32)?)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(bad(
                field,
                "SCMP_ACT_NOTIFY is not supported: the guest has no seccomp agent to notify",
            ))
        }
        "" => return Err(bad(field, "is empty")),
        other => return Err(bad(field, format!("unknown action {other:?}"))),
    };
    if errno_ret.is_some() {
        return Err(bad(
            errno_field,
            format!("is only valid with SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not {name}"),
        ));
    }
    Ok(a)
}

fn condition(arg: &Value, field: &str) -> Result<SeccompCondition, ProfileError> {
    let index = u64_field(arg, "index", &format!("{field}.index"))?
        .ok_or_else(|| bad(format!("{field}.index"), "is missing"))?;
    if index > 5 {
        return Err(bad(
            format!("{field}.index"),
            format!("{index}: a syscall has arguments 0 to 5"),
        ));
    }
    let value = u64_field(arg, "value", &format!("{field}.value"))?.unwrap_or(0);
    let value_two = u64_field(arg, "valueTwo", &format!("{field}.valueTwo"))?.unwrap_or(0);
    let op = str_field(arg, "op", &format!("{field}.op"))?.unwrap_or("");
    let (op, value) = match op {
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, value),
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, value),
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(value), value_two),
        "" => return Err(bad(format!("{field}.op"), "is missing")),
        other => {
            return Err(bad(
                format!("{field}.op"),
                format!("unknown comparison {other:?}"),
            ))
        }
    };
    SeccompCondition::new(index as u8, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| bad(field, e.to_string()))
}

/// Rules of one syscall: `None` matches it whatever its arguments.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rules(rules: &mut Rules, nr: i64, new: Option<Vec<SeccompRule>>) {
    let entry = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), new) {
        (None, _) => {}
        (Some(_), None) => *entry = None,
        (Some(list), Some(mut more)) => list.append(&mut more),
    }
}

fn program(
    rules: &Rules,
    matched: SeccompAction,
    mismatched: SeccompAction,
) -> Result<BpfProgram, ProfileError> {
    let rules = rules
        .iter()
        .map(|(nr, r)| (*nr, r.clone().unwrap_or_default()))
        .collect();
    SeccompFilter::new(rules, mismatched, matched, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(|e| bad("linux.seccomp", e.to_string()))
}

/// Translates the `linux.seccomp` object of a runtime-spec document (None,
/// JSON null or an empty profile: no filter).
pub fn compile(seccomp: Option<&Value>) -> Result<Option<Filter>, ProfileError> {
    let Some(s) = seccomp.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if !s.is_object() {
        return Err(bad("linux.seccomp", "must be an object"));
    }
    let syscalls = array(s, "syscalls", "linux.seccomp.syscalls")?;
    let default_name = str_field(s, "defaultAction", "linux.seccomp.defaultAction")?.unwrap_or("");
    if default_name.is_empty() && syscalls.is_empty() {
        return Ok(None);
    }
    if let Some(path) = str_field(s, "listenerPath", "linux.seccomp.listenerPath")? {
        if !path.is_empty() {
            return Err(bad(
                "linux.seccomp.listenerPath",
                "a seccomp notify listener is not supported in the guest",
            ));
        }
    }
    let default = action(
        default_name,
        u64_field(s, "defaultErrnoRet", "linux.seccomp.defaultErrnoRet")?,
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    for (i, a) in array(s, "architectures", "linux.seccomp.architectures")?
        .iter()
        .enumerate()
    {
        match a.as_str() {
            Some(name) if name.starts_with("SCMP_ARCH_") => {}
            _ => {
                return Err(bad(
                    format!("linux.seccomp.architectures[{i}]"),
                    format!("{a} is not an SCMP_ARCH_* name"),
                ))
            }
        }
    }
    let mut flags = 0;
    for (i, f) in array(s, "flags", "linux.seccomp.flags")?.iter().enumerate() {
        let field = format!("linux.seccomp.flags[{i}]");
        match f.as_str() {
            // the container process is single-threaded when it installs it
            Some("SECCOMP_FILTER_FLAG_TSYNC") => {}
            Some("SECCOMP_FILTER_FLAG_LOG") => flags |= SECCOMP_FILTER_FLAG_LOG,
            Some("SECCOMP_FILTER_FLAG_SPEC_ALLOW") => flags |= SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            Some("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV") => {
                return Err(bad(
                    field,
                    "only meaningful with SCMP_ACT_NOTIFY, which is not supported",
                ))
            }
            _ => return Err(bad(field, format!("unknown flag {f}"))),
        }
    }

    // the rules of each action but the default one, in profile order
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for (i, call) in syscalls.iter().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let a = action(
            str_field(call, "action", &format!("{field}.action"))?.unwrap_or(""),
            u64_field(call, "errnoRet", &format!("{field}.errnoRet"))?,
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let names = array(call, "names", &format!("{field}.names"))?;
        if names.is_empty() {
            return Err(bad(format!("{field}.names"), "is empty"));
        }
        let args = array(call, "args", &format!("{field}.args"))?;
        let conditions = args
            .iter()
            .enumerate()
            .map(|(j, arg)| condition(arg, &format!("{field}.args[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut indexes: Vec<u64> = args
            .iter()
            .filter_map(|a| a.get("index").and_then(Value::as_u64))
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let rules = if conditions.is_empty() {
            None
        } else if indexes.len() == conditions.len() {
            Some(vec![
                SeccompRule::new(conditions).map_err(|e| bad(&field, e.to_string()))?
            ])
        } else {
            Some(
                conditions
                    .into_iter()
                    .map(|c| SeccompRule::new(vec![c]).map_err(|e| bad(&field, e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        // validate every name, even of a rule that is a no-op
        let mut numbers = Vec::new();
        for (j, n) in names.iter().enumerate() {
            let name = n.as_str().ok_or_else(|| {
                bad(
                    format!("{field}.names[{j}]"),
                    format!("{n} is not a string"),
                )
            })?;
            if name.is_empty() {
                return Err(bad(format!("{field}.names[{j}]"), "is empty"));
            }
            match syscall_number(name) {
                Some(nr) => numbers.push(nr),
                None => log::debug!(
                    "seccomp: {field}: syscall {name:?} does not exist on x86_64, skipped"
                ),
            }
        }
        if a == default {
            continue;
        }
        let slot = match by_action.iter().position(|(x, _)| *x == a) {
            Some(p) => p,
            None => {
                by_action.push((a, Rules::new()));
                by_action.len() - 1
            }
        };
        for nr in numbers {
            add_rules(&mut by_action[slot].1, nr, rules.clone());
        }
    }

    let mut all = Rules::new();
    for (_, rules) in &by_action {
        for (nr, r) in rules {
            add_rules(&mut all, *nr, r.clone());
        }
    }
    by_action.sort_by_key(|(a, _)| precedence(a));
    let mut programs = Vec::new();
    for (a, rules) in &by_action {
        if *a != SeccompAction::Allow && !rules.is_empty() {
            programs.push(program(rules, a.clone(), SeccompAction::Allow)?);
        }
    }
    if default != SeccompAction::Allow {
        programs.push(program(&all, SeccompAction::Allow, default)?);
    }
    if programs.is_empty() {
        return Ok(None);
    }
    let program = chain(programs);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(bad(
            "linux.seccomp",
            format!(
                "the profile needs {} BPF instructions, more than the kernel's {MAX_INSTRUCTIONS}",
                program.len()
            ),
        ));
    }
    Ok(Some(Filter { program, flags }))
}

/// One program out of several: an ALLOW verdict of each but the last goes on
/// with the next one (forward jumps only, lengths unchanged).
fn chain(programs: Vec<BpfProgram>) -> BpfProgram {
    let count = programs.len();
    let mut out = Vec::with_capacity(programs.iter().map(Vec::len).sum());
    for (p, mut program) in programs.into_iter().enumerate() {
        if p + 1 < count {
            let len = program.len();
            for (i, insn) in program.iter_mut().enumerate() {
                if insn.code == BPF_RET_K && insn.k == SECCOMP_RET_ALLOW {
                    *insn = sock_filter {
                        code: BPF_JMP_JA,
                        jt: 0,
                        jf: 0,
                        k: (len - i - 1) as u32,
                    };
                }
            }
        }
        out.append(&mut program);
    }
    out
}

/// Whether the calling thread has CAP_SYS_ADMIN in its effective set.
fn has_cap_sys_admin() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_ADMIN: u32 = 21;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data structs for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    rc == 0 && data[0].effective & (1 << CAP_SYS_ADMIN) != 0
}

/// Installs the filter in the calling thread; sets `no_new_privs` first
/// when asked to.
pub fn install(filter: &Filter, set_no_new_privs: bool) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const sock_filter,
    }
    if set_no_new_privs {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let prog = SockFprog {
        len: filter.program.len() as u16,
        filter: filter.program.as_ptr(),
    };
    // SAFETY: the kernel copies the program; `prog` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            filter.flags as libc::c_ulong,
            &prog as *const SockFprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// libcontainer's default executor with the profile's filter installed
/// right before the workload's execve.
#[derive(Clone)]
pub struct SeccompExecutor {
    pub filter: Option<Filter>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(filter) = &self.filter {
            let requested = spec
                .process()
                .as_ref()
                .and_then(|p| p.no_new_privileges())
                .unwrap_or(false);
            // with noNewPrivileges libcontainer has set it already
            let set_nnp = !requested && !has_cap_sys_admin();
            install(filter, set_nnp)
                .map_err(|e| ExecutorError::Other(format!("install the seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests;
