//! Giving freed memory back to the OS after connections park and streams end.
//!
//! Parking frees hyper's buffers, and an ended event stream its session, but an allocator keeps
//! freed pages resident until something asks it to purge; a daemon that has gone quiet never
//! would. After a park or a stream's end, the worker thread asks mimalloc to collect its heap —
//! at most once per interval per thread, so a busy daemon pays nothing noticeable. When a
//! collect is due sooner than the interval allows (many streams ending at once), one more runs
//! when the interval has passed, so what the last of them freed is given back too.

use std::cell::Cell;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(500);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Until when a deferred collect asked for from this thread is pending.
    static DEFERRED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Collects this thread's heap unless it did within the interval; whether it did.
fn collect_now() -> bool {
    LAST.with(|last| {
        let now = Instant::now();
        if last.get().is_none_or(|t| now.duration_since(t) >= INTERVAL) {
            last.set(Some(now));
            // SAFETY: mi_collect only walks and purges the calling thread's own heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
            true
        } else {
            false
        }
    })
}

/// Called after a connection gave its buffers back.
pub fn after_park() {
    collect_now();
}

/// Called when an event stream's session ended (its feed, socket buffers and session gone).
pub fn after_stream() {
    if collect_now() {
        return;
    }
    let now = Instant::now();
    let pending = DEFERRED.with(|d| d.get().is_some_and(|until| until > now));
    if pending || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    DEFERRED.with(|d| d.set(Some(now + INTERVAL)));
    // a task spawned from a worker runs on that worker unless another steals it
    tokio::spawn(async {
        tokio::time::sleep(INTERVAL).await;
        collect_now();
    });
}
