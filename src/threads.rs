//! The rayon pool the CPU kernels run on.
//!
//! Threads do not survive `fork()`: a pool made before a DataLoader worker forks would hang the
//! child on first use. The pool is therefore keyed by process id and rebuilt in a forked child.
//! Its size is `SIMPER_RS_NUM_THREADS` when set, else the number of available cores.
use std::sync::{Arc, Mutex};

static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

pub const THREADS_ENV: &str = "SIMPER_RS_NUM_THREADS";

fn configured_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The pool for this process, made on first use (and again after a fork).
pub fn pool() -> Arc<rayon::ThreadPool> {
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((owner, pool)) = guard.as_ref() {
        if *owner == pid {
            return pool.clone();
        }
        // Inherited from the parent: its worker threads do not exist here. Dropping it would
        // wait on them, so it is deliberately leaked.
        if let Some((_, stale)) = guard.take() {
            std::mem::forget(stale);
        }
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(configured_threads())
            .thread_name(|i| format!("simper-rs-{i}"))
            .build()
            .expect("failed to start the simper_rs worker threads"),
    );
    *guard = Some((pid, pool.clone()));
    pool
}

/// Run `f` on the kernel pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Number of threads the kernels use in this process.
pub fn current_threads() -> usize {
    pool().current_num_threads()
}
