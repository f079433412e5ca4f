//! Kernel modules that CreateSandbox asks for (`kernel_modules`), loaded
//! the way modprobe loads a module by name: the module's file and its
//! dependencies come from `/lib/modules/<release>/modules.dep`,
//! dependencies go in first, and the module gets the requested parameters.
//! Unlike modprobe, aliases (`modules.alias`) and soft dependencies
//! (`modules.softdep`) are not resolved: a request names the module itself.
//!
//! Done here with `finit_module(2)` instead of running modprobe (upstream's
//! way): the agent-as-init guest has no kmod, and busybox's modprobe differs
//! by build. Modules built into the kernel (`modules.builtin`) need nothing;
//! parameters for them belong on the kernel command line, so asking for
//! them is refused rather than silently dropped.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use protocols::agent::KernelModule;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KmodError {
    #[error("kernel module {name:?}: {why}")]
    Invalid { name: String, why: String },
    #[error("kernel module {name}: not in {dep_file} and not in /sys/module (the guest carries no such loadable module, and it is not built in with parameters; is the image built with that kernel's modules?)")]
    NotFound { name: String, dep_file: String },
    #[error("kernel module {name} is built into the kernel: parameters {parameters:?} must go on the kernel command line (kernel_params) instead")]
    BuiltinWithParameters {
        name: String,
        parameters: Vec<String>,
    },
    #[error("kernel module {name}: loading {path} failed: {error}")]
    Load {
        name: String,
        path: String,
        error: String,
    },
    #[error("kernel modules: {0}")]
    Io(String),
}

/// The kernel's module naming: `-` and `_` are the same.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// What `/lib/modules/<release>` says about modules.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// Normalized name -> (file relative to `dir`, dependency files in
    /// modules.dep's order).
    loadable: BTreeMap<String, (String, Vec<String>)>,
    builtin: std::collections::BTreeSet<String>,
}

/// The module name of a modules.dep path: `kernel/net/foo-bar.ko.xz` ->
/// `foo_bar`.
fn name_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    normalize(stem)
}

impl ModuleIndex {
    /// Reads `dir/modules.dep` and `dir/modules.builtin`. A kernel without
    /// loadable modules has neither: the index is then empty, and every
    /// request that is not built in is reported as not found.
    pub fn load(dir: &Path) -> Result<ModuleIndex, KmodError> {
        let read = |f: &str| match fs::read_to_string(dir.join(f)) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(KmodError::Io(format!("{}: {e}", dir.join(f).display()))),
        };
        let mut index = ModuleIndex {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        for line in read("modules.dep")?.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim();
            if module.is_empty() {
                continue;
            }
            index.loadable.insert(
                name_of(module),
                (
                    module.to_string(),
                    deps.split_whitespace().map(str::to_string).collect(),
                ),
            );
        }
        for line in read("modules.builtin")?.lines() {
            let line = line.trim();
            if !line.is_empty() {
                index.builtin.insert(name_of(line));
            }
        }
        Ok(index)
    }

    fn dep_file(&self) -> String {
        self.dir.join("modules.dep").display().to_string()
    }

    /// The modules to load for `req` (normalized name and file), in order,
    /// dependencies first; empty for a built-in module.
    fn plan(&self, req: &KernelModule) -> Result<Vec<(String, PathBuf)>, KmodError> {
        let name = normalize(&req.name);
        if self.builtin.contains(&name) && !self.loadable.contains_key(&name) {
            if req.parameters.is_empty() {
                return Ok(Vec::new());
            }
            return Err(KmodError::BuiltinWithParameters {
                name,
                parameters: req.parameters.clone(),
            });
        }
        let Some((file, deps)) = self.loadable.get(&name) else {
            return Err(KmodError::NotFound {
                name,
                dep_file: self.dep_file(),
            });
        };
        // modules.dep lists the whole closure, the module that needs the
        // others first: modprobe loads it from the end.
        let mut steps: Vec<(String, PathBuf)> = deps
            .iter()
            .rev()
            .map(|d| (name_of(d), self.dir.join(d)))
            .collect();
        steps.push((name, self.dir.join(file)));
        Ok(steps)
    }
}

/// The seam to the kernel: loading one module file, and whether a module
/// is already there.
pub trait ModuleLoader {
    fn is_loaded(&self, name: &str) -> bool;
    fn load(&mut self, path: &Path, parameters: &str) -> io::Result<()>;
}

/// The running kernel: `/sys/module/<name>` and `finit_module(2)`.
pub struct KernelLoader;

/// `finit_module` flag: the file is compressed and the kernel decompresses
/// it (CONFIG_MODULE_DECOMPRESS).
const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

impl ModuleLoader for KernelLoader {
    fn is_loaded(&self, name: &str) -> bool {
        // Loaded modules appear here, and so do built-in ones that have
        // parameters (without an initstate file); either way there is
        // nothing to load.
        Path::new("/sys/module").join(name).is_dir()
    }

    fn load(&mut self, path: &Path, parameters: &str) -> io::Result<()> {
        let file = fs::File::open(path)?;
        let params = CString::new(parameters)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in parameters"))?;
        let compressed = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.ends_with(".ko"));
        let flags = if compressed {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        // SAFETY: finit_module reads the open file descriptor and the
        // NUL-terminated parameter string, both alive for the call; it
        // writes no memory of this process.
        let r = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                params.as_ptr(),
                flags,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) && parameters.is_empty() {
            // Loaded meanwhile: nothing was asked of it that did not apply.
            return Ok(());
        }
        Err(e)
    }
}

/// Loads every requested module. All requests are checked first (names,
/// parameters, presence in the index and of each file to load): nothing is
/// loaded if one of them is malformed or unknown. A requested module gets
/// its parameters wherever it is loaded, also as another one's dependency.
/// Returns the modules loaded now.
pub fn load_all(
    index: &ModuleIndex,
    requests: &[KernelModule],
    loader: &mut dyn ModuleLoader,
) -> Result<Vec<String>, KmodError> {
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for r in requests {
        // The rule the runtime applies to its configuration.
        protocols::kernel_modules::check(&r.name, &r.parameters).map_err(|why| {
            KmodError::Invalid {
                name: r.name.clone(),
                why,
            }
        })?;
        let name = normalize(&r.name);
        let parameters = r.parameters.join(" ");
        match wanted.get(&name) {
            Some(earlier) if *earlier != parameters => {
                return Err(KmodError::Invalid {
                    name,
                    why: format!(
                        "requested twice with different parameters ({earlier:?} and {parameters:?})"
                    ),
                })
            }
            _ => {
                wanted.insert(name, parameters);
            }
        }
    }
    let mut plans = Vec::new();
    for r in requests {
        let name = normalize(&r.name);
        if loader.is_loaded(&name) {
            // Loaded before, or built in with parameters of its own (so in
            // /sys/module): nothing to load, but requested parameters would
            // silently not apply.
            if r.parameters.is_empty() {
                continue;
            }
            return Err(KmodError::Invalid {
                name,
                why: format!(
                    "it is already in the kernel (built in or loaded earlier), so parameters {:?} cannot apply",
                    r.parameters
                ),
            });
        }
        let steps = index.plan(r)?;
        for (step, path) in &steps {
            if let Err(e) = fs::metadata(path) {
                return Err(KmodError::Load {
                    name: step.clone(),
                    path: path.display().to_string(),
                    error: format!("{e} (modules.dep lists it)"),
                });
            }
        }
        plans.push(steps);
    }
    let mut loaded = Vec::new();
    for steps in plans {
        for (name, path) in steps {
            if loader.is_loaded(&name) {
                continue;
            }
            let parameters = wanted.get(&name).cloned().unwrap_or_default();
            loader
                .load(&path, &parameters)
                .map_err(|e| KmodError::Load {
                    name: name.clone(),
                    path: path.display().to_string(),
                    error: e.to_string(),
                })?;
            loaded.push(name);
        }
    }
    Ok(loaded)
}

/// `/lib/modules/<release>` of the running kernel.
pub fn running_kernel_dir() -> Result<PathBuf, KmodError> {
    let uts = nix::sys::utsname::uname().map_err(|e| KmodError::Io(format!("uname: {e}")))?;
    Ok(Path::new("/lib/modules").join(uts.release()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        present: Vec<String>,
        calls: Vec<(PathBuf, String)>,
        fail: Option<&'static str>,
    }

    impl ModuleLoader for Recorder {
        fn is_loaded(&self, name: &str) -> bool {
            self.present.iter().any(|p| p == name)
        }
        fn load(&mut self, path: &Path, parameters: &str) -> io::Result<()> {
            if self.fail.is_some_and(|f| path.ends_with(f)) {
                return Err(io::Error::from_raw_os_error(libc::ENOEXEC));
            }
            self.calls
                .push((path.to_path_buf(), parameters.to_string()));
            self.present.push(name_of(&path.to_string_lossy()));
            Ok(())
        }
    }

    fn req(name: &str, params: &[&str]) -> KernelModule {
        KernelModule {
            name: name.into(),
            parameters: params.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn index() -> (tempfile::TempDir, ModuleIndex) {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("modules.dep"),
            "kernel/drivers/net/dummy.ko:\n\
             kernel/drivers/net/bonding/bonding.ko: kernel/net/tls/tls.ko kernel/lib/crc-ccitt.ko\n\
             kernel/net/tls/tls.ko: kernel/lib/crc-ccitt.ko\n\
             kernel/lib/crc-ccitt.ko:\n\
             kernel/fs/fuse/virtio-fs.ko.xz:\n",
        )
        .unwrap();
        fs::write(
            d.path().join("modules.builtin"),
            "kernel/drivers/block/loop.ko\nkernel/drivers/net/dummy.ko\n",
        )
        .unwrap();
        for f in [
            "kernel/drivers/net/dummy.ko",
            "kernel/drivers/net/bonding/bonding.ko",
            "kernel/net/tls/tls.ko",
            "kernel/lib/crc-ccitt.ko",
            "kernel/fs/fuse/virtio-fs.ko.xz",
        ] {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        let i = ModuleIndex::load(d.path()).unwrap();
        (d, i)
    }

    #[test]
    fn a_requested_module_gets_its_parameters_also_as_a_dependency() {
        let (d, i) = index();
        let mut r = Recorder::default();
        let loaded = load_all(&i, &[req("bonding", &[]), req("tls", &["k=v"])], &mut r).unwrap();
        assert_eq!(loaded, ["crc_ccitt", "tls", "bonding"]);
        assert_eq!(
            r.calls[1],
            (d.path().join("kernel/net/tls/tls.ko"), "k=v".into())
        );
        // The same module twice must ask for the same parameters.
        let e = load_all(
            &i,
            &[req("tls", &["a=1"]), req("tls", &["b=2"])],
            &mut Recorder::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("different parameters"), "{e}");
        assert!(load_all(
            &i,
            &[req("tls", &["a=1"]), req("tls", &["a=1"])],
            &mut Recorder::default()
        )
        .is_ok());
    }

    #[test]
    fn a_file_modules_dep_lists_but_the_guest_lacks_stops_before_loading() {
        let (d, i) = index();
        fs::remove_file(d.path().join("kernel/net/tls/tls.ko")).unwrap();
        let mut r = Recorder::default();
        let e = load_all(&i, &[req("bonding", &[])], &mut r).unwrap_err();
        assert!(e.to_string().contains("tls.ko"), "{e}");
        assert!(r.calls.is_empty(), "loaded before the check: {:?}", r.calls);
    }

    #[test]
    fn dependencies_go_first_and_only_the_module_gets_parameters() {
        let (d, i) = index();
        let mut r = Recorder::default();
        let loaded = load_all(
            &i,
            &[req("bonding", &["max_bonds=2", "miimon=100"])],
            &mut r,
        )
        .unwrap();
        assert_eq!(loaded, ["crc_ccitt", "tls", "bonding"]);
        assert_eq!(
            r.calls,
            [
                (d.path().join("kernel/lib/crc-ccitt.ko"), String::new()),
                (d.path().join("kernel/net/tls/tls.ko"), String::new()),
                (
                    d.path().join("kernel/drivers/net/bonding/bonding.ko"),
                    "max_bonds=2 miimon=100".into()
                ),
            ]
        );
        // A second request finds them loaded and loads nothing.
        let again = load_all(&i, &[req("tls", &[])], &mut r).unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn names_match_with_dashes_or_underscores() {
        let (_d, i) = index();
        let mut r = Recorder::default();
        assert_eq!(
            load_all(&i, &[req("crc_ccitt", &[])], &mut r).unwrap(),
            ["crc_ccitt"]
        );
        assert_eq!(
            load_all(&i, &[req("virtio_fs", &[])], &mut Recorder::default()).unwrap(),
            ["virtio_fs"]
        );
    }

    #[test]
    fn builtin_modules_need_nothing_but_refuse_parameters() {
        let (_d, i) = index();
        let mut r = Recorder::default();
        assert!(load_all(&i, &[req("loop", &[])], &mut r)
            .unwrap()
            .is_empty());
        assert!(r.calls.is_empty());
        let e = load_all(&i, &[req("loop", &["max_loop=8"])], &mut r).unwrap_err();
        assert!(e.to_string().contains("kernel command line"), "{e}");
        // Listed as built in and loadable (an index of another build): the
        // loadable file wins.
        assert_eq!(
            load_all(&i, &[req("dummy", &["numdummies=2"])], &mut r).unwrap(),
            ["dummy"]
        );
    }

    #[test]
    fn nothing_is_loaded_when_one_request_is_bad() {
        let (_d, i) = index();
        for bad in [
            req("no-such-module", &[]),
            req("../../etc/passwd", &[]),
            req("tls", &["a b"]),
            req("tls", &["=x"]),
        ] {
            let mut r = Recorder::default();
            let e = load_all(&i, &[req("tls", &[]), bad.clone()], &mut r).unwrap_err();
            assert!(r.calls.is_empty(), "{bad:?} loaded {:?}", r.calls);
            assert!(e.to_string().contains("kernel module"), "{e}");
        }
        let e = load_all(&i, &[req("no-such-module", &[])], &mut Recorder::default()).unwrap_err();
        assert!(
            matches!(&e, KmodError::NotFound { name, .. } if name == "no_such_module"),
            "{e}"
        );
        assert!(e.to_string().contains("modules.dep"), "{e}");
    }

    #[test]
    fn a_failed_load_names_module_file_and_error() {
        let (_d, i) = index();
        let mut r = Recorder {
            fail: Some("tls.ko"),
            ..Default::default()
        };
        let e = load_all(&i, &[req("bonding", &[])], &mut r).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("kernel module tls") && text.contains("tls.ko"),
            "{text}"
        );
        assert_eq!(r.calls.len(), 1, "crc_ccitt went in, nothing after tls");
    }

    #[test]
    fn a_kernel_without_modules_has_an_empty_index() {
        let d = tempfile::tempdir().unwrap();
        let i = ModuleIndex::load(&d.path().join("6.1.0")).unwrap();
        let e = load_all(&i, &[req("dummy", &[])], &mut Recorder::default()).unwrap_err();
        assert!(e.to_string().contains("6.1.0/modules.dep"), "{e}");
        // A module already in the kernel (built in, in /sys/module) needs
        // no index; parameters for it cannot apply and are refused.
        let mut r = Recorder {
            present: vec!["loop".into()],
            ..Default::default()
        };
        assert!(load_all(&i, &[req("loop", &[])], &mut r)
            .unwrap()
            .is_empty());
        let e = load_all(&i, &[req("loop", &["max_loop=8"])], &mut r).unwrap_err();
        assert!(e.to_string().contains("cannot apply"), "{e}");
        assert!(r.calls.is_empty());
    }
}
