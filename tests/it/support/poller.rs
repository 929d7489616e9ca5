//! Clients calling one route of one daemon back to back (a new connection each) until stopped,
//! counting 200s and everything else: the load of a fault drill aimed at one daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::daemon::DaemonProc;

pub struct Poller {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Poller {
    /// `clients` tasks calling `GET path` as the holder of `token`.
    pub fn start(d: &Arc<DaemonProc>, token: &str, path: &'static str, clients: usize) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (d, token, stop) = (d.clone(), token.to_owned(), stop.clone());
                let (ok, failed) = (ok.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = super::rentals::call(&d, &token, "GET", path, "", None).await;
                        if r.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            eprintln!("failed: {} {}", r.status, String::from_utf8_lossy(&r.body));
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Poller {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    pub fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond the current count were answered 200.
    pub async fn progress(&self, more: u64) {
        let target = self.answered() + more;
        super::eventually("the load to make progress", || async {
            (self.answered() >= target).then_some(())
        })
        .await;
    }

    /// Stops the clients; (answered 200, anything else).
    pub async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
