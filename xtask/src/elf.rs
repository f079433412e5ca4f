//! Just enough ELF reading to prove a binary is static (no interpreter, no
//! needed libraries): the agent runs as PID 1 in a guest without a libc.

use std::path::Path;

use anyhow::{bail, Context, Result};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;

#[derive(Debug, PartialEq, Eq)]
pub struct ElfFacts {
    pub has_interpreter: bool,
    pub needed_libraries: usize,
    pub machine: u16,
}

pub fn inspect(path: &Path) -> Result<ElfFacts> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    parse(&data)
        .with_context(|| format!("{} is not a 64-bit little-endian ELF file", path.display()))
}

fn u16_at(d: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        d.get(o..o + 2).context("truncated")?.try_into()?,
    ))
}
fn u32_at(d: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        d.get(o..o + 4).context("truncated")?.try_into()?,
    ))
}
fn u64_at(d: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        d.get(o..o + 8).context("truncated")?.try_into()?,
    ))
}

pub fn parse(d: &[u8]) -> Result<ElfFacts> {
    if d.get(..4) != Some(b"\x7fELF") || d.get(4) != Some(&2) || d.get(5) != Some(&1) {
        bail!("bad ELF header");
    }
    let machine = u16_at(d, 18)?;
    let phoff = u64_at(d, 32)? as usize;
    let phentsize = u16_at(d, 54)? as usize;
    let phnum = u16_at(d, 56)? as usize;
    let mut has_interpreter = false;
    let mut needed_libraries = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(d, ph)? {
            PT_INTERP => has_interpreter = true,
            PT_DYNAMIC => {
                let off = u64_at(d, ph + 8)? as usize;
                let size = u64_at(d, ph + 32)? as usize;
                let mut o = off;
                while o + 16 <= off + size {
                    let tag = u64_at(d, o)?;
                    if tag == 0 {
                        break;
                    }
                    if tag == DT_NEEDED {
                        needed_libraries += 1;
                    }
                    o += 16;
                }
            }
            _ => {}
        }
    }
    Ok(ElfFacts {
        has_interpreter,
        needed_libraries,
        machine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dynamic_binary_is_seen_as_dynamic() {
        // /bin/sh on Debian is dash, dynamically linked against libc.
        let f = inspect(Path::new("/bin/sh")).unwrap();
        assert!(f.has_interpreter);
        assert!(f.needed_libraries >= 1);
        assert_eq!(f.machine, 62); // EM_X86_64
    }

    #[test]
    #[ignore = "needs busybox-static (/bin/busybox): run by cargo xtask test unit"]
    fn static_busybox_is_seen_as_static() {
        let f = inspect(Path::new("/bin/busybox"))
            .expect("busybox-static is installed (cargo xtask doctor)");
        assert!(!f.has_interpreter);
        assert_eq!(f.needed_libraries, 0);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(parse(b"#!/bin/sh\n").is_err());
    }
}
