//! The services' allocator and when it gives memory back.
//!
//! Every service allocates with mimalloc ([`MiMalloc`], see the workspace Cargo.toml for
//! why). mimalloc frees lazily: a page emptied by a thread stays in that thread's heap, and
//! arena memory waits for a purge that only later allocator activity triggers. A service that
//! went quiet after a 100,000-test execution therefore kept its peak (the scheduler 69 MiB
//! idle against 10 MiB before; issue 11). [`runtime`] builds the services' tokio runtime so
//! that a worker thread going idle collects its heap and purges the arenas, at most once a
//! [`COLLECT_EVERY`] per thread; a busy thread keeps its pages.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::time::{Duration, Instant};

pub use mimalloc::MiMalloc;

/// The least time between two collections by one thread.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Frees the calling thread's empty pages and purges (returns to the OS) every arena page
/// that is free, of all threads.
pub fn collect() {
    // SAFETY: `mi_collect` takes no pointer and touches only mimalloc's own state: the
    // calling thread's heap and the process-wide arenas, which it locks itself. It is
    // sound to call from any thread at any time (mimalloc documents it for idle threads).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// [`collect`] unless this thread collected less than [`COLLECT_EVERY`] ago: called each
/// time a runtime thread is about to park, which can be thousands of times a second under
/// load, so all but one a second per thread cost a clock read.
pub fn collect_when_idle() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= COLLECT_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

/// The multi-threaded tokio runtime of a service (as `#[tokio::main]` builds it), whose
/// threads collect their heap when they park ([`collect_when_idle`]) and before they end.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_when_idle)
        .on_thread_stop(collect)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: MiMalloc = MiMalloc;

    /// Resident memory of this process, from /proc (KiB).
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_collection_returns_freed_memory_to_the_system() {
        let before = rss_kib();
        // 200 MiB in 64 KiB blocks, touched so that they are resident, then freed.
        let blocks: Vec<Vec<u8>> = (0..3200).map(|i| vec![i as u8; 64 * 1024]).collect();
        let peak = rss_kib();
        assert!(peak > before + 150 * 1024, "{before} -> {peak} KiB");
        drop(blocks);
        collect();
        let after = rss_kib();
        assert!(
            after < before + 50 * 1024,
            "RSS after the collection: {after} KiB (before {before}, peak {peak})"
        );
    }

    #[test]
    fn an_idle_collection_runs_at_most_once_a_period_per_thread() {
        LAST_COLLECT.with(|l| l.set(None));
        collect_when_idle();
        let first = LAST_COLLECT.with(Cell::get).unwrap();
        collect_when_idle();
        assert_eq!(LAST_COLLECT.with(Cell::get), Some(first));
        LAST_COLLECT.with(|l| l.set(Some(first - COLLECT_EVERY)));
        collect_when_idle();
        assert!(LAST_COLLECT.with(Cell::get).unwrap() > first - COLLECT_EVERY);
    }

    #[test]
    fn the_runtime_runs_tasks() {
        let rt = runtime().unwrap();
        assert_eq!(
            rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
            7
        );
    }
}
