//! One Python thread state per OS thread that runs Python, kept for the thread's life.
//!
//! A thread that Python does not know is attached by pyo3 with `PyGILState_Ensure`, which makes it a
//! thread state, and detached with `PyGILState_Release`, which deletes it again. Python nodes run on
//! the blocking pool's threads, so every call paid for a new thread state and its frame stack (a
//! fresh mapping, touched with a page fault, unmapped at the end) and then for their teardown. Kept
//! here, the first one serves every later call on the thread: `PyGILState_Ensure` finds it and only
//! takes the interpreter lock. It is deleted when the thread ends, while the interpreter still runs.

// Python's C API: the thread state is made, detached from and deleted through it.
#![allow(unsafe_code)]

use std::cell::RefCell;

use pyo3::ffi;

/// A thread state made for this thread, and the thread detached from it.
struct Kept {
    gstate: ffi::PyGILState_STATE,
    detached: *mut ffi::PyThreadState,
}

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: `detached` is this thread's own state, saved when it was made; the release matches
        // the `PyGILState_Ensure` that made it, and (the count back at zero) deletes it. Once the
        // interpreter has finalized, it has freed every thread state itself.
        unsafe {
            if ffi::Py_IsInitialized() == 0 {
                return;
            }
            ffi::PyEval_RestoreThread(self.detached);
            ffi::PyGILState_Release(self.gstate);
        }
    }
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Gives this thread a thread state of its own for the rest of its life, unless it has one (a
/// thread Python started, or one attached now). Call it with the interpreter initialized and the
/// thread not attached.
pub(super) fn keep() {
    let _ = KEPT.try_with(|kept| {
        if kept.borrow().is_some() {
            return;
        }
        // SAFETY: the interpreter is initialized (checked); a thread without a thread state is not
        // attached, so it may make one with `PyGILState_Ensure` and detach at once.
        unsafe {
            if ffi::Py_IsInitialized() == 0 || !ffi::PyGILState_GetThisThreadState().is_null() {
                return;
            }
            let gstate = ffi::PyGILState_Ensure();
            let detached = ffi::PyEval_SaveThread();
            *kept.borrow_mut() = Some(Kept { gstate, detached });
        }
    });
}

/// Whether this thread holds a thread state kept by [`keep`].
#[cfg(test)]
fn kept() -> bool {
    KEPT.with(|k| k.borrow().is_some())
}

#[cfg(test)]
mod tests {
    use pyo3::prelude::*;

    #[test]
    fn a_pool_thread_keeps_one_thread_state_across_calls() {
        Python::initialize();
        sluice_engine::spawn::thread("python-test", || {
            super::keep();
            assert!(super::kept());
            let ident = || {
                Python::attach(|py| {
                    // SAFETY: the thread is attached.
                    let state = unsafe { pyo3::ffi::PyThreadState_Get() } as usize;
                    let id: u64 = py
                        .import("threading")
                        .and_then(|t| t.call_method0("get_ident"))
                        .and_then(|i| i.extract())
                        .expect("threading.get_ident");
                    (state, id)
                })
            };
            let first = ident();
            // A value set in a thread-local of Python's survives to the next call on the thread.
            Python::attach(|py| {
                py.run(c"import threading\n_l = threading.local()\n_l.x = 7\nimport builtins\nbuiltins._sluice_test_local = _l", None, None)
                    .expect("set");
            });
            assert_eq!(ident(), first, "the same thread state serves the next call");
            let x: i64 = Python::attach(|py| {
                py.eval(c"__import__('builtins')._sluice_test_local.x", None, None)
                    .and_then(|v| v.extract())
                    .expect("read")
            });
            assert_eq!(x, 7);
            super::keep();
            assert_eq!(ident(), first);
        })
        .expect("spawn")
        .join()
        .expect("thread");
    }

    #[test]
    fn a_thread_attached_now_is_left_as_it_is() {
        Python::initialize();
        sluice_engine::spawn::thread("python-test", || {
            Python::attach(|_| super::keep());
            assert!(!super::kept());
        })
        .expect("spawn")
        .join()
        .expect("thread");
    }
}
