//! llama.cpp's CPU code as variants: one shared library per x86-64 level (`libggml-cpu-x64.so` for any
//! x86-64 CPU, `-haswell` for AVX2, `-skylakex`/`-icelake` for AVX-512, `-sapphirerapids` for AMX, …).
//! At start ggml asks each one how well it fits this CPU and loads the best, so one build runs on any
//! x86-64 machine at the speed of its instruction sets.
//!
//! The variants are looked for, in order, in `$SLUICE_GGML_BACKENDS_DIR` (alone, when it is set), beside
//! the program or library this code is part of (the `sluice` binary, or the Python extension in its
//! package), and in the folder the build put them in.

use std::path::{Path, PathBuf};

/// Names a folder to take llama.cpp's backends from, instead of the ones beside the program.
pub const DIR_ENV: &str = "SLUICE_GGML_BACKENDS_DIR";

/// The prefix of ggml's CPU backend files.
const CPU_PREFIX: &str = "libggml-cpu-";

/// The CPU backend that runs, once loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuBackend {
    /// The variant's name: `x64`, `haswell`, `skylakex`, `sapphirerapids`, ….
    pub variant: String,
    /// The file it was loaded from.
    pub path: PathBuf,
}

/// Why no CPU backend could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CpuBackendError {
    #[error(
        "SLUICE_GGML_BACKENDS_DIR={} holds no llama.cpp CPU backend (libggml-cpu-*.so); point it \
         at the folder they were installed in, or unset it",
        .dir.display()
    )]
    EnvDir { dir: PathBuf },
    #[error(
        "llama.cpp's CPU backends (libggml-cpu-*.so) are in none of {}; install them with the \
         program (scripts/install.sh does), or set SLUICE_GGML_BACKENDS_DIR to their folder",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { searched: Vec<PathBuf> },
    #[error(
        "none of llama.cpp's CPU backends in {} loaded on this CPU (a file may be damaged, or \
         libggml-base.so.0 missing beside the program); `-vv` shows llama.cpp's own messages",
        .dir.display()
    )]
    NoneLoaded { dir: PathBuf },
}

/// The variant a CPU backend's file name names (`libggml-cpu-<variant>.so`), if it is one.
fn cpu_variant(file_name: &str) -> Option<&str> {
    file_name.strip_prefix(CPU_PREFIX)?.strip_suffix(".so")
}

/// Whether `dir` holds at least one CPU backend.
fn has_cpu_backends(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| cpu_variant(&e.file_name().to_string_lossy()).is_some())
    })
}

/// The file-backed mappings of this process, from `/proc/self/maps`: address range and file.
fn mapped_files() -> Vec<(std::ops::Range<usize>, PathBuf)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start..end, map_path(rest)?))
        })
        .collect()
}

/// The file a mapped address of this process belongs to.
fn mapped_file_of(addr: usize) -> Option<PathBuf> {
    mapped_files()
        .into_iter()
        .find_map(|(range, path)| range.contains(&addr).then_some(path))
}

/// The path field of a `/proc/self/maps` line, after the range: `perms offset dev inode path`.
fn map_path(fields: &str) -> Option<PathBuf> {
    let mut rest = fields;
    for _ in 0..4 {
        rest = rest.trim_start();
        rest = &rest[rest.find(' ')?..];
    }
    let path = rest.trim();
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// The folders to look in, in order, when `$SLUICE_GGML_BACKENDS_DIR` is not set.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let this_fn: fn() -> Vec<PathBuf> = search_dirs;
    let here = mapped_file_of(this_fn as usize);
    let exe = std::env::current_exe().ok();
    for file in [here, exe].into_iter().flatten() {
        match file.parent() {
            Some(dir) if !dirs.iter().any(|d| d == dir) => dirs.push(dir.to_path_buf()),
            _ => {}
        }
    }
    if let Some(built) = llama_cpp_sys_2::BACKENDS_DIR {
        dirs.push(PathBuf::from(built));
    }
    dirs
}

/// The folder the CPU backends are taken from.
fn backends_dir() -> Result<PathBuf, CpuBackendError> {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_cpu_backends(&dir) {
            Ok(dir)
        } else {
            Err(CpuBackendError::EnvDir { dir })
        };
    }
    let searched = search_dirs();
    match searched.iter().find(|d| has_cpu_backends(d)) {
        Some(dir) => Ok(dir.clone()),
        None => Err(CpuBackendError::NotFound { searched }),
    }
}

/// The CPU backend mapped into this process, if one is.
fn loaded() -> Option<CpuBackend> {
    mapped_files().into_iter().find_map(|(_, path)| {
        let variant = cpu_variant(path.file_name()?.to_str()?)?.to_owned();
        Some(CpuBackend { variant, path })
    })
}

/// Loads the best CPU backend for this CPU (and any other backend beside it), once per process.
/// Must run before llama.cpp loads a model.
pub fn load() -> Result<CpuBackend, CpuBackendError> {
    let dir = backends_dir()?;
    preload_openmp(&dir);
    llama_cpp_2::llama_backend::load_backends_from_path(&dir);
    match loaded() {
        Some(backend) => {
            tracing::debug!(variant = %backend.variant, path = %backend.path.display(), "llama.cpp CPU backend");
            Ok(backend)
        }
        None => Err(CpuBackendError::NoneLoaded { dir }),
    }
}

/// The CPU backends are built with OpenMP. Where a copy of its runtime ships beside them (in the
/// Python package), it is loaded first, so that they find it without one installed on the system.
fn preload_openmp(dir: &Path) {
    let gomp = dir.join("libgomp.so.1");
    if !gomp.is_file() {
        return;
    }
    let Some(path) = gomp.to_str().and_then(|p| std::ffi::CString::new(p).ok()) else {
        return;
    };
    // SAFETY: a plain dlopen of a shared library by its path; the handle is kept for the process's life.
    #[allow(unsafe_code)]
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        tracing::debug!(path = %gomp.display(), "the bundled OpenMP runtime did not load");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maps_line_gives_its_path_even_with_spaces() {
        assert_eq!(
            map_path(
                "r-xp 00001000 08:01 123456                     /opt/my libs/libggml-cpu-x64.so"
            ),
            Some(PathBuf::from("/opt/my libs/libggml-cpu-x64.so"))
        );
        assert_eq!(map_path("rw-p 00000000 00:00 0 "), None);
        assert_eq!(
            map_path("rw-p 00000000 00:00 0                          [heap]"),
            None
        );
    }

    #[test]
    fn this_code_is_found_in_the_file_it_was_loaded_from() {
        let this_fn: fn() -> Vec<PathBuf> = search_dirs;
        let file = mapped_file_of(this_fn as usize).unwrap();
        assert_eq!(file, std::env::current_exe().unwrap());
    }

    #[test]
    fn a_folder_without_backends_is_refused_by_name() {
        let dir = std::env::temp_dir();
        assert!(!has_cpu_backends(&dir.join("surely-not-here")));
        let err = CpuBackendError::NotFound {
            searched: vec![
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from("/c"),
            ],
        };
        let text = err.to_string();
        assert!(text.contains("in none of /a, /b, /c"), "{text}");
        assert!(text.contains(DIR_ENV), "{text}");
    }
}
