//! Giving freed memory back to the OS after connections park.
//!
//! Parking frees hyper's buffers, but an allocator keeps freed pages resident until something
//! asks it to purge; a daemon that has gone quiet never would. After a park, a worker thread
//! asks mimalloc to collect its heap — at most once per interval per thread, so a busy daemon
//! pays nothing noticeable.

use std::cell::Cell;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(500);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called after a connection gave its buffers back.
pub fn after_park() {
    LAST.with(|last| {
        let now = Instant::now();
        if last.get().is_none_or(|t| now.duration_since(t) >= INTERVAL) {
            last.set(Some(now));
            // SAFETY: mi_collect only walks and purges the calling thread's own heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}
