//! Commands run on the caller's instances through their agents, as typed operations
//! (`agents::commands` records them; `agents::channels` routes them to the daemon holding the
//! agent). Exec is off unless the account (`agent_exec`) and the key (`allow_exec`) allow it.

use serde::{Deserialize, Serialize};

use super::query::Bounded;
use super::{db, time};
use crate::agents::commands::{self, Command, Idempotency, NewCommand};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::state::AppState;

/// A command as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Command")]
pub struct CommandView {
    pub id: String,
    pub instance_id: String,
    #[schemars(extend("enum" = ["exec"]))]
    pub kind: String,
    pub argv: Vec<String>,
    pub timeout_s: i32,
    /// `queued` (waiting for the agent), `sent`, `running`, then one of `exited`, `timed_out`
    /// (killed at its timeout), `start_failed`, `expired` (no agent took it in time, or the
    /// instance ended), `lost` (sent, and no answer within its timeout and the grace after it).
    #[schemars(extend("enum" = ["queued", "sent", "running", "exited", "timed_out", "start_failed", "expired", "lost"]))]
    pub status: String,
    /// Its exit code, once `exited` (none when a signal ended it).
    pub exit_code: Option<i32>,
    /// Why it did not run or end by itself.
    pub error: Option<String>,
    /// The first `agents.command_output_bytes` of its stdout and stderr, as they came.
    pub output: String,
    /// All the output it produced, kept or not.
    pub output_bytes: i64,
    pub output_truncated: bool,
    /// The public id of the API key that sent it.
    pub key: String,
    pub created_at: Option<String>,
    /// A queued command no agent has taken by then is `expired`.
    pub expires_at: Option<String>,
    pub sent_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl CommandView {
    fn of(c: Command) -> CommandView {
        CommandView {
            created_at: time(Some(c.created_at)),
            expires_at: time(Some(c.expires_at)),
            sent_at: time(c.sent_at),
            started_at: time(c.started_at),
            finished_at: time(c.finished_at),
            id: c.id,
            instance_id: c.instance_id,
            kind: c.kind,
            argv: c.argv,
            timeout_s: c.timeout_s,
            status: c.status,
            exit_code: c.exit_code,
            error: c.error,
            output: c.output,
            output_bytes: c.output_bytes,
            output_truncated: c.output_truncated,
            key: c.key_public_id,
        }
    }
}

/// `GET /v1/instances/{id}/commands`'s query.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandsPage {
    /// Commands sent before this one (the previous page's `next_before`).
    #[schemars(length(min = 5, max = 64), pattern(r"^cmd_[0-9A-Za-z]+$"))]
    pub before: Option<String>,
    /// Page size, 1 to 100.
    #[schemars(extend("default" = 20))]
    pub limit: Option<Bounded<1, 100>>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CommandList {
    /// Newest first.
    pub commands: Vec<CommandView>,
    /// Pass as `before` for the next page; `null` on the last.
    pub next_before: Option<String>,
}

/// Records a command for the caller's instance (`raw`: the JSON body, a `NewCommand`) and
/// routes it to its agent: the view answers at once (`queued`); the agent's answers follow on
/// the command and on the event feed. With an `Idempotency-Key` used before for this instance
/// and body, the command it recorded, as it is now (`true`: replayed; nothing new is recorded or
/// sent); used for another, 422 `idempotency_key_reused`.
pub async fn create(
    app: &AppState,
    p: &Principal,
    instance_id: &str,
    key: Option<&str>,
    raw: &[u8],
) -> Result<(CommandView, bool)> {
    p.may_change()?;
    p.key.policy.exec(p.key.account_agent_exec)?;
    let new: NewCommand = super::body::parse(raw)?.ok_or_else(|| {
        Error::bad_request("a JSON body {\"kind\": \"exec\", \"argv\": [...]} is required")
    })?;
    if let Some(k) = key {
        crate::rentals::idempotency::check_key(k)?;
    }
    let digest = key.map(|_| {
        crate::rentals::idempotency::hash(
            &format!("POST /v1/instances/{instance_id}/commands"),
            raw,
        )
    });
    let idem = key
        .zip(digest.as_deref())
        .map(|(key, digest)| Idempotency { key, digest });
    let db = db(app, "commands")?;
    let online = app.agents.online(instance_id).await;
    let ttl = app.config.agents.command_queue_ttl_ms.get().as_secs_f64();
    let (c, replayed) = commands::create(
        &db,
        p.account_id(),
        &p.key.public_id,
        instance_id,
        &new,
        ttl,
        online,
        idem.as_ref(),
    )
    .await?;
    if !replayed {
        app.agents.route(instance_id).await;
    }
    Ok((CommandView::of(c), replayed))
}

pub async fn get(
    app: &AppState,
    p: &Principal,
    instance_id: &str,
    id: &str,
) -> Result<CommandView> {
    let c = commands::get(&*db(app, "commands")?, p.account_id(), instance_id, id).await?;
    Ok(CommandView::of(c))
}

pub async fn list(
    app: &AppState,
    p: &Principal,
    instance_id: &str,
    q: CommandsPage,
) -> Result<CommandList> {
    let n = q.limit.map_or(20, |l| l.0);
    if let Some(b) = &q.before
        && !(b.len() <= 64
            && b.strip_prefix("cmd_")
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|c| c.is_ascii_alphanumeric())))
    {
        return Err(Error::bad_request(
            "invalid `before`: a command id (`cmd_…`), as `next_before` gave it",
        ));
    }
    let list = commands::list(
        &*db(app, "commands")?,
        p.account_id(),
        instance_id,
        n,
        q.before.as_deref(),
    )
    .await?;
    let next_before = (list.len() as i64 == n)
        .then(|| list.last().map(|c| c.id.clone()))
        .flatten();
    Ok(CommandList {
        commands: list.into_iter().map(CommandView::of).collect(),
        next_before,
    })
}
