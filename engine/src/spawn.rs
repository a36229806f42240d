//! The one way Sluice starts tasks.
//!
//! [`SpawnedTask`] aborts its task when dropped, so a cancelled run never leaves orphans behind;
//! [`run_blocking`] moves blocking work (Python calls, large renders) off the async worker threads;
//! [`thread`] starts a long-lived named thread (the llama.cpp decode loop); [`inline_blocking`] lets a
//! caller that blocks its own thread anyway (one line called from Python) run that work in place.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A tokio task that is aborted when this handle is dropped.
#[derive(Debug)]
pub struct SpawnedTask<T> {
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> SpawnedTask<T> {
    /// Spawns `future` on the current runtime.
    #[allow(clippy::disallowed_methods)]
    pub fn spawn<F>(future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        SpawnedTask {
            handle: tokio::spawn(future),
        }
    }
}

impl<T> Future for SpawnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle).poll(cx)
    }
}

impl<T> Drop for SpawnedTask<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (which blocks this thread on a future, e.g. `Runtime::block_on` from a thread outside the
/// runtime) so that [`run_blocking`] work started while polling on this thread runs right here instead
/// of on the blocking pool. It saves two thread hand-offs per Python call; only for a caller whose
/// thread waits anyway and that needs no timeout (the work cannot be abandoned).
pub fn inline_blocking<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            INLINE.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(INLINE.with(|c| c.replace(true)));
    f()
}

/// Runs blocking work on tokio's blocking pool and waits for it (in place under [`inline_blocking`]).
///
/// Dropping the returned future does not stop the work (a thread cannot be interrupted); its result is
/// discarded.
#[allow(clippy::disallowed_methods)]
pub async fn run_blocking<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if INLINE.with(Cell::get) {
        return f();
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task failed: {e}"),
    }
}

/// Starts a named OS thread for long-lived blocking work that owns its state (e.g. an inference loop).
///
/// Such a thread runs until its work returns; callers stop it by closing the channel it reads from.
pub fn thread<F>(name: impl Into<String>, f: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new().name(name.into()).spawn(f)
}
