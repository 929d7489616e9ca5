//! Instances as typed operations: rent (by offer or spec), list, get, destroy, extend, bid,
//! stop and start, each over typed input with the caller's [`Principal`], answering an
//! [`InstanceView`]. Renting and destroying run under an `Idempotency-Key` when one is given
//! ([`Answer`]: the first run's answer, or its replay), whichever carrier asked.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use super::query::Limit;
use super::time;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::providers::Ssh;
use crate::rentals::failover::{TryView, tries_view};
use crate::rentals::idempotency::{self, Begin, Outcome};
use crate::rentals::ledger::{self, Event, InstanceKey, InstanceRow};
use crate::rentals::{RentBody, Rentals, Renter};
use crate::state::AppState;

/// The normalized instance a client sees.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Instance")]
pub struct InstanceView {
    pub id: String,
    pub provider: String,
    pub provider_instance_id: Option<String>,
    pub offer_id: String,
    pub gpu_model: String,
    pub gpu_count: i32,
    pub price_per_hour: f64,
    /// An intent not yet answered by the provider is, for the client, `provisioning`.
    pub status: &'static str,
    pub ssh: Option<Ssh>,
    /// What to paste into a terminal, once the provider gives host and port.
    pub ssh_command: Option<String>,
    /// How the rental's `ports` are reached from outside, once the provider maps them.
    pub endpoints: Vec<crate::providers::Endpoint>,
    pub interruptible: bool,
    pub bid_per_hour: Option<f64>,
    pub storage_per_hour: f64,
    pub image: String,
    pub disk_gb: i32,
    pub label: Option<String>,
    pub failure: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub terminated_at: Option<String>,
    /// The provider reports a state that never reaches running (destroyed after a grace).
    pub dead_state: Option<String>,
    pub expires_at: Option<String>,
    /// What the reconciler does when it is outbid (the rental's `on_interrupt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_interrupt: Option<crate::rentals::policies::OnInterrupt>,
    /// When its GPUs count as idle, and what then (the rental's `idle`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<crate::rentals::policies::IdlePolicy>,
    /// The rental an `on_interrupt: failover` made in its place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// The volume it was rented with (`POST /v1/volumes`), and where it is mounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<crate::rentals::volumes::VolumeAttach>,
    /// One instance only: its ledger events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
    /// One instance only: the SSH keys it must get, and how far each is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_keys: Option<Vec<InstanceKey>>,
    /// A rental by spec: its request id and the offers tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rental_request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<Vec<TryView>>,
    /// One open instance only: its agent (docs/agents.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentView>,
}

/// An instance's agent: whether one holds a channel now, and how to install one.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AgentView {
    pub connected: bool,
    /// The line to run on the machine (with `GPUPROXY_AGENT_TOKEN` in the environment, from
    /// `POST /v1/instances/{id}/agent-token`): for providers that start no script, and for
    /// rentals made without `agent: true`. None when this daemon installs no agent.
    pub install: Option<String>,
}

/// One ledger event of an instance.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EventView {
    pub at: Option<String>,
    pub kind: String,
    pub status: Option<String>,
    pub price_per_hour: Option<f64>,
    pub rate_per_hour: Option<f64>,
    pub detail: Option<String>,
}

impl InstanceView {
    pub fn of(r: &InstanceRow) -> InstanceView {
        InstanceView {
            id: r.id.clone(),
            provider: r.provider.clone(),
            provider_instance_id: r.provider_instance_id.clone(),
            offer_id: r.offer_id.clone(),
            gpu_model: r.gpu_model.clone(),
            gpu_count: r.gpu_count,
            price_per_hour: r.price_per_hour,
            status: r.status.shown(),
            ssh: r.ssh.clone(),
            endpoints: r.endpoints.clone(),
            ssh_command: r
                .ssh
                .as_ref()
                .map(|s| format!("ssh -p {} {}@{}", s.port, s.user, s.host)),
            interruptible: r.bid_per_hour.is_some(),
            bid_per_hour: r.bid_per_hour,
            storage_per_hour: r.storage_per_hour,
            image: r.image.clone(),
            disk_gb: r.disk_gb,
            label: r.label.clone(),
            failure: r.failure.clone(),
            created_at: time(Some(r.created_at)),
            started_at: time(r.started_at),
            terminated_at: time(r.terminated_at),
            dead_state: r.dead_reason.clone(),
            expires_at: time(r.expires_at),
            on_interrupt: r.policies.on_interrupt.clone(),
            idle: r.policies.idle.clone(),
            replaced_by: r.replaced_by.clone(),
            volume: r.volume.clone(),
            events: None,
            ssh_keys: None,
            rental_request_id: None,
            tries: None,
            agent: None,
        }
    }

    fn with_detail(mut self, events: Vec<Event>, keys: Vec<InstanceKey>) -> InstanceView {
        self.events = Some(
            events
                .into_iter()
                .map(|e| EventView {
                    at: time(Some(e.at)),
                    kind: e.kind,
                    status: e.status,
                    price_per_hour: e.price_per_hour,
                    rate_per_hour: e.rate_per_hour,
                    detail: e.detail,
                })
                .collect(),
        );
        self.ssh_keys = Some(keys);
        self
    }

    /// A rental by spec's answer and instance list the offers tried and why each was left.
    async fn with_tries(mut self, r: &Rentals, row: &InstanceRow) -> Result<InstanceView> {
        if let Some(req) = &row.rental_request_id {
            let tries = ledger::tries(r.db(), req).await?;
            self.rental_request_id = Some(req.clone());
            self.tries = Some(tries_view(&tries));
        }
        Ok(self)
    }
}

/// A page of the caller's instances, newest first.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct InstancePage {
    pub instances: Vec<InstanceView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// `GET /v1/instances` (and the MCP tool `list_instances`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInstances {
    /// Page size, 1 to 200.
    #[schemars(extend("default" = 50))]
    pub limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Cursor>,
}

crate::types::schema::schema_of!(Cursor, "Cursor", {"type": "string",
    "pattern": r"^[0-9]{1,10}(\.[0-9]{1,9})?$"});

/// A page cursor: the creation time (epoch seconds) of the last instance of the previous page,
/// between 1970 and 5138, or it is no cursor of ours.
#[derive(Debug, Clone, Copy)]
pub struct Cursor(pub f64);

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = super::query::scalar_text(d)?;
        s.parse::<f64>()
            .ok()
            .filter(|x| (0.0..1e11).contains(x))
            .map(Cursor)
            .ok_or_else(|| serde::de::Error::custom("use `next_cursor` of the previous page"))
    }
}

/// `POST /v1/instances/{id}/extend`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    #[schemars(range(min = 1, max = 8760))]
    pub hours: u32,
}

/// `PUT /v1/instances/{id}/bid`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
pub struct Bid {
    #[schemars(range(min = 0.001, max = 128))]
    pub bid_per_hour: f64,
}

/// What an idempotent operation answers: the first run's answer, or its replay (`replayed`).
/// The body is the JSON recorded for the key, so a replay is byte for byte the first answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
}

fn rentals(app: &AppState) -> Result<&Arc<Rentals>> {
    app.rentals
        .as_ref()
        .ok_or_else(|| super::needs_database("rentals"))
}

/// The caller's instances, newest first (statuses as the ledger has them; [`get`] refreshes
/// one from the provider).
pub async fn list(app: &AppState, p: &Principal, q: ListInstances) -> Result<InstancePage> {
    let limit = q.limit.map_or(50, |l| l.0);
    let rows = rentals(app)?
        .list(p.account_id(), q.cursor.map(|c| c.0), limit + 1)
        .await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    Ok(InstancePage {
        instances: page.iter().map(InstanceView::of).collect(),
        next_cursor: more
            .then(|| page.last().map(|r| r.created_at.to_string()))
            .flatten(),
    })
}

/// One instance with its events and keys, refreshed from its provider.
pub async fn get(app: &AppState, p: &Principal, id: &str) -> Result<InstanceView> {
    let r = rentals(app)?;
    let row = r.get(p.account_id(), id).await?;
    let events = ledger::events(r.db(), &row.id).await?;
    let keys = ledger::instance_keys(r.db(), &row.id).await?;
    let mut v = InstanceView::of(&row)
        .with_detail(events, keys)
        .with_tries(r, &row)
        .await?;
    if !matches!(
        row.status,
        ledger::Status::Terminated | ledger::Status::Failed
    ) {
        v.agent = Some(AgentView {
            connected: app.agents.online(&row.id).await,
            install: crate::agents::install::Installer::of(&app.config.agents)
                .ok()
                .map(|i| i.one_liner(&row.id)),
        });
    }
    Ok(v)
}

/// Rents from a JSON body (`raw`: hashed for the idempotency key as it came).
pub async fn rent(
    app: &AppState,
    p: &Principal,
    key: Option<String>,
    raw: &[u8],
) -> Result<Answer> {
    let r = rentals(app)?.clone();
    let b: RentBody =
        super::body::parse(raw)?.ok_or_else(|| Error::bad_request("a JSON body is required"))?;
    let who = Renter::of(p);
    // the key is bound to this rental's id before anything runs: a retry that finds the run
    // died, or its outcome unknown, asks what became of it before renting anything
    let id = crate::rentals::new_id();
    let (subject, key_name) = (id.clone(), key.clone());
    idempotent(
        app,
        p,
        key,
        "POST /v1/instances",
        raw,
        Some(&subject),
        move |before| async move {
            if let Some(old) = before {
                if let Some(row) = r.resume(who.account_id, &old).await? {
                    let v = InstanceView::of(&row).with_tries(&r, &row).await?;
                    return Ok((201, v));
                }
                if let Some(k) = &key_name {
                    idempotency::rebind(r.db(), who.account_id, k, &id).await?;
                }
            }
            let row = r.rent_as(who, &b, &id).await?;
            let v = InstanceView::of(&row).with_tries(&r, &row).await?;
            Ok((201, v))
        },
    )
    .await
}

/// Destroys one instance.
pub async fn destroy(
    app: &AppState,
    p: &Principal,
    id: &str,
    key: Option<String>,
) -> Result<Answer> {
    let request = format!("DELETE /v1/instances/{id}");
    change(
        app,
        p,
        key,
        &request,
        b"",
        id,
        |r, who: Renter, id| async move { r.destroy(who.account_id, &id).await },
    )
    .await
}

/// Moves the expiry by `hours` (on io.net, buys them), under the caller's `Idempotency-Key`
/// when it has one: a retry after a lost answer replays it instead of buying the hours again.
pub async fn extend(
    app: &AppState,
    p: &Principal,
    id: &str,
    b: Extend,
    key: Option<String>,
) -> Result<Answer> {
    let request = format!("POST /v1/instances/{id}/extend");
    let body = format!("{{\"hours\":{}}}", b.hours);
    change(
        app,
        p,
        key,
        &request,
        body.as_bytes(),
        id,
        move |r, who, id| async move { r.extend(who, &id, b.hours).await },
    )
    .await
}

/// Stops (`running: false`) or starts an instance, under the caller's `Idempotency-Key` when it
/// has one.
pub async fn set_running(
    app: &AppState,
    p: &Principal,
    id: &str,
    running: bool,
    key: Option<String>,
) -> Result<Answer> {
    let what = if running { "start" } else { "stop" };
    let request = format!("POST /v1/instances/{id}/{what}");
    change(
        app,
        p,
        key,
        &request,
        b"",
        id,
        move |r, who, id| async move { r.set_running(who, &id, running).await },
    )
    .await
}

/// Changes a bid instance's bid, under the caller's `Idempotency-Key` when it has one.
pub async fn set_bid(
    app: &AppState,
    p: &Principal,
    id: &str,
    b: Bid,
    key: Option<String>,
) -> Result<Answer> {
    let request = format!("PUT /v1/instances/{id}/bid");
    let body = format!("{{\"bid_per_hour\":{}}}", b.bid_per_hour);
    change(
        app,
        p,
        key,
        &request,
        body.as_bytes(),
        id,
        move |r, who, id| async move { r.set_bid(who, &id, b.bid_per_hour).await },
    )
    .await
}

/// One change of the caller's instance `id` (`f` with the rentals, the caller (account and
/// key: the key pays for what it does) and the id), under the caller's `Idempotency-Key` (`request` and `body` are what the key is bound
/// to); answers the instance.
async fn change<F, Fut>(
    app: &AppState,
    p: &Principal,
    key: Option<String>,
    request: &str,
    body: &[u8],
    id: &str,
    f: F,
) -> Result<Answer>
where
    F: FnOnce(Arc<Rentals>, Renter, String) -> Fut,
    Fut: Future<Output = Result<InstanceRow>> + Send + 'static,
{
    let who = Renter::of(p);
    let op = f(rentals(app)?.clone(), who, id.to_owned());
    idempotent(app, p, key, request, body, None, |_| async move {
        Ok((200, InstanceView::of(&op.await?)))
    })
    .await
}

/// An error as the body a replay gives back.
fn error_body(e: &Error) -> String {
    serde_json::json!({"error": {"code": e.kind.code(), "message": e.message, "details": e.details}})
        .to_string()
}

/// Runs `op` under the caller's `Idempotency-Key`, when it has one: in a task of its own that
/// records the answer whatever becomes of the request (`rentals::idempotency`). `subject`: what
/// the key is bound to before the run (a rental's id); `op` is given the subject of an earlier
/// run whose outcome is not known, to resolve first.
async fn idempotent<O, F>(
    app: &AppState,
    p: &Principal,
    key: Option<String>,
    request: &str,
    body: &[u8],
    subject: Option<&str>,
    op: O,
) -> Result<Answer>
where
    O: FnOnce(Option<String>) -> F,
    F: Future<Output = Result<(u16, InstanceView)>> + Send + 'static,
{
    let text = |v: &InstanceView| serde_json::to_string(v).map_err(Error::internal);
    let Some(key) = key else {
        let (status, v) = op(None).await?;
        return Ok(Answer {
            status,
            body: text(&v)?,
            replayed: false,
        });
    };
    idempotency::check_key(&key)?;
    let r = rentals(app)?;
    let cfg = &app.config.rentals;
    let account = p.account_id();
    let digest = idempotency::hash(request, body);
    let claim = idempotency::Request {
        account_id: account,
        key: &key,
        request,
        digest: &digest,
        subject,
    };
    match r.idempotency().begin(r.db(), cfg, &claim).await? {
        Begin::Replay { status, body } => Ok(Answer {
            status,
            body,
            replayed: true,
        }),
        Begin::Run { before } => {
            // the error itself comes back through a slot: the task keeps only what it records
            let failure = Arc::new(std::sync::Mutex::new(None));
            let slot = failure.clone();
            let op = op(before);
            let op = async move {
                let run = match op.await {
                    Ok((status, v)) => text(&v).map(|body| (status, body)),
                    Err(e) => Err(e),
                };
                match run {
                    Ok((status, body)) => Outcome {
                        status,
                        body,
                        outcome_unknown: false,
                    },
                    Err(e) => {
                        let out = Outcome {
                            status: e.kind.status().as_u16(),
                            body: error_body(&e),
                            // kept for replay: a change the provider may have made (an
                            // `outcome: "unknown"` answer); a refusal runs again on a retry
                            outcome_unknown: e
                                .details
                                .as_ref()
                                .is_some_and(|d| d.get("outcome").is_some_and(|o| o == "unknown")),
                        };
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        out
                    }
                }
            };
            let out = r
                .idempotency()
                .run(r.db().clone(), cfg, account, key.clone(), op)
                .await?;
            if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(e);
            }
            Ok(Answer {
                status: out.status,
                body: out.body,
                replayed: false,
            })
        }
    }
}
