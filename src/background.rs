//! Threads for CPU-heavy background work, at a lower scheduling priority.
//!
//! Flushing the ingest log and compacting sort, decode and encode tens of
//! MB at a time. On tokio's shared blocking pool they compete for the CPU
//! on equal terms with the runtime threads that answer `DoPut`s and
//! queries, so on a 2-core machine every compaction showed up as a
//! `DoPut` p99 of hundreds of milliseconds. Here they run on threads of
//! their own with a higher nice value (Linux; elsewhere the same threads
//! at normal priority): when both want the CPU, requests win, and the
//! background work still gets every cycle requests leave idle.
//!
//! The write-ahead log's fsyncs stay on tokio's pool: they are on the
//! `DoPut` path.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Nice value of background threads: 10 gives a busy request thread about
/// ten times the CPU share of a background thread (CFS weights 1024 : 110).
const NICE: i32 = 10;

/// A runtime used only for its blocking pool, whose threads start niced.
fn pool() -> &'static tokio::runtime::Runtime {
    static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("raindrop-background")
            .on_thread_start(lower_priority)
            .build()
            .expect("building the background thread pool")
    })
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux the nice value is per thread; `who = 0` is the calling
    // thread. Raising it needs no privilege (lowering would: a server
    // started niced stays as nice). Failure only costs priority.
    // SAFETY: get/setpriority have no memory effects.
    unsafe {
        if libc::getpriority(libc::PRIO_PROCESS, 0) < NICE {
            libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Start `f` on a background thread now; the returned future waits for
/// it. (Started eagerly, so several calls run in parallel before any is
/// awaited.) `what` names the work in the error if it panics.
pub fn run<F, T>(what: &'static str, f: F) -> impl Future<Output = Result<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let task = pool().spawn_blocking(f);
    async move {
        task.await
            .map_err(|e| Error::Internal(format!("{what} failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    /// The calling thread's nice value (field 19 of its `stat`).
    #[cfg(target_os = "linux")]
    fn nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = stat.rsplit_once(") ").unwrap().1;
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_threads_run_at_a_lower_priority() {
        let here = nice();
        let there = super::run("reading the nice value", nice).await.unwrap();
        assert_eq!(there, here.max(super::NICE));
    }

    #[tokio::test]
    async fn work_starts_before_it_is_awaited() {
        // The first task waits for a message the second sends: it gets it
        // only if the second started without being awaited, as the
        // writer's parallel encoders rely on.
        let (send, receive) = std::sync::mpsc::channel();
        let first = super::run("first", move || {
            receive
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok()
        });
        let second = super::run("second", move || send.send(()).is_ok());
        assert!(first.await.unwrap(), "the second task never ran");
        assert!(second.await.unwrap());
    }
}
