//! Link-time settings of the static agent.
//!
//! The musl agent is a static PIE (ASLR for the guest's PID 1), so every
//! pointer stored in its data (vtables, string tables, `&'static` slices) is a
//! relative relocation that musl's start-up code applies. As classic RELA
//! entries (24 bytes each) they took 285 KB of `.rela.dyn`; packed as RELR
//! (`-z pack-relative-relocs`, binutils >= 2.38 or lld; applied by musl >=
//! 1.2.4's `_dlstart`, the toolchain ships 1.2.5) the same relocations take
//! under 4 KB. The binary stays PIE, RELRO and BIND_NOW.
//!
//! Only for the musl target: a glibc build would need a glibc >= 2.36 loader.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
