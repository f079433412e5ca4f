//! Guest facts and knobs reached through sysfs and the clock:
//! GetGuestDetails, OnlineCPUMem, SetGuestDateTime.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Reads /sys/devices/system/memory/block_size_bytes (hex, no 0x prefix).
pub fn memory_block_size(sysfs: &Path) -> io::Result<Option<u64>> {
    let path = sysfs.join("devices/system/memory/block_size_bytes");
    match fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim().trim_start_matches("0x"), 16)
            .map(Some)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The kernel offers probe-based memory hotplug.
pub fn memory_hotplug_probe(sysfs: &Path) -> bool {
    sysfs.join("devices/system/memory/probe").exists()
}

/// `online` files of the entries of `dir` named `<prefix><number>`.
fn online_files(dir: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name.strip_prefix(prefix) {
            if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
                let online = entry.path().join("online");
                if online.exists() {
                    files.push(online);
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Writes "1" to every `online` file that reads "0"; returns how many.
fn online_all(files: &[PathBuf]) -> io::Result<u32> {
    let mut count = 0;
    for file in files {
        if fs::read_to_string(file)?.trim() == "0" {
            fs::write(file, "1")
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
            count += 1;
        }
    }
    Ok(count)
}

/// How long OnlineCPUMem waits for hotplugged CPUs to show up in sysfs.
const CPU_ONLINE_ATTEMPTS: u32 = 50;
const CPU_ONLINE_INTERVAL: Duration = Duration::from_millis(100);

/// Onlines offline CPUs; with `expected > 0`, retries until that many were
/// onlined (hotplugged CPUs appear asynchronously) or gives up.
pub fn online_cpus(sysfs: &Path, expected: u32) -> io::Result<u32> {
    let dir = sysfs.join("devices/system/cpu");
    let mut onlined = 0;
    for attempt in 0..CPU_ONLINE_ATTEMPTS {
        onlined += online_all(&online_files(&dir, "cpu")?)?;
        if expected == 0 || onlined >= expected {
            return Ok(onlined);
        }
        if attempt + 1 < CPU_ONLINE_ATTEMPTS {
            std::thread::sleep(CPU_ONLINE_INTERVAL);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "onlined {onlined} of {expected} CPUs in {}: the others did not appear",
            dir.display()
        ),
    ))
}

/// Onlines every offline memory block.
pub fn online_memory(sysfs: &Path) -> io::Result<u32> {
    online_all(&online_files(
        &sysfs.join("devices/system/memory"),
        "memory",
    )?)
}

/// Checks SetGuestDateTime's fields and turns them into a timespec.
pub fn datetime_from_request(sec: i64, usec: i64) -> Result<nix::sys::time::TimeSpec, String> {
    if sec < 0 {
        return Err(format!("Sec {sec} is negative"));
    }
    if !(0..1_000_000).contains(&usec) {
        return Err(format!("Usec {usec} is outside 0..999999"));
    }
    Ok(nix::sys::time::TimeSpec::new(sec, usec * 1000))
}

pub fn set_clock(time: nix::sys::time::TimeSpec) -> io::Result<()> {
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, time).map_err(io::Error::from)
}

// RNDRESEEDCRNG from <linux/random.h>: reseed the CRNG from the input pool.
nix::ioctl_none!(reseed_crng, b'R', 0x07);

/// Mix `data` into the kernel's input pool (a write to /dev/random credits
/// no entropy, it only stirs), then make the CRNG reseed from that pool at
/// once: a guest cloned from a template starts with its template's
/// generator state, and the next random bytes must not be its siblings'.
pub fn reseed_random(data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")?;
    random.write_all(data)?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the fd is open /dev/random.
    unsafe { reseed_crng(std::os::fd::AsRawFd::as_raw_fd(&random)) }.map_err(io::Error::from)?;
    Ok(())
}

/// `uname -r` of the running kernel (empty if uname fails, which it does not
/// on Linux).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (entry, state) in [
            ("cpu/cpu0", "1"),
            ("cpu/cpu1", "0"),
            ("cpu/cpu2", "0"),
            ("memory/memory0", "1"),
            ("memory/memory7", "0"),
        ] {
            let d = root.join("devices/system").join(entry);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("online"), state).unwrap();
        }
        fs::create_dir_all(root.join("devices/system/cpu/cpufreq")).unwrap();
        fs::write(
            root.join("devices/system/memory/block_size_bytes"),
            "8000000\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn onlines_offline_cpus_and_memory() {
        let sysfs = fake_sysfs();
        assert_eq!(online_cpus(sysfs.path(), 2).unwrap(), 2);
        assert_eq!(
            fs::read_to_string(sysfs.path().join("devices/system/cpu/cpu2/online")).unwrap(),
            "1"
        );
        assert_eq!(online_memory(sysfs.path()).unwrap(), 1);
        assert_eq!(online_memory(sysfs.path()).unwrap(), 0);
        assert_eq!(memory_block_size(sysfs.path()).unwrap(), Some(128 << 20));
        assert!(!memory_hotplug_probe(sysfs.path()));
    }

    #[test]
    fn datetime_is_validated() {
        assert!(datetime_from_request(1, 999_999).is_ok());
        assert!(datetime_from_request(1, 1_000_000).is_err());
        assert!(datetime_from_request(-1, 0).is_err());
    }
}
