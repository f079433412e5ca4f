use serde_json::json;

use super::*;

const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
const ALLOW: u32 = SECCOMP_RET_ALLOW;
const KILL_PROCESS: u32 = 0x8000_0000;
const KILL_THREAD: u32 = 0;
const TRAP: u32 = 0x0003_0000;
const LOG: u32 = 0x7ffc_0000;
const fn errno(e: i32) -> u32 {
    0x0005_0000 | e as u32
}
const fn trace(d: u32) -> u32 {
    0x7ff0_0000 | d
}

/// A classic-BPF interpreter for what seccompiler emits, run on a
/// `struct seccomp_data` as the kernel lays it out (little endian).
fn run_arch(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let i = &prog[pc];
        pc += 1;
        let k = i.k;
        match i.code {
            0x20 => {
                let o = k as usize;
                acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
            }
            0x54 => acc &= k,
            0x05 => pc += k as usize,
            0x15 | 0x25 | 0x35 => {
                let hit = match i.code {
                    0x15 => acc == k,
                    0x25 => acc > k,
                    _ => acc >= k,
                };
                pc += if hit { i.jt } else { i.jf } as usize;
            }
            0x06 => return k,
            code => panic!("unexpected BPF instruction {code:#x} at {}", pc - 1),
        }
    }
}

fn run(f: &Filter, name: &str, args: [u64; 6]) -> u32 {
    let nr = syscall_number(name).unwrap_or_else(|| panic!("no syscall {name}"));
    run_arch(&f.program, AUDIT_ARCH_X86_64, nr, args)
}

fn filter(profile: Value) -> Filter {
    compile(Some(&profile)).unwrap().expect("a filter")
}

fn refused(profile: Value) -> ProfileError {
    compile(Some(&profile)).unwrap_err()
}

#[test]
fn syscall_table_is_sorted_and_knows_x86_64() {
    assert!(x86_64::X86_64.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("mkdir"), Some(83));
    assert_eq!(syscall_number("mkdirat"), Some(258));
    assert_eq!(syscall_number("clone3"), Some(435));
    // aarch64/i386-only names
    assert_eq!(syscall_number("renameat"), Some(264));
    assert_eq!(syscall_number("socketcall"), None);
    assert_eq!(syscall_number("fstatat64"), None);
}

#[test]
fn no_profile_or_an_empty_one_is_no_filter() {
    assert_eq!(compile(None).unwrap(), None);
    assert_eq!(compile(Some(&Value::Null)).unwrap(), None);
    assert_eq!(compile(Some(&json!({}))).unwrap(), None);
    // everything allowed: nothing to install
    assert_eq!(
        compile(Some(&json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]})))
        .unwrap(),
        None
    );
}

#[test]
fn rule_with_errno_and_unknown_names_skipped() {
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{
            "names": ["mkdir", "no_such_syscall", "socketcall", "mkdirat"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1
        }]
    }));
    assert_eq!(run(&f, "mkdir", [0; 6]), errno(libc::EPERM));
    assert_eq!(run(&f, "mkdirat", [0; 6]), errno(libc::EPERM));
    assert_eq!(run(&f, "getpid", [0; 6]), ALLOW);
    assert_eq!(run(&f, "rmdir", [0; 6]), ALLOW);
    // another ABI than x86_64 is not let through
    assert_eq!(
        run_arch(&f.program, AUDIT_ARCH_I386, 39, [0; 6]),
        KILL_PROCESS
    );
    assert_eq!(f.flags, 0);
}

#[test]
fn default_action_and_its_errno() {
    let allow_io = json!([{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]);
    let f = filter(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": allow_io}));
    assert_eq!(run(&f, "read", [0; 6]), ALLOW);
    assert_eq!(run(&f, "write", [0; 6]), ALLOW);
    // ERRNO without errnoRet: EPERM, as runc
    assert_eq!(run(&f, "getpid", [0; 6]), errno(libc::EPERM));
    let f = filter(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "syscalls": allow_io}),
    );
    assert_eq!(run(&f, "getpid", [0; 6]), errno(libc::ENOSYS));
    for (name, verdict) in [
        ("SCMP_ACT_KILL", KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", KILL_PROCESS),
        ("SCMP_ACT_TRAP", TRAP),
        ("SCMP_ACT_LOG", LOG),
        ("SCMP_ACT_TRACE", trace(libc::EPERM as u32)),
    ] {
        let f = filter(json!({"defaultAction": name, "syscalls": allow_io}));
        assert_eq!(run(&f, "getpid", [0; 6]), verdict, "{name}");
        assert_eq!(run(&f, "read", [0; 6]), ALLOW, "{name}");
    }
}

#[test]
fn argument_comparisons() {
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [
            // same index twice: ORed, as runc does
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            // clone without namespace flags
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 0x7E02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            // different indexes: ANDed
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_GT"},
                {"index": 1, "value": 15, "op": "SCMP_CMP_LE"}]},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 2, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_LT"}]},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 5, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_GE"}]},
            {"names": ["close"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 3, "op": "SCMP_CMP_NE"}]}
        ]
    }));
    assert_eq!(run(&f, "personality", [0; 6]), ALLOW);
    assert_eq!(run(&f, "personality", [8, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&f, "personality", [9, 0, 0, 0, 0, 0]), KILL_PROCESS);
    // the upper half counts
    assert_eq!(
        run(&f, "personality", [1 << 32, 0, 0, 0, 0, 0]),
        KILL_PROCESS
    );
    assert_eq!(run(&f, "clone", [0x11, 0, 0, 0, 0, 0]), ALLOW);
    let clone_newuser = 0x1000_0000;
    assert_eq!(
        run(&f, "clone", [clone_newuser, 0, 0, 0, 0, 0]),
        KILL_PROCESS
    );
    assert_eq!(run(&f, "kill", [2, 15, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&f, "kill", [2, 16, 0, 0, 0, 0]), KILL_PROCESS);
    assert_eq!(run(&f, "kill", [1, 9, 0, 0, 0, 0]), KILL_PROCESS);
    assert_eq!(run(&f, "read", [0, 0, 0xffff_ffff, 0, 0, 0]), ALLOW);
    assert_eq!(
        run(&f, "read", [0, 0, 0x1_0000_0000, 0, 0, 0]),
        KILL_PROCESS
    );
    assert_eq!(run(&f, "write", [0, 0, 0, 0, 0, 0x2_0000_0000]), ALLOW);
    assert_eq!(run(&f, "write", [0, 0, 0, 0, 0, 0xffff_ffff]), KILL_PROCESS);
    assert_eq!(run(&f, "close", [4, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&f, "close", [3, 0, 0, 0, 0, 0]), KILL_PROCESS);
}

#[test]
fn several_actions_in_one_program() {
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls": [
            {"names": ["read", "write", "clone3", "uname", "kill", "seccomp"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["uname"], "action": "SCMP_ACT_LOG"},
            {"names": ["kill"], "action": "SCMP_ACT_TRAP", "args": [
                {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getpid"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            // same as the default: a no-op
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    }));
    assert_eq!(f.flags, SECCOMP_FILTER_FLAG_LOG);
    assert_eq!(run(&f, "read", [0; 6]), ALLOW);
    assert_eq!(run(&f, "seccomp", [0; 6]), ALLOW);
    assert_eq!(run(&f, "clone3", [0; 6]), errno(libc::ENOSYS));
    assert_eq!(run(&f, "ptrace", [0; 6]), KILL_PROCESS);
    assert_eq!(run(&f, "uname", [0; 6]), LOG);
    assert_eq!(run(&f, "kill", [1, 9, 0, 0, 0, 0]), TRAP);
    assert_eq!(run(&f, "kill", [1, 15, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&f, "getpid", [0; 6]), trace(7));
    assert_eq!(run(&f, "mkdir", [0; 6]), errno(libc::EPERM));
    assert_eq!(run(&f, "openat", [0; 6]), errno(libc::EPERM));
}

#[test]
fn unsupported_constructs_name_the_field() {
    let cases = [
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}),
            "linux.seccomp.syscalls[0].action",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_BOGUS"}),
            "linux.seccomp.defaultAction",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["write"], "action": "SCMP_ACT_KILL", "args": [
                    {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
            "linux.seccomp.syscalls[1].args[0].index",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_KILL", "args": [
                    {"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}),
            "linux.seccomp.syscalls[0].args[0].op",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}),
            "linux.seccomp.syscalls[0].errnoRet",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}),
            "linux.seccomp.syscalls[0].errnoRet",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": [], "action": "SCMP_ACT_ERRNO"}]}),
            "linux.seccomp.syscalls[0].names",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"}),
            "linux.seccomp.listenerPath",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}),
            "linux.seccomp.flags[0]",
        ),
        (
            json!({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}]}),
            "linux.seccomp.defaultAction",
        ),
    ];
    for (profile, field) in cases {
        let e = refused(profile.clone());
        assert_eq!(e.field, field, "{profile}: {e}");
        assert!(e.to_string().starts_with(field), "{e}");
    }
}

#[test]
fn a_large_default_like_profile_fits_one_program() {
    // the shape of container engines' default profiles: default EPERM,
    // hundreds of names allowed (many of other ABIs), a few with argument
    // conditions, clone3 answered ENOSYS
    let restricted = [
        "clone",
        "clone3",
        "mount",
        "personality",
        "socket",
        "unshare",
        "setns",
    ];
    let mut names: Vec<&str> = x86_64::X86_64
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !restricted.contains(n))
        .collect();
    names.extend([
        "chown32",
        "fstat64",
        "socketcall",
        "_llseek",
        "arm_fadvise64_64",
    ]);
    let mut syscalls = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
    syscalls.push(json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}));
    for persona in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]}));
    }
    syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 0x7E02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]}));
    syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    }));
    assert!(f.program.len() <= MAX_INSTRUCTIONS, "{}", f.program.len());
    assert_eq!(run(&f, "read", [0; 6]), ALLOW);
    assert_eq!(run(&f, "mseal", [0; 6]), ALLOW);
    assert_eq!(run(&f, "mount", [0; 6]), errno(libc::EPERM));
    assert_eq!(run(&f, "clone3", [0; 6]), errno(libc::ENOSYS));
    assert_eq!(run(&f, "clone", [0x11, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        run(&f, "clone", [0x2000_0000, 0, 0, 0, 0, 0]),
        errno(libc::EPERM)
    );
    assert_eq!(run(&f, "socket", [2, 1, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&f, "socket", [40, 1, 0, 0, 0, 0]), errno(libc::EPERM));
    assert_eq!(run(&f, "personality", [0x20008, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        run(&f, "personality", [0x0040_0000, 0, 0, 0, 0, 0]),
        errno(libc::EPERM)
    );
    assert_eq!(
        run_arch(&f.program, AUDIT_ARCH_X86_64, 999, [0; 6]),
        errno(libc::EPERM)
    );
}
