//! Bakes the path of the libpython that pyo3 linked into the `sluice` binary (RUNPATH), so the binary
//! runs the same Python it was built against without LD_LIBRARY_PATH.
fn main() {
    #[cfg(feature = "python")]
    pyo3_build_config::add_libpython_rpath_link_args();
}
