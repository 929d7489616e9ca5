//! One client's view of its account's events, whatever carries them (Server-Sent Events or a
//! WebSocket): the log from the resume point up to where the live feed took over
//! ([`Subscription::from`]), then live events, any gap before a live event filled from the log
//! first; filtered by type and instance (filtered events still move the feed on). It ends with a
//! reason: `slow_consumer` (the hub dropped it for falling `events.max_queue` behind),
//! `draining` (the daemon is shutting down), `unavailable` (the log could not be read).
//!
//! A state machine polled by its carrier: no task per stream.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::{counter, gauge};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::hub::Subscription;
use super::{Event, read};
use crate::accounts::Db;
use crate::error::{Error, Result};
use crate::metrics::{EVENT_STREAMS, EVENT_STREAMS_CLOSED_TOTAL, EVENTS_DELIVERED_TOTAL};

/// Log rows read at once while catching up.
const PAGE: i64 = 500;

/// Which events a client wants (`types=`, `instance=`).
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    pub types: Option<Vec<String>>,
    pub instance: Option<String>,
}

impl Filter {
    pub fn wants(&self, e: &Event) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(&e.kind))
            && self
                .instance
                .as_ref()
                .is_none_or(|i| e.instance_id.as_deref() == Some(i.as_str()))
    }
}

/// What the feed has next.
pub enum Item {
    Event(Arc<Event>),
    /// The feed is over, for this reason.
    End(&'static str),
}

/// A read of the log in flight (a task: the feed must be `Sync`, and a database future is not).
type Fetch = tokio::task::JoinHandle<Result<Vec<Event>>>;

pub struct Feed {
    db: Arc<Db>,
    account_id: i64,
    sub: Subscription,
    filter: Filter,
    /// Where it stands: the last event passed, and the log it still owes.
    pos: Position,
    from_log: VecDeque<Event>,
    fetch: Option<Fetch>,
    /// A live event waiting for the log to fill what comes before it.
    held: Option<Arc<Event>>,
    draining: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The caller's access ended (see `hub::Access`).
    access: Pin<Box<WaitForCancellationFutureOwned>>,
    /// When the credential it was opened with expires, and what the end is then called.
    expires: Option<(Pin<Box<tokio::time::Sleep>>, &'static str)>,
    /// Why it ended (counted on drop); `None` while open or when the client left.
    ended: Option<&'static str>,
}

impl Feed {
    /// `after`: the last event the client has (resume point); `None` starts with what comes next.
    /// `expires`: when the credential the stream was opened with stops working, and the
    /// reason the stream then ends with (`token_expired`, `key_expired`).
    pub fn new(
        db: Arc<Db>,
        account_id: i64,
        sub: Subscription,
        after: Option<i64>,
        filter: Filter,
        expires: Option<(std::time::SystemTime, &'static str)>,
    ) -> Feed {
        gauge!(EVENT_STREAMS).increment(1.0);
        let pos = Position::new(after, sub.from);
        let draining = Box::pin(sub.draining.clone().cancelled_owned());
        let access = Box::pin(sub.access.ended.clone().cancelled_owned());
        let expires = expires.map(|(at, reason)| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            (Box::pin(tokio::time::sleep(left)), reason)
        });
        Feed {
            db,
            account_id,
            filter,
            pos,
            from_log: VecDeque::new(),
            fetch: None,
            held: None,
            draining,
            access,
            expires,
            sub,
            ended: None,
        }
    }

    /// Where the connection carrying the feed leaves what closes it (`hub::Cut`).
    pub fn cut_slot(&self) -> super::hub::CutSlot {
        self.sub.cut_slot()
    }

    /// The last event passed: where a client resumes.
    pub fn last(&self) -> i64 {
        self.pos.last
    }

    /// Ends the feed for `reason` (a carrier's own, such as a WebSocket ping timeout).
    pub fn end(&mut self, reason: &'static str) -> Item {
        self.ended = Some(reason);
        Item::End(reason)
    }

    /// `e` passes the feed: whether the client wants it.
    fn pass(&mut self, e: &Event) -> bool {
        if !self.pos.advance(e.seq) {
            return false;
        }
        if !self.filter.wants(e) {
            return false;
        }
        counter!(EVENTS_DELIVERED_TOTAL).increment(1);
        true
    }

    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Item> {
        if let Some(r) = self.ended {
            return Poll::Ready(Item::End(r));
        }
        if self.draining.as_mut().poll(cx).is_ready() {
            return Poll::Ready(self.end("draining"));
        }
        if self.access.as_mut().poll(cx).is_ready() {
            return Poll::Ready(self.end(self.sub.access.reason()));
        }
        if let Some((at, reason)) = &mut self.expires
            && at.as_mut().poll(cx).is_ready()
        {
            let reason = *reason;
            return Poll::Ready(self.end(reason));
        }
        loop {
            // 1. what the log gave
            if let Some(e) = self.from_log.pop_front() {
                if self.pass(&e) {
                    return Poll::Ready(Item::Event(Arc::new(e)));
                }
                continue;
            }
            // 2. the log still owes events before `upto`
            if let Some((after, upto)) = self.pos.owed() {
                let fetch = self.fetch.get_or_insert_with(|| {
                    let (db, account) = (self.db.clone(), self.account_id);
                    tokio::spawn(async move { read(&db, account, after, upto, PAGE).await })
                });
                match Pin::new(fetch).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => {
                        self.fetch = None;
                        match r.unwrap_or_else(|e| Err(Error::internal(e))) {
                            // swept (past events.retention_hours): nothing more to read there
                            Ok(v) if v.is_empty() => self.pos.log_exhausted(),
                            Ok(v) => self.from_log.extend(v),
                            Err(_) => return Poll::Ready(self.end("unavailable")),
                        }
                        continue;
                    }
                }
            }
            // 3. a live event, once what precedes it has passed
            if let Some(e) = self.held.take() {
                if !self.pos.live(e.seq) {
                    // the log owes what comes before it
                    self.held = Some(e);
                    continue;
                }
                if self.pass(&e) {
                    return Poll::Ready(Item::Event(e));
                }
                continue;
            }
            match self.sub.poll_recv(cx) {
                Poll::Ready(Some(e)) => self.held = Some(e),
                Poll::Ready(None) => {
                    let reason = if self.sub.fell_behind() {
                        "slow_consumer"
                    } else {
                        "unavailable"
                    };
                    return Poll::Ready(self.end(reason));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Where a feed stands, without I/O: the last event it passed (sent or filtered out) and the
/// log it still owes (read after `last` up to `upto`). The feed asks it what to do; the resume
/// rules live here, tested without a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    last: i64,
    upto: i64,
}

impl Position {
    /// A feed resuming after `after` (`None`: with what comes next) on a subscription whose live
    /// events start after `from`. `after` may be ahead of `from` (this daemon has not heard of
    /// the latest events yet, its Redis notices lagging): the events up to `after` are the
    /// client's already and are not passed again when they arrive. (`after` is never beyond the
    /// account's log: `service::events::open` holds it to the log's latest id.)
    pub fn new(after: Option<i64>, from: i64) -> Position {
        Position {
            last: after.unwrap_or(from),
            upto: from,
        }
    }

    /// The range the log still owes, `(after, upto]`, if any.
    pub fn owed(&self) -> Option<(i64, i64)> {
        (self.last < self.upto).then_some((self.last, self.upto))
    }

    /// The log has nothing more before `upto` (swept past `events.retention_hours`).
    pub fn log_exhausted(&mut self) {
        self.last = self.upto;
    }

    /// An event goes by: `true` when it is new (nothing is passed twice).
    pub fn advance(&mut self, seq: i64) -> bool {
        if seq <= self.last {
            return false;
        }
        self.last = seq;
        true
    }

    /// A live event arrives: `true` when every event before it has passed; otherwise the log
    /// now owes the gap before it (events committed while the feed was catching up).
    pub fn live(&mut self, seq: i64) -> bool {
        if seq > self.last + 1 {
            self.upto = seq - 1;
            return false;
        }
        true
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(f) = &self.fetch {
            f.abort();
        }
        gauge!(EVENT_STREAMS).decrement(1.0);
        match self.ended {
            // the hub counted it when it dropped the stream
            Some("slow_consumer") => {}
            reason => counter!(EVENT_STREAMS_CLOSED_TOTAL, "reason" => reason.unwrap_or("client"))
                .increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Position;

    /// A client that has 3 on a subscription whose live events start after 7: the log owes 4 to
    /// 7, each passes once, then live events follow.
    #[test]
    fn a_resume_reads_the_log_up_to_the_live_feed_then_follows_it() {
        let mut p = Position::new(Some(3), 7);
        assert_eq!(p.owed(), Some((3, 7)));
        for seq in 4..=7 {
            assert!(p.advance(seq));
        }
        assert!(!p.advance(5), "an event read twice passes once");
        assert_eq!(p.owed(), None);
        assert!(p.live(8));
        assert!(p.advance(8));
    }

    #[test]
    fn a_new_stream_starts_with_what_comes_next() {
        let mut p = Position::new(None, 7);
        assert_eq!(p.owed(), None);
        assert!(
            !p.advance(7),
            "what was there before the stream opened is not sent"
        );
        assert!(p.live(8) && p.advance(8));
    }

    /// A live event ahead of the feed (events committed while it read the log) waits until the
    /// log has filled the gap.
    #[test]
    fn a_gap_before_a_live_event_is_read_from_the_log_first() {
        let mut p = Position::new(Some(7), 7);
        assert!(!p.live(11));
        assert_eq!(p.owed(), Some((7, 10)));
        for seq in 8..=10 {
            assert!(p.advance(seq));
        }
        assert!(p.live(11) && p.advance(11));
    }

    /// A client resuming on a daemon that lags behind (it has 9; this daemon's feed has heard of
    /// 7 only): 8 and 9 are the client's, never sent again; 10 comes once, after the log.
    #[test]
    fn a_resume_ahead_of_a_lagging_feed_repeats_nothing() {
        let mut p = Position::new(Some(9), 7);
        assert_eq!(p.owed(), None);
        for seq in 8..=9 {
            assert!(p.live(seq));
            assert!(!p.advance(seq), "{seq} is the client's already");
        }
        assert!(p.live(10) && p.advance(10));
        // or 11 arrives first: 10 is read from the log before it
        let mut p = Position::new(Some(9), 7);
        assert!(!p.live(11));
        assert_eq!(p.owed(), Some((9, 10)));
        assert!(p.advance(10));
        assert!(p.live(11) && p.advance(11));
    }

    /// A log swept past its retention owes nothing more: the feed goes on from the live events.
    #[test]
    fn a_swept_log_is_skipped() {
        let mut p = Position::new(Some(1), 100);
        p.log_exhausted();
        assert_eq!(p.owed(), None);
        assert!(p.live(101) && p.advance(101));
    }
}
