//! `sluice info`: versions, node kinds, the Python tools run in and the CPU code local models run on.

use crate::ExitStatus;

pub fn run() -> anyhow::Result<ExitStatus> {
    println!("sluice {}", env!("CARGO_PKG_VERSION"));
    let registry = sluice_nodes::builtin_registry();
    println!("node kinds: {}", registry.names().join(", "));
    #[cfg(feature = "python")]
    match sluice_nodes::python::python_info() {
        Ok(info) => println!("python: {info}"),
        Err(e) => println!("python: unavailable ({e})"),
    }
    #[cfg(feature = "cpu-variants")]
    match sluice_nodes::llm::local::cpu_backend() {
        Ok(b) => println!(
            "llama.cpp CPU backend: {} ({})",
            b.variant,
            b.path.display()
        ),
        Err(e) => println!("llama.cpp CPU backend: unavailable ({})", e.message),
    }
    #[cfg(all(feature = "local-llm", not(feature = "cpu-variants")))]
    println!("llama.cpp CPU backend: built in (AVX2)");
    Ok(ExitStatus::Ok)
}
