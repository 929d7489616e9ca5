//! The webhook sender, one per daemon: turns new events into deliveries and sends the due
//! ones, at least once.
//!
//! - Enqueue: for each enabled webhook whose account has events past its cursor, one
//!   transaction locks the webhook row (`FOR UPDATE SKIP LOCKED`: several daemons share the
//!   work, none waits on another), writes a delivery per matching event, and moves the cursor.
//! - Send: due deliveries are claimed by moving `next_attempt_at` past the attempt's time
//!   (`FOR UPDATE SKIP LOCKED` again), so a daemon that dies mid-send leaves them to another
//!   once the claim runs out: a delivery may arrive twice, never not at all. Receivers
//!   de-duplicate on `X-Gpuproxy-Delivery` (or the event id in the body).
//! - Fair shares: one webhook has at most `webhooks.max_in_flight_per_webhook` of this
//!   daemon's `webhooks.max_in_flight` attempts in flight, one account's webhooks at most
//!   `webhooks.max_in_flight_per_account`: a slow or failing receiver holds its own share, and
//!   the due deliveries of everyone else are claimed around it.
//! - Outcome: 2xx delivered; 408, 429, 5xx, connection failures and time-outs (counted against
//!   the receiver) retried after `webhooks.retry_base_ms` × 2^(attempt−1) (capped, jittered,
//!   lengthened by `Retry-After`) up to `webhooks.max_attempts`; other answers (other 4xx, 3xx:
//!   redirects are not followed) and refused targets are final. A webhook failing for
//!   `webhooks.disable_after_ms` (24 h) with `webhooks.disable_after_failures` failed attempts
//!   in a row is disabled, with a `webhook.disabled` event in its account's log; an outage of
//!   minutes is retried through.
//! - Wakes when this daemon commits events or hears of them ([`Hub::activity`]); otherwise
//!   every `webhooks.poll_interval_ms`.
//!
//! [`Hub::activity`]: crate::events::hub::Hub::activity

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_postgres::types::Type;

use super::{sign, target};
use crate::accounts::Db;
use crate::config::WebhooksConfig;
use crate::error::Result;
use crate::metrics::{WEBHOOK_ATTEMPTS_TOTAL, WEBHOOKS_DISABLED_TOTAL};

/// Events turned into deliveries per webhook and round.
const ENQUEUE_BATCH: i64 = 500;
/// Webhooks looked at per round (the next round takes the rest).
const WEBHOOKS_PER_ROUND: i64 = 200;

pub struct Sender {
    db: Arc<Db>,
    cfg: WebhooksConfig,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    /// This daemon's attempts in flight, per webhook and per account (the fair shares).
    busy: Mutex<Busy>,
    tls: tokio_rustls::TlsConnector,
}

#[derive(Default)]
struct Busy {
    webhooks: HashMap<String, i32>,
    accounts: HashMap<i64, i32>,
}

impl Busy {
    fn add(&mut self, webhook: &str, account: i64, n: i32) {
        let w = self.webhooks.entry(webhook.to_owned()).or_default();
        *w += n;
        if *w <= 0 {
            self.webhooks.remove(webhook);
        }
        let a = self.accounts.entry(account).or_default();
        *a += n;
        if *a <= 0 {
            self.accounts.remove(&account);
        }
    }
}

/// A claimed delivery.
struct Claimed {
    id: i64,
    webhook_id: String,
    account_id: i64,
    event_type: String,
    payload: String,
    /// This attempt's number, from 1.
    attempt: i32,
    url: String,
    secret: String,
}

/// How one attempt went.
#[derive(Debug, PartialEq)]
enum Verdict {
    Delivered,
    Retry { after: Option<Duration> },
    Final,
}

struct Outcome {
    verdict: Verdict,
    status: Option<u16>,
    error: Option<String>,
}

impl Outcome {
    fn failed(verdict: Verdict, error: impl Into<String>) -> Outcome {
        Outcome {
            verdict,
            status: None,
            error: Some(error.into()),
        }
    }
}

impl Sender {
    pub fn new(db: Arc<Db>, cfg: &WebhooksConfig, wake: Arc<Notify>) -> Arc<Sender> {
        let mut tls = crate::providers::http::tls_client_config();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(Sender {
            db,
            cfg: cfg.clone(),
            wake,
            slots: Arc::new(Semaphore::new(cfg.max_in_flight.get() as usize)),
            busy: Mutex::new(Busy::default()),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }

    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(self: Arc<Self>) {
        let every = self.cfg.poll_interval_ms.get();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.enqueue().await {
                tracing::debug!(error = %e, "webhook enqueue failed; the next round retries");
            }
            if self.cfg.paused {
                continue;
            }
            if let Err(e) = self.send_due().await {
                tracing::debug!(error = %e, "webhook send round failed; the next round retries");
            }
            if let Err(e) = self.probe_disabled().await {
                tracing::debug!(error = %e, "webhook probe round failed; the next round retries");
            }
        }
    }

    /// Turns the events past each webhook's cursor into deliveries.
    async fn enqueue(&self) -> Result<()> {
        let behind = self
            .db
            .query(
                "SELECT w.id FROM webhooks w JOIN accounts a ON a.id = w.account_id \
                 WHERE w.enabled AND a.event_seq > w.cursor LIMIT $1",
                &[(&WEBHOOKS_PER_ROUND, Type::INT8)],
            )
            .await?;
        for r in behind {
            let id: String = r.get(0);
            let more = self
                .db
                .transaction(async |tx| {
                    let Some(w) = tx
                        .query_typed(
                            "SELECT account_id, cursor, types FROM webhooks \
                             WHERE id = $1 AND enabled FOR UPDATE SKIP LOCKED",
                            &[(&id, Type::TEXT)],
                        )
                        .await
                        .map_err(crate::accounts::classify)?
                        .into_iter()
                        .next()
                    else {
                        return Ok(false);
                    };
                    let (account, cursor, types): (i64, i64, Vec<String>) =
                        (w.get(0), w.get(1), w.get(2));
                    let events = super::super::read_in(tx, account, cursor, ENQUEUE_BATCH).await?;
                    let Some(last) = events.last().map(|e| e.seq) else {
                        // behind, and nothing to read: the events were swept (past
                        // events.retention_hours) before they were enqueued; the cursor moves
                        // past them, or the webhook would come back as behind every round
                        tx.query_typed(
                            "UPDATE webhooks w SET cursor = a.event_seq FROM accounts a \
                             WHERE w.id = $1 AND a.id = w.account_id AND w.cursor = $2",
                            &[(&id, Type::TEXT), (&cursor, Type::INT8)],
                        )
                        .await
                        .map_err(crate::accounts::classify)?;
                        return Ok(false);
                    };
                    let wanted: Vec<_> = events
                        .iter()
                        .filter(|e| types.is_empty() || types.contains(&e.kind))
                        .collect();
                    let seqs: Vec<i64> = wanted.iter().map(|e| e.seq).collect();
                    let kinds: Vec<&str> = wanted.iter().map(|e| e.kind.as_str()).collect();
                    let bodies: Vec<String> =
                        wanted.iter().map(|e| e.to_json().to_string()).collect();
                    tx.query_typed(
                        "INSERT INTO webhook_deliveries (webhook_id, event_seq, event_type, payload) \
                         SELECT $1, s, k, p FROM unnest($2::int8[], $3::text[], $4::text[]) AS x(s, k, p) \
                         ON CONFLICT (webhook_id, event_seq) DO NOTHING",
                        &[
                            (&id, Type::TEXT),
                            (&seqs, Type::INT8_ARRAY),
                            (&kinds, Type::TEXT_ARRAY),
                            (&bodies, Type::TEXT_ARRAY),
                        ],
                    )
                    .await
                    .map_err(crate::accounts::classify)?;
                    tx.query_typed(
                        "UPDATE webhooks SET cursor = $2 WHERE id = $1",
                        &[(&id, Type::TEXT), (&last, Type::INT8)],
                    )
                    .await
                    .map_err(crate::accounts::classify)?;
                    Ok(events.len() as i64 == ENQUEUE_BATCH)
                })
                .await?;
            if more {
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Claims the due deliveries this daemon has room for and sends each in its own task.
    async fn send_due(self: &Arc<Self>) -> Result<()> {
        let room = self.slots.available_permits() as i64;
        if room == 0 {
            return Ok(());
        }
        // the claim outlives the attempt: connect, TLS and the answer, with room to record it
        let claim = (self.cfg.timeout_ms.get() * 2 + Duration::from_secs(5)).as_secs_f64();
        let (hooks, hook_busy, accounts, account_busy) = {
            let b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            let (h, hb): (Vec<String>, Vec<i32>) =
                b.webhooks.iter().map(|(k, v)| (k.clone(), *v)).unzip();
            let (a, ab): (Vec<i64>, Vec<i32>) = b.accounts.iter().map(|(k, v)| (*k, *v)).unzip();
            (h, hb, a, ab)
        };
        let per_hook = self.cfg.max_in_flight_per_webhook.get() as i64;
        let per_account = self.cfg.max_in_flight_per_account.get() as i64;
        // the oldest due deliveries, at most each webhook's and account's share left of what is
        // in flight here (the ranking reads without locks; the rows are then locked, skipping
        // any another daemon holds)
        let rows = self
            .db
            .query(
                "UPDATE webhook_deliveries d \
                 SET next_attempt_at = now() + make_interval(secs => $2), attempts = d.attempts + 1 \
                 FROM webhooks w \
                 WHERE w.id = d.webhook_id AND d.id IN ( \
                   SELECT l.id FROM webhook_deliveries l WHERE l.id IN ( \
                     SELECT c.id FROM ( \
                       SELECT d2.id, d2.next_attempt_at, \
                         row_number() OVER (PARTITION BY d2.webhook_id \
                           ORDER BY d2.next_attempt_at, d2.id) + coalesce(hb.n, 0) AS hook_rank, \
                         row_number() OVER (PARTITION BY w2.account_id \
                           ORDER BY d2.next_attempt_at, d2.id) + coalesce(ab.n, 0) AS account_rank \
                       FROM webhook_deliveries d2 JOIN webhooks w2 ON w2.id = d2.webhook_id \
                       LEFT JOIN unnest($3::text[], $4::int4[]) AS hb(id, n) ON hb.id = d2.webhook_id \
                       LEFT JOIN unnest($5::int8[], $6::int4[]) AS ab(id, n) ON ab.id = w2.account_id \
                       WHERE d2.state = 'pending' AND d2.next_attempt_at <= now() AND w2.enabled) c \
                     WHERE c.hook_rank <= $7 AND c.account_rank <= $8 \
                     ORDER BY c.next_attempt_at LIMIT $1) \
                   FOR UPDATE OF l SKIP LOCKED) \
                 RETURNING d.id, d.webhook_id, d.event_type, d.payload, d.attempts, w.url, w.secret, \
                   w.account_id",
                &[
                    (&room, Type::INT8),
                    (&claim, Type::FLOAT8),
                    (&hooks, Type::TEXT_ARRAY),
                    (&hook_busy, Type::INT4_ARRAY),
                    (&accounts, Type::INT8_ARRAY),
                    (&account_busy, Type::INT4_ARRAY),
                    (&per_hook, Type::INT8),
                    (&per_account, Type::INT8),
                ],
            )
            .await?;
        self.launch(rows);
        Ok(())
    }

    /// Sends each webhook disabled for failing (not by its owner: it has no such switch) its
    /// oldest pending delivery, once per `webhooks.probe_interval_ms` (the claim moves that
    /// delivery's next attempt a whole interval on, across daemons); a 2xx enables it again
    /// (`record`).
    async fn probe_disabled(self: &Arc<Self>) -> Result<()> {
        let every = self.cfg.probe_interval_ms.get();
        if every.is_zero() || self.slots.available_permits() == 0 {
            return Ok(());
        }
        let rows = self
            .db
            .query(
                "UPDATE webhook_deliveries d \
                 SET next_attempt_at = now() + make_interval(secs => $1), attempts = d.attempts + 1 \
                 FROM webhooks w \
                 WHERE w.id = d.webhook_id AND d.id IN ( \
                   SELECT l.id FROM webhook_deliveries l WHERE l.id IN ( \
                     SELECT DISTINCT ON (d2.webhook_id) d2.id \
                     FROM webhook_deliveries d2 JOIN webhooks w2 ON w2.id = d2.webhook_id \
                     WHERE d2.state = 'pending' AND d2.next_attempt_at <= now() \
                       AND NOT w2.enabled AND w2.failing_since IS NOT NULL \
                     ORDER BY d2.webhook_id, d2.event_seq LIMIT 20) \
                   FOR UPDATE OF l SKIP LOCKED) \
                 RETURNING d.id, d.webhook_id, d.event_type, d.payload, d.attempts, w.url, w.secret, \
                   w.account_id",
                &[(&every.as_secs_f64(), Type::FLOAT8)],
            )
            .await?;
        self.launch(rows);
        Ok(())
    }

    /// Sends each claimed delivery (the claim's rows: id, webhook, event type, payload,
    /// attempt, URL, secret, account) in a task of its own, holding a send slot and its
    /// webhook's and account's share while it runs; a freed share wakes the sender.
    fn launch(self: &Arc<Self>, rows: Vec<tokio_postgres::Row>) {
        for r in rows {
            let d = Claimed {
                id: r.get(0),
                webhook_id: r.get(1),
                event_type: r.get(2),
                payload: r.get(3),
                attempt: r.get(4),
                url: r.get(5),
                secret: r.get(6),
                account_id: r.get(7),
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                // cannot happen (the room was counted); the claim runs out and it goes later
                break;
            };
            self.busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(&d.webhook_id, d.account_id, 1);
            let me = self.clone();
            tokio::spawn(async move {
                let outcome = me.attempt(&d).await;
                if let Err(e) = me.record(&d, &outcome).await {
                    tracing::warn!(delivery = d.id, error = %e, "could not record a webhook attempt; it is sent again when its claim runs out");
                }
                me.busy.lock().unwrap_or_else(|p| p.into_inner()).add(
                    &d.webhook_id,
                    d.account_id,
                    -1,
                );
                drop(slot);
                me.wake.notify_one();
            });
        }
    }

    /// One attempt, within `webhooks.timeout_ms` as a whole.
    async fn attempt(&self, d: &Claimed) -> Outcome {
        let t = match target::parse(&d.url) {
            Ok(t) => t,
            Err(e) => return Outcome::failed(Verdict::Final, format!("invalid URL: {e}")),
        };
        match tokio::time::timeout(self.cfg.timeout_ms.get(), self.exchange(&t, d)).await {
            Ok(o) => o,
            Err(_) => Outcome::failed(
                Verdict::Retry { after: None },
                format!("no answer within {} ms", self.cfg.timeout_ms.ms()),
            ),
        }
    }

    async fn exchange(&self, t: &target::Target, d: &Claimed) -> Outcome {
        let addrs = match target::lookup(t).await {
            Ok(a) => a,
            Err(e) => return Outcome::failed(Verdict::Retry { after: None }, e),
        };
        if let Err(e) = target::check(t, &addrs, self.cfg.allow_private_targets) {
            return Outcome::failed(Verdict::Final, e);
        }
        let tcp = match connect(&addrs).await {
            Ok(s) => s,
            Err(e) => return Outcome::failed(Verdict::Retry { after: None }, e),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let req = Request::post(t.path_and_query.as_str())
            .header(hyper::header::HOST, t.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("gpuproxyd-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-gpuproxy-event", d.event_type.as_str())
            .header("x-gpuproxy-delivery", d.id.to_string())
            .header(
                sign::HEADER,
                sign::signature(&d.secret, now, d.payload.as_bytes()),
            )
            .body(Full::new(Bytes::from(d.payload.clone())));
        let Ok(req) = req else {
            return Outcome::failed(Verdict::Final, "the URL does not make a valid request");
        };
        let answer = if t.https {
            let Ok(name) = rustls_pki_types::ServerName::try_from(t.host.clone()) else {
                return Outcome::failed(Verdict::Final, "the host is not a valid TLS name");
            };
            match self.tls.connect(name, tcp).await {
                Ok(tls) => send(tls, req).await,
                Err(e) => {
                    return Outcome::failed(Verdict::Retry { after: None }, format!("TLS: {e}"));
                }
            }
        } else {
            send(tcp, req).await
        };
        match answer {
            Ok((status, retry_after)) => judge(status, retry_after),
            Err(e) => Outcome::failed(Verdict::Retry { after: None }, e),
        }
    }

    /// Records the attempt in the delivery log and the webhook's failure count.
    async fn record(&self, d: &Claimed, o: &Outcome) -> Result<()> {
        let max = self.cfg.max_attempts.get() as i32;
        let (state, wait, result) = match o.verdict {
            Verdict::Delivered => ("delivered", Duration::ZERO, "delivered"),
            Verdict::Retry { after } if d.attempt < max => {
                ("pending", self.backoff(d.attempt, after), "retry")
            }
            _ => ("failed", Duration::ZERO, "failed"),
        };
        counter!(WEBHOOK_ATTEMPTS_TOTAL, "result" => result).increment(1);
        let ok = o.verdict == Verdict::Delivered;
        let status = o.status.map(i32::from);
        let threshold = self.cfg.disable_after_failures.get() as i32;
        let after = self.cfg.disable_after_ms.get().as_secs_f64();
        let reason = format!(
            "failing since {{since}} ({threshold} failed attempts in a row and {} s without a \
             success: webhooks.disable_after_failures, webhooks.disable_after_ms)",
            after
        );
        // one transaction, the webhook row locked first: concurrent attempts of one webhook
        // record one after the other, so exactly one sees it go from enabled to disabled (or
        // back), and the webhook.disabled event commits with the change
        let changed = self
            .db
            .transaction(async |tx| {
                let was: Option<bool> = tx
                    .query_typed(
                        "SELECT w.enabled FROM webhooks w JOIN webhook_deliveries d \
                         ON d.webhook_id = w.id WHERE d.id = $1 FOR UPDATE OF w",
                        &[(&d.id, Type::INT8)],
                    )
                    .await
                    .map_err(crate::accounts::classify)?
                    .first()
                    .map(|r| r.get(0));
                let rows = tx
                    .query_typed(
                        "WITH d AS ( \
                           UPDATE webhook_deliveries SET state = $2, \
                             next_attempt_at = now() + make_interval(secs => $3), \
                             last_attempt_at = now(), last_status = $4, last_error = $5, \
                             history = history || jsonb_build_array(jsonb_build_object( \
                               'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                               'attempt', attempts, 'status', $4, 'error', $5)) \
                           WHERE id = $1 RETURNING webhook_id) \
                         UPDATE webhooks w SET \
                           consecutive_failures = CASE WHEN $6 THEN 0 ELSE w.consecutive_failures + 1 END, \
                           failing_since = CASE WHEN $6 THEN NULL ELSE coalesce(w.failing_since, now()) END, \
                           enabled = $6 OR (w.enabled AND (w.consecutive_failures + 1 < $7 \
                             OR coalesce(w.failing_since, now()) > now() - make_interval(secs => $9))), \
                           disabled_reason = CASE WHEN w.enabled AND NOT $6 AND w.consecutive_failures + 1 >= $7 \
                               AND coalesce(w.failing_since, now()) <= now() - make_interval(secs => $9) \
                             THEN replace($8, '{since}', to_char(coalesce(w.failing_since, now()) AT TIME ZONE 'UTC', \
                               'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')) \
                             WHEN $6 THEN NULL ELSE w.disabled_reason END \
                         FROM d WHERE w.id = d.webhook_id \
                         RETURNING w.enabled, w.account_id, w.disabled_reason",
                        &[
                            (&d.id, Type::INT8),
                            (&state, Type::TEXT),
                            (&wait.as_secs_f64(), Type::FLOAT8),
                            (&status, Type::INT4),
                            (&o.error, Type::TEXT),
                            (&ok, Type::BOOL),
                            (&threshold, Type::INT4),
                            (&reason, Type::TEXT),
                            (&after, Type::FLOAT8),
                        ],
                    )
                    .await
                    .map_err(crate::accounts::classify)?;
                let Some((now, account, why)) = rows
                    .first()
                    .map(|r| (r.get::<_, bool>(0), r.get::<_, i64>(1), r.get::<_, Option<String>>(2)))
                else {
                    return Ok(None);
                };
                if was == Some(true) && !now {
                    let data = serde_json::json!({"webhook_id": d.webhook_id, "reason": why});
                    crate::events::append(tx, account, crate::events::WEBHOOK_DISABLED, None, &data)
                        .await?;
                }
                Ok(was.map(|was| (was, now, account, why)))
            })
            .await?;
        match changed {
            Some((false, true, _, _)) => {
                tracing::info!(webhook = %d.webhook_id, "webhook answered again: enabled");
            }
            Some((true, false, account, why)) => {
                counter!(WEBHOOKS_DISABLED_TOTAL).increment(1);
                tracing::warn!(webhook = %d.webhook_id, account, reason = ?why, "webhook disabled");
            }
            _ => {}
        }
        tracing::debug!(delivery = d.id, webhook = %d.webhook_id, attempt = d.attempt, result, status = ?o.status, error = ?o.error, "webhook attempt");
        Ok(())
    }

    /// The wait before attempt `attempt + 1`: doubling from `retry_base_ms`, at most
    /// `retry_max_ms`, drawn between half and all of it; at least the receiver's `Retry-After`.
    fn backoff(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let base = self.cfg.retry_base_ms.get();
        let max = self.cfg.retry_max_ms.get();
        let full = base
            .checked_mul(1u32 << (attempt - 1).clamp(0, 20))
            .unwrap_or(max)
            .min(max);
        let jitter = getrandom::u64().unwrap_or(0) % 1000;
        let wait = full / 2 + full / 2 * jitter as u32 / 1000;
        wait.max(retry_after.unwrap_or_default()).min(max)
    }
}

async fn connect(addrs: &[SocketAddr]) -> std::result::Result<TcpStream, String> {
    let mut last = String::new();
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

/// Sends `req` on a fresh HTTP/1.1 connection; the answer's status and `Retry-After`.
async fn send<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
) -> std::result::Result<(StatusCode, Option<Duration>), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let res = tx.send_request(req).await.map_err(|e| format!("HTTP: {e}"));
    conn.abort();
    let res = res?;
    let retry_after = res
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Ok((res.status(), retry_after))
}

fn judge(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    let verdict = if status.is_success() {
        Verdict::Delivered
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Verdict::Retry { after: retry_after }
    } else {
        Verdict::Final
    };
    let error = match verdict {
        Verdict::Delivered => None,
        _ if status.is_redirection() => Some(format!("{status}: redirects are not followed")),
        _ => Some(format!("the receiver answered {status}")),
    };
    Outcome {
        verdict,
        status: Some(status.as_u16()),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_like_the_docs_say() {
        let v = |s: u16| judge(StatusCode::from_u16(s).unwrap(), None).verdict;
        assert_eq!(v(200), Verdict::Delivered);
        assert_eq!(v(204), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503] {
            assert!(matches!(v(s), Verdict::Retry { .. }), "{s}");
        }
        for s in [301, 302, 400, 401, 404, 410] {
            assert_eq!(v(s), Verdict::Final, "{s}");
        }
        let o = judge(StatusCode::FOUND, None);
        assert!(o.error.unwrap().contains("redirects are not followed"));
    }
}
