//! Bakes the path of the libpython that pyo3 linked into the `sluice` binary (RUNPATH), so the binary
//! runs the same Python it was built against without LD_LIBRARY_PATH.
//!
//! With llama.cpp's CPU variants (the `cpu-variants` feature), llama.cpp is a set of shared libraries:
//! they are put beside the binary, which finds them there (RUNPATH `$ORIGIN`), so the build folder
//! holds a complete copy of the program that can be moved as a whole (scripts/install.sh).

#[path = "build_llama.rs"]
mod build_llama;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_llama.rs");
    #[cfg(feature = "python")]
    pyo3_build_config::add_libpython_rpath_link_args();
    if std::env::var_os("CARGO_FEATURE_CPU_VARIANTS").is_some() {
        // Benches and tests are linked in deps/, where llama-cpp-sys-2 puts the libraries too.
        for kind in ["bins", "tests", "benches"] {
            println!("cargo:rustc-link-arg-{kind}=-Wl,-rpath,$ORIGIN");
        }
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
        let profile_dir = out
            .ancestors()
            .nth(3)
            .expect("OUT_DIR is inside the target folder");
        build_llama::copy_llama_libraries(profile_dir, false);
        build_llama::copy_llama_libraries(&profile_dir.join("deps"), false);
        for dir in [
            profile_dir,
            &profile_dir.join("deps"),
            &profile_dir.join("examples"),
        ] {
            build_llama::remove_dangling_links(dir);
        }
    }
}
