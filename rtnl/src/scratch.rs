//! Scratch network namespaces for the root tests of this crate and of its
//! users (the agent's network RPCs, the runtime's pod wiring): one helper
//! instead of a copy per crate. Behind the `scratch-netns` feature, which
//! only dev-dependencies turn on, so no shipped binary carries it.

use std::path::PathBuf;
use std::process::Command;

/// A named network namespace (`ip netns add`), deleted on drop, also when
/// the test panics.
pub struct ScratchNetns {
    pub name: String,
}

impl ScratchNetns {
    /// `<tag>-<pid>`: unique per test process and tag.
    pub fn new(tag: &str) -> ScratchNetns {
        let name = format!("{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        ScratchNetns { name }
    }

    /// Its bind mount, as an OCI spec or [`crate::in_netns`] names it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n <name> args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The stdout of `ip -n <name> args...`.
    pub fn output(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// `ip args...` in the caller's namespace (inside [`crate::in_netns`]:
/// the scratch one), which must succeed.
pub fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args:?} failed");
}
