//! A bound on one account's concurrent changes that may cost money (rent, extend, start, stop,
//! bid) in this daemon: `rentals.max_concurrent_changes_per_account` run at once, the rest wait
//! their turn holding no database connection. Without it, 40 concurrent rentals of one account
//! each held a pooled connection while waiting for the account's budget lock, the pool (shared
//! by every account) ran dry, and other accounts' requests got 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accounts remembered before the ones with nothing running are forgotten.
const SWEEP_AT: usize = 1024;

pub struct Slots {
    per_account: usize,
    accounts: Mutex<HashMap<i64, Weak<Semaphore>>>,
}

impl Slots {
    pub fn new(per_account: usize) -> Slots {
        Slots {
            per_account,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// A turn for one change of `account`: held until dropped.
    pub async fn acquire(&self, account: i64) -> OwnedSemaphorePermit {
        let sem = {
            let mut m = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            match m.get(&account).and_then(Weak::upgrade) {
                Some(s) => s,
                None => {
                    if m.len() >= SWEEP_AT {
                        m.retain(|_, w| w.strong_count() > 0);
                    }
                    let s = Arc::new(Semaphore::new(self.per_account));
                    m.insert(account, Arc::downgrade(&s));
                    s
                }
            }
        };
        sem.acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_account_gets_its_turns_and_others_are_not_held_up() {
        let s = Slots::new(2);
        let a1 = s.acquire(1).await;
        let _a2 = s.acquire(1).await;
        // a third change of account 1 waits; account 2 does not
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), s.acquire(1)).await;
        assert!(third.is_err(), "account 1 has two changes running");
        let _b = s.acquire(2).await;
        drop(a1);
        let _a3 = s.acquire(1).await;
    }

    #[tokio::test]
    async fn accounts_with_nothing_running_are_forgotten() {
        let s = Slots::new(1);
        for a in 0..(SWEEP_AT as i64 + 10) {
            drop(s.acquire(a).await);
        }
        assert!(s.accounts.lock().unwrap().len() <= SWEEP_AT);
    }
}
