//! `sluice info`: versions and node kinds.

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
    Ok(ExitStatus::Ok)
}
