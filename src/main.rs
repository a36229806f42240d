//! The `sluice` command line; the commands live in the library (`src/lib.rs`).

use std::io::Write;

fn main() {
    // Like other command-line tools, stop quietly when the reader of stdout goes away (`| head`).
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal before any other thread starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let code = sluice::run_cli(std::env::args_os());
    // Exit as soon as the results are out: a thread that outlived its work (a Python tool still
    // running after its line timed out) must not keep the process alive. The embedded interpreter is
    // never finalized, which would wait for such threads.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // And without running the C++ libraries' static destructors, as `exit` would: a model thread
    // can still be decoding a cancelled answer (a stream cut off at its line's timeout, say), and
    // llama.cpp's backend tables and CPU code's buffers destroyed under it can crash the process at
    // the end of a clean shutdown.
    #[cfg(unix)]
    // SAFETY: C's own streams are flushed first; nothing else runs at `exit` that the process needs.
    #[allow(unsafe_code)]
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(code);
    }
    #[cfg(not(unix))]
    std::process::exit(code);
}
