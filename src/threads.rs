//! The rayon pool the CPU kernels run on.
//!
//! Its size follows `torch.get_num_threads()` (checked at every kernel call, so a later
//! `torch.set_num_threads(n)` applies), unless `SIMPER_RS_NUM_THREADS` is set, which wins.
//! Threads do not survive `fork()`: a pool made before a DataLoader worker forks would hang the
//! child on first use, so the pool is keyed by process id and rebuilt in a forked child.
use std::sync::{Arc, Mutex};

struct Pool {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

pub const THREADS_ENV: &str = "SIMPER_RS_NUM_THREADS";

/// The thread count the kernels should use now.
pub fn wanted_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| tch::get_num_threads().max(1) as usize)
}

/// The pool for this process and thread count, made on first use (and again after a fork or
/// a change of the wanted thread count).
pub fn pool() -> Arc<rayon::ThreadPool> {
    let (pid, threads) = (std::process::id(), wanted_threads());
    let mut guard = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(current) = guard.as_ref() {
        if current.pid == pid && current.threads == threads {
            return current.pool.clone();
        }
    }
    if let Some(stale) = guard.take() {
        if stale.pid != pid {
            // Inherited from the parent: its worker threads do not exist here, and dropping the
            // pool would wait on them. Deliberately leaked.
            std::mem::forget(stale);
        }
        // Same process, other size: dropping lets its threads finish and exit.
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("simper-rs-{i}"))
            .build()
            .expect("failed to start the simper_rs worker threads"),
    );
    *guard = Some(Pool { pid, threads, pool: pool.clone() });
    pool
}

/// Run `f` on the kernel pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Number of threads the kernels use in this process now.
pub fn current_threads() -> usize {
    pool().current_num_threads()
}
