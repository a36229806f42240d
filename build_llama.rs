//! Shared by the build scripts of the `sluice` binary and of the Python extension: with llama.cpp's CPU
//! variants, llama.cpp is a set of shared libraries, copied from llama-cpp-sys-2's build to where the
//! program that links them looks for them (its own folder: RUNPATH `$ORIGIN`).
// Each build script uses what it needs of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// What the program needs at run time: the libraries it links under the names it asks for
/// (`libllama.so.0`, `libggml.so.0`, `libggml-base.so.0`) and every backend module ggml may load
/// (`libggml-cpu-*.so`, and others such as `libggml-cuda.so` when built). Returns the copies made.
/// `strip` drops debug sections from the copies (`strip --strip-debug`, where there is one).
pub fn copy_llama_libraries(to: &Path, strip: bool) -> Vec<PathBuf> {
    let backends = PathBuf::from(
        std::env::var("DEP_LLAMA_BACKENDS_DIR").expect("llama-cpp-sys-2 names its backends folder"),
    );
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_BACKENDS_DIR");
    let libs = backends
        .parent()
        .expect("backends folder has a parent")
        .join("lib");
    let mut copied = Vec::new();
    for (dir, wanted) in [
        (&libs, linked_name as fn(&str) -> bool),
        (&backends, module_name),
    ] {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("folder entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if wanted(name) {
                println!("cargo:rerun-if-changed={}", path.display());
                let dest = to.join(name);
                replace_with_copy(&path, &dest, strip);
                copied.push(dest);
            }
        }
    }
    copied
}

/// Removes links named `lib*.so` in `dir` that lead nowhere. llama-cpp-sys-2's build links its
/// libraries' unversioned names (themselves links, such as `libllama-common.so -> libllama-common.so.0`)
/// into the target folder, and a later run of it stops on one it finds there dangling.
pub fn remove_dangling_links(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && name.starts_with("lib") && name.ends_with(".so") && !path.exists() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// `libllama.so.0`, `libggml.so.0`, `libggml-base.so.0`: the names the program's dynamic section asks for.
fn linked_name(name: &str) -> bool {
    let Some((stem, version)) = name.split_once(".so.") else {
        return false;
    };
    matches!(stem, "libllama" | "libggml" | "libggml-base")
        && version.bytes().all(|b| b.is_ascii_digit())
}

/// A backend module: `libggml-<backend>[-<variant>].so`.
fn module_name(name: &str) -> bool {
    name.starts_with("libggml-") && name.ends_with(".so")
}

/// Puts a fresh copy of `from` (links followed) at `to`: a new file, so a running program that maps
/// the old one keeps it.
pub fn replace_with_copy(from: &Path, to: &Path, strip: bool) {
    let tmp = to.with_file_name(format!(
        ".{}.tmp",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("lib")
    ));
    std::fs::copy(from, &tmp)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), tmp.display()));
    if strip {
        // Best effort: without binutils the copy keeps its debug sections, and only its size differs.
        let _ = std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg(&tmp)
            .status();
    }
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
}
