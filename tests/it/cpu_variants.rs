//! llama.cpp's CPU code as variants, one per x86-64 level: the best for this CPU is loaded from beside
//! the binary, a folder named by `SLUICE_GGML_BACKENDS_DIR` is taken alone, and the binary with its
//! libraries can be moved as a whole.
#![cfg(feature = "cpu-variants")]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value as Json;

use crate::common::{sluice, stdout_json};

const AVX512_VARIANTS: &[&str] = &[
    "skylakex",
    "cannonlake",
    "cascadelake",
    "icelake",
    "cooperlake",
    "zen4",
    "sapphirerapids",
];

/// The folder the tested binary lives in, beside which the build put llama.cpp's libraries.
fn binary_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice"));
    bin.canonicalize().unwrap().parent().unwrap().to_path_buf()
}

/// `details.cpu_backend` of `sluice model info default`, run by `cmd`.
fn cpu_backend(cmd: &mut Command) -> Json {
    let out = cmd.args(["model", "info", "default"]).output().unwrap();
    stdout_json(&out)["details"]["cpu_backend"].clone()
}

fn variant_file(dir: &Path, variant: &str) -> PathBuf {
    dir.join(format!("libggml-cpu-{variant}.so"))
}

#[test]
fn the_variant_for_this_cpu_is_loaded_from_beside_the_binary() {
    let home = tempfile::tempdir().unwrap();
    let cpu = cpu_backend(&mut sluice(home.path()));
    let variant = cpu["variant"].as_str().unwrap_or_else(|| panic!("{cpu}"));
    assert_eq!(
        Path::new(cpu["path"].as_str().unwrap()),
        variant_file(&binary_dir(), variant),
        "{cpu}"
    );
    let info = sluice(home.path()).arg("info").output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains(&format!("llama.cpp CPU backend: {variant} (")),
        "{text}"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        assert!(AVX512_VARIANTS.contains(&variant), "{cpu}");
    } else if std::arch::is_x86_feature_detected!("avx2") {
        assert!(["haswell", "alderlake"].contains(&variant), "{cpu}");
    }
}

#[test]
fn a_folder_named_by_the_environment_is_the_only_one_looked_in() {
    // Only the baseline x86-64 variant: it is chosen, and the model answers as on the best one.
    let home = tempfile::tempdir().unwrap();
    let only = tempfile::tempdir().unwrap();
    std::fs::copy(
        variant_file(&binary_dir(), "x64"),
        variant_file(only.path(), "x64"),
    )
    .unwrap();
    let cpu = cpu_backend(sluice(home.path()).env("SLUICE_GGML_BACKENDS_DIR", only.path()));
    assert_eq!(cpu["variant"], "x64", "{cpu}");
    assert_eq!(
        Path::new(cpu["path"].as_str().unwrap()),
        variant_file(only.path(), "x64")
    );
    let out = sluice(home.path())
        .env("SLUICE_GGML_BACKENDS_DIR", only.path())
        .args(["flow", "test", "--flow"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/capitals"))
        .output()
        .unwrap();
    let v = stdout_json(&out);
    assert_eq!(v["completion"], " Paris", "{v}");
}

#[test]
fn a_folder_without_backends_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = sluice(home.path())
        .env("SLUICE_GGML_BACKENDS_DIR", empty.path())
        .args(["model", "info", "default"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SLUICE_GGML_BACKENDS_DIR")
            && err.contains(&empty.path().display().to_string())
            && err.contains("libggml-cpu-"),
        "{err}"
    );
}

#[test]
fn the_binary_and_its_libraries_move_as_a_whole() {
    let home = tempfile::tempdir().unwrap();
    let moved = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(binary_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // The libraries under the names the binary asks for (`libllama.so.0`), and the CPU variants.
        let linked = ["libllama.so.", "libggml.so.", "libggml-base.so."]
            .iter()
            .any(|p| name.starts_with(p));
        let lib = linked || (name.starts_with("libggml-cpu-") && name.ends_with(".so"));
        if lib || name == "sluice" {
            std::fs::copy(&path, moved.path().join(&name)).unwrap();
            copied += 1;
        }
    }
    assert!(copied > 4, "only {copied} files beside the binary");
    let mut cmd = Command::new(moved.path().join("sluice"));
    cmd.env("SLUICE_HOME", home.path())
        .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir());
    let cpu = cpu_backend(&mut cmd);
    let loaded = Path::new(cpu["path"].as_str().unwrap_or_else(|| panic!("{cpu}")));
    assert_eq!(loaded.parent(), Some(moved.path()), "{cpu}");
}
