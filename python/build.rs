//! llama.cpp is a set of shared libraries (its CPU code once per x86-64 level; the best is chosen when
//! a model first loads). They go into the `sluice` package folder, beside the extension, which finds
//! them there (RUNPATH `$ORIGIN`); the wheel takes them from there (pyproject.toml's `include`). So
//! does the OpenMP runtime they use, so that the wheel runs where none is installed.

#[path = "../build_llama.rs"]
mod build_llama;

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build_llama.rs");
    if std::env::var_os("DEP_LLAMA_BACKENDS_DIR").is_none() {
        return; // built without the extension (`--no-default-features`)
    }
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN");
    let package =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("sluice");
    build_llama::copy_llama_libraries(&package, true);
    if let Some(gomp) = openmp_runtime() {
        build_llama::replace_with_copy(&gomp, &package.join("libgomp.so.1"), true);
    }
}

/// The OpenMP runtime the C compiler links (GCC's libgomp), if it has a shared one.
fn openmp_runtime() -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = std::process::Command::new(cc)
        .arg("-print-file-name=libgomp.so.1")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Without it, the compiler prints the bare name back.
    (path.is_absolute() && path.is_file()).then_some(path)
}
