//! Commands run through instance agents (`agent_commands`, migration 0025; docs/agents.md).
//!
//! A command is recorded here first, in the transaction that writes its audit event
//! (`command.created`, naming the key that sent it), so nothing depends on the agent being
//! connected, or on the daemon that took it staying up:
//!
//! - `queued` until the daemon holding the agent's channel claims it (`claim`: `sent`), at once
//!   when it is told (`channels`), or at the agent's next hello, or at the next sweep. A claimed
//!   command that was never written to the channel goes back to `queued` (`requeue`).
//! - The agent answers `started` (`running`), `output` pieces (the first
//!   `agents.command_output_bytes` kept, all counted, each kept piece a `command.output` event),
//!   and `finished` (`exited`, `timed_out`, `start_failed`; `command.finished`). An answer is
//!   taken from any channel of the instance: an agent that reconnected reports what ran meanwhile.
//! - The sweep (`sweep`) ends what nobody will answer: `expired` (queued past its
//!   `expires_at`, or its instance ended), `lost` (sent, and no answer within its timeout and
//!   `agents.command_grace_ms`). Exec is at most once: a command whose delivery is uncertain is
//!   never sent again.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::{Error, Kind, Result, Side};
use crate::events::{COMMAND_CREATED, COMMAND_FINISHED, COMMAND_OUTPUT};

/// Arguments in one command, and the bytes of one argument and of all of them.
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 4096;
const MAX_ARGV_BYTES: usize = 64 << 10;
/// Seconds a command may run, and the default.
const MAX_TIMEOUT_S: u32 = 86_400;
const DEFAULT_TIMEOUT_S: u32 = 600;

/// The statuses after which nothing changes.
pub const FINAL: [&str; 5] = ["exited", "timed_out", "start_failed", "expired", "lost"];

/// A command to run on an instance through its agent (`POST /v1/instances/{id}/commands`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewCommand")]
pub struct NewCommand {
    /// `exec`: run `argv` (no shell).
    #[schemars(extend("enum" = ["exec"]))]
    pub kind: String,
    /// The program and its arguments; the program is looked up in the agent's `PATH`.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("items" = {"type": "string", "maxLength": 4096, "pattern": r"^[^\x00]*$"}))]
    pub argv: Vec<String>,
    /// Seconds it may run before the agent kills it (`timed_out`). Default 600.
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_s: Option<u32>,
}

impl NewCommand {
    /// The timeout, checked; 400 naming the field for anything out of range.
    fn check(&self) -> Result<u32> {
        let bad =
            |field: &str, why: String| Error::bad_request(format!("invalid `{field}`: {why}"));
        if self.kind != "exec" {
            return Err(bad(
                "kind",
                format!(
                    "`exec` is the one kind, not `{}`",
                    crate::types::text::truncate(&self.kind, 32)
                ),
            ));
        }
        if self.argv.is_empty() || self.argv.len() > MAX_ARGS {
            return Err(bad("argv", format!("1 to {MAX_ARGS} arguments")));
        }
        if self.argv[0].is_empty() {
            return Err(bad("argv", "the program (the first) is empty".into()));
        }
        if let Some(i) = self
            .argv
            .iter()
            .position(|a| a.len() > MAX_ARG_BYTES || a.contains('\0'))
        {
            return Err(bad(
                "argv",
                format!("argument {i}: at most {MAX_ARG_BYTES} bytes, without NUL"),
            ));
        }
        if self.argv.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES {
            return Err(bad(
                "argv",
                format!("at most {MAX_ARGV_BYTES} bytes in all"),
            ));
        }
        match self.timeout_s {
            Some(t) if !(1..=MAX_TIMEOUT_S).contains(&t) => {
                Err(bad("timeout_s", format!("1 to {MAX_TIMEOUT_S} seconds")))
            }
            t => Ok(t.unwrap_or(DEFAULT_TIMEOUT_S)),
        }
    }
}

/// A command as recorded (times in unix seconds).
#[derive(Debug, Clone)]
pub struct Command {
    pub id: String,
    pub instance_id: String,
    pub key_public_id: String,
    pub kind: String,
    pub argv: Vec<String>,
    pub timeout_s: i32,
    pub status: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub output: String,
    pub output_bytes: i64,
    pub output_truncated: bool,
    pub created_at: f64,
    pub expires_at: f64,
    pub sent_at: Option<f64>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

const COLS: &str = "id, instance_id, key_public_id, kind, argv, timeout_s, status, exit_code, \
    error, output, output_bytes, output_truncated, extract(epoch FROM created_at)::float8, \
    extract(epoch FROM expires_at)::float8, extract(epoch FROM sent_at)::float8, \
    extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8";

fn command(r: &tokio_postgres::Row) -> Command {
    Command {
        id: r.get(0),
        instance_id: r.get(1),
        key_public_id: r.get(2),
        kind: r.get(3),
        argv: r.get(4),
        timeout_s: r.get(5),
        status: r.get(6),
        exit_code: r.get(7),
        error: r.get(8),
        output: r.get(9),
        output_bytes: r.get(10),
        output_truncated: r.get(11),
        created_at: r.get(12),
        expires_at: r.get(13),
        sent_at: r.get(14),
        started_at: r.get(15),
        finished_at: r.get(16),
    }
}

fn not_found(what: &str, id: &str) -> Error {
    Error::new(
        Kind::NotFound,
        Side::Client,
        format!("no {what} {}", crate::types::text::truncate(id, 128)),
    )
}

/// A command's `Idempotency-Key` (its form checked by the caller), and the SHA-256 of the
/// request line and body it came with.
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub digest: &'a [u8],
}

/// Records a command for the caller's open instance, with its audit event, in one transaction.
/// `agent_online`: its agent holds a channel now (only these time the routing). With an
/// `Idempotency-Key` already used for this request and body, nothing is recorded: the command
/// it recorded is the answer (`true`: replayed); used for another, 422 `idempotency_key_reused`.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    db: &Db,
    account_id: i64,
    key_public_id: &str,
    instance_id: &str,
    new: &NewCommand,
    queue_ttl_s: f64,
    agent_online: bool,
    idem: Option<&Idempotency<'_>>,
) -> Result<(Command, bool)> {
    let timeout_s = new.check()? as i32;
    let id = format!("cmd_{}", crate::accounts::apikey::random_base62(22));
    db.transaction(async |tx| {
        if let Some(i) = idem
            && let Some(c) = recorded(tx, account_id, i).await?
        {
            return Ok((c, true));
        }
        let status = tx
            .query_typed(
                "SELECT status FROM instances WHERE id = $1 AND account_id = $2 FOR SHARE",
                &[(&instance_id, Type::TEXT), (&account_id, Type::INT8)],
            )
            .await
            .map_err(crate::accounts::classify)?;
        let Some(status) = status.first().map(|r| r.get::<_, String>(0)) else {
            return Err(not_found("instance", instance_id));
        };
        if matches!(status.as_str(), "terminated" | "failed") {
            return Err(Error::refused(
                crate::error::Refusal::InstanceNotOpen,
                format!("instance {instance_id} has ended ({status}): it runs no commands"),
                None,
            ));
        }
        let (key, digest) = (idem.map(|i| i.key), idem.map(|i| i.digest));
        let rows = tx
            .query_typed(
                &format!(
                    "INSERT INTO agent_commands (id, account_id, instance_id, key_public_id, kind, \
                       argv, timeout_s, expires_at, agent_online, idempotency_key, request_digest) \
                     VALUES ($1, $2, $3, $4, 'exec', $5, $6, now() + make_interval(secs => $7), $8, \
                       $9, $10) \
                     ON CONFLICT (account_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
                       DO NOTHING \
                     RETURNING {COLS}"
                ),
                &[
                    (&id, Type::TEXT),
                    (&account_id, Type::INT8),
                    (&instance_id, Type::TEXT),
                    (&key_public_id, Type::TEXT),
                    (&new.argv, Type::TEXT_ARRAY),
                    (&timeout_s, Type::INT4),
                    (&queue_ttl_s, Type::FLOAT8),
                    (&agent_online, Type::BOOL),
                    (&key, Type::TEXT),
                    (&digest, Type::BYTEA),
                ],
            )
            .await
            .map_err(crate::accounts::classify)?;
        let Some(row) = rows.first() else {
            // a request with the same key committed first
            let c = match idem {
                Some(i) => recorded(tx, account_id, i).await?,
                None => None,
            };
            return c.map(|c| (c, true)).ok_or_else(|| {
                Error::new(Kind::Internal, Side::Internal, "the insert returned no row")
            });
        };
        let c = command(row);
        let data = json!({"command_id": c.id, "kind": c.kind, "argv": c.argv,
            "timeout_s": c.timeout_s, "key": key_public_id});
        crate::events::append(tx, account_id, COMMAND_CREATED, Some(instance_id), &data).await?;
        Ok((c, false))
    })
    .await
}

/// The command an `Idempotency-Key` recorded, if any; 422 when it came with another request.
async fn recorded(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    i: &Idempotency<'_>,
) -> Result<Option<Command>> {
    let rows = tx
        .query_typed(
            &format!(
                "SELECT {COLS}, request_digest FROM agent_commands \
                 WHERE account_id = $1 AND idempotency_key = $2"
            ),
            &[(&account_id, Type::INT8), (&i.key, Type::TEXT)],
        )
        .await
        .map_err(crate::accounts::classify)?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    if r.get::<_, Option<Vec<u8>>>(17).as_deref() != Some(i.digest) {
        return Err(Error::refused(
            crate::error::Refusal::IdempotencyKeyReused,
            "this Idempotency-Key was used for a different request or body",
            None,
        ));
    }
    Ok(Some(command(r)))
}

/// One of the caller's commands on its instance `instance_id` (404 for anything else).
pub async fn get(db: &Db, account_id: i64, instance_id: &str, id: &str) -> Result<Command> {
    db.query_opt(
        &format!(
            "SELECT {COLS} FROM agent_commands \
             WHERE id = $1 AND instance_id = $2 AND account_id = $3"
        ),
        &[
            (&id, Type::TEXT),
            (&instance_id, Type::TEXT),
            (&account_id, Type::INT8),
        ],
    )
    .await?
    .map(|r| command(&r))
    .ok_or_else(|| not_found("command", id))
}

/// The caller's latest commands on its instance (newest first), at most `limit`, before the
/// command `before` when given.
pub async fn list(
    db: &Db,
    account_id: i64,
    instance_id: &str,
    limit: i64,
    before: Option<&str>,
) -> Result<Vec<Command>> {
    let owned = db
        .query_opt(
            "SELECT 1 FROM instances WHERE id = $1 AND account_id = $2",
            &[(&instance_id, Type::TEXT), (&account_id, Type::INT8)],
        )
        .await?;
    if owned.is_none() {
        return Err(not_found("instance", instance_id));
    }
    let rows = db
        .query(
            &format!(
                "SELECT {COLS} FROM agent_commands WHERE instance_id = $1 AND account_id = $2 \
                   AND ($4::text IS NULL OR (created_at, id) < \
                     (SELECT created_at, id FROM agent_commands WHERE id = $4)) \
                 ORDER BY created_at DESC, id DESC LIMIT $3"
            ),
            &[
                (&instance_id, Type::TEXT),
                (&account_id, Type::INT8),
                (&limit, Type::INT8),
                (&before, Type::TEXT),
            ],
        )
        .await?;
    Ok(rows.iter().map(command).collect())
}

/// A command claimed for writing to the agent's channel.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub argv: Vec<String>,
    pub timeout_s: i32,
    /// Seconds since it was accepted, when its agent was connected then (for the routing metric).
    pub routed_after: Option<f64>,
}

/// Takes up to `limit` of the instance's queued commands, oldest first, as `sent` by `daemon`.
/// Concurrent claims (two daemons, an agent that moved) never take one command twice.
pub async fn claim(db: &Db, instance_id: &str, daemon: &str, limit: i64) -> Result<Vec<Claimed>> {
    let rows = db
        .query(
            "UPDATE agent_commands c SET status = 'sent', sent_at = now(), daemon = $2 \
             FROM (SELECT id FROM agent_commands WHERE instance_id = $1 AND status = 'queued' \
                   ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) q \
             WHERE c.id = q.id \
             RETURNING c.id, c.argv, c.timeout_s, c.agent_online, \
               extract(epoch FROM now() - c.created_at)::float8, c.created_at",
            &[
                (&instance_id, Type::TEXT),
                (&daemon, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    let mut claimed: Vec<(std::time::SystemTime, Claimed)> = rows
        .iter()
        .map(|r| {
            (
                r.get(5),
                Claimed {
                    id: r.get(0),
                    argv: r.get(1),
                    timeout_s: r.get(2),
                    routed_after: r.get::<_, bool>(3).then(|| r.get(4)),
                },
            )
        })
        .collect();
    claimed.sort_by_key(|c| c.0);
    Ok(claimed.into_iter().map(|c| c.1).collect())
}

/// Claimed commands that were never written to the channel go back to `queued` (the agent never
/// saw them: the next channel gets them).
pub async fn requeue(db: &Db, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    db.query(
        "UPDATE agent_commands SET status = 'queued', sent_at = NULL, daemon = NULL \
         WHERE id = ANY($1) AND status = 'sent'",
        &[(&ids, Type::TEXT_ARRAY)],
    )
    .await?;
    Ok(())
}

/// The agent started command `id` of its instance.
pub async fn started(db: &Db, instance_id: &str, id: &str) -> Result<()> {
    db.query(
        "UPDATE agent_commands SET status = 'running', started_at = now() \
         WHERE id = $1 AND instance_id = $2 AND status = 'sent'",
        &[(&id, Type::TEXT), (&instance_id, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// The longest prefix of `s` of at most `n` bytes that ends on a character boundary.
fn prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A piece of command `id`'s output: kept while the command has kept fewer than `keep` bytes
/// (then a `command.output` event with what was kept), counted always. Nothing for a command
/// that is not running on this instance.
pub async fn output(
    db: &Db,
    instance_id: &str,
    id: &str,
    stream: &str,
    data: &str,
    keep: usize,
) -> Result<()> {
    db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                "SELECT account_id, octet_length(output) FROM agent_commands \
                 WHERE id = $1 AND instance_id = $2 AND status IN ('sent', 'running') FOR UPDATE",
                &[(&id, Type::TEXT), (&instance_id, Type::TEXT)],
            )
            .await
            .map_err(crate::accounts::classify)?;
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let (account_id, kept): (i64, i32) = (row.get(0), row.get(1));
        let piece = prefix(data, keep.saturating_sub(kept as usize));
        let truncated = piece.len() < data.len();
        let total = data.len() as i64;
        tx.query_typed(
            "UPDATE agent_commands SET output = output || $2, output_bytes = output_bytes + $3, \
               output_truncated = output_truncated OR $4, \
               status = 'running', started_at = COALESCE(started_at, now()) WHERE id = $1",
            &[
                (&id, Type::TEXT),
                (&piece, Type::TEXT),
                (&total, Type::INT8),
                (&truncated, Type::BOOL),
            ],
        )
        .await
        .map_err(crate::accounts::classify)?;
        if !piece.is_empty() {
            let data = json!({"command_id": id, "stream": stream, "data": piece,
                "offset": kept, "truncated": truncated});
            crate::events::append(tx, account_id, COMMAND_OUTPUT, Some(instance_id), &data).await?;
        }
        Ok(())
    })
    .await
}

/// How a command ended, as the agent said.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub error: Option<String>,
    /// All the output it produced, when the agent forwarded only part of it.
    pub output_bytes: Option<u64>,
}

impl Outcome {
    fn status(&self) -> &'static str {
        match self {
            Outcome { error: Some(_), .. } => "start_failed",
            Outcome {
                timed_out: true, ..
            } => "timed_out",
            _ => "exited",
        }
    }
}

/// Command `id` ended (the agent's `finished`): its final status and `command.finished`.
/// Returns (status, seconds since it was accepted), or `None` when it was not waiting for an
/// answer (unknown, another instance's, already final).
pub async fn finished(
    db: &Db,
    instance_id: &str,
    id: &str,
    o: &Outcome,
) -> Result<Option<(&'static str, f64)>> {
    let status = o.status();
    db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                "UPDATE agent_commands SET status = $3, exit_code = $4, error = $5, \
                   finished_at = now(), started_at = COALESCE(started_at, now()), \
                   output_bytes = GREATEST(output_bytes, COALESCE($6, 0)), \
                   output_truncated = output_truncated OR COALESCE($6, 0) > output_bytes \
                 WHERE id = $1 AND instance_id = $2 AND status IN ('sent', 'running') \
                 RETURNING account_id, output_bytes, output_truncated, \
                   extract(epoch FROM now() - created_at)::float8",
                &[
                    (&id, Type::TEXT),
                    (&instance_id, Type::TEXT),
                    (&status, Type::TEXT),
                    (&o.exit_code, Type::INT4),
                    (&o.error, Type::TEXT),
                    (
                        &o.output_bytes.map(|b| b.min(i64::MAX as u64) as i64),
                        Type::INT8,
                    ),
                ],
            )
            .await
            .map_err(crate::accounts::classify)?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let data = json!({"command_id": id, "status": status, "exit_code": o.exit_code,
            "error": o.error, "output_bytes": r.get::<_, i64>(1),
            "output_truncated": r.get::<_, bool>(2)});
        crate::events::append(tx, r.get(0), COMMAND_FINISHED, Some(instance_id), &data).await?;
        Ok(Some((status, r.get(3))))
    })
    .await
}

/// Ends the commands nobody will answer (see the module header), each with `command.finished`;
/// returns how many ended, by status. Releases the `Idempotency-Key`s older than
/// `idempotency_ttl_s`.
pub async fn sweep(
    db: &Db,
    grace_s: f64,
    idempotency_ttl_s: f64,
) -> Result<Vec<(&'static str, u64)>> {
    db.query(
        "UPDATE agent_commands SET idempotency_key = NULL, request_digest = NULL \
         WHERE id IN (SELECT id FROM agent_commands WHERE idempotency_key IS NOT NULL \
                      AND created_at < now() - make_interval(secs => $1) LIMIT 1000)",
        &[(&idempotency_ttl_s, Type::FLOAT8)],
    )
    .await?;
    let mut ended = Vec::new();
    for (status, sql) in [
        (
            "expired",
            "UPDATE agent_commands c SET status = 'expired', finished_at = now(), \
               error = CASE WHEN i.status IN ('terminated', 'failed') \
                 THEN 'the instance ended before its agent took the command' \
                 ELSE 'no agent took the command before it expired' END \
             FROM instances i \
             WHERE i.id = c.instance_id AND c.status = 'queued' \
               AND (c.expires_at <= now() OR i.status IN ('terminated', 'failed')) \
               AND c.id IN (SELECT id FROM agent_commands WHERE status = 'queued' \
                            ORDER BY expires_at LIMIT 1000) \
             RETURNING c.id, c.account_id, c.instance_id, c.error",
        ),
        (
            "lost",
            "UPDATE agent_commands SET status = 'lost', finished_at = now(), \
               error = 'no answer from the agent within the command''s timeout and the grace after it' \
             WHERE id IN (SELECT id FROM agent_commands WHERE status IN ('sent', 'running') \
                          AND sent_at + make_interval(secs => timeout_s + $1) <= now() \
                          LIMIT 1000) \
               AND status IN ('sent', 'running') \
             RETURNING id, account_id, instance_id, error",
        ),
    ] {
        let n = db
            .transaction(async |tx| {
                let params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)] =
                    if status == "lost" {
                        &[(&grace_s, Type::FLOAT8)]
                    } else {
                        &[]
                    };
                let rows = tx
                    .query_typed(sql, params)
                    .await
                    .map_err(crate::accounts::classify)?;
                for r in &rows {
                    let (id, instance): (String, String) = (r.get(0), r.get(2));
                    let data = json!({"command_id": id, "status": status, "exit_code": null,
                        "error": r.get::<_, Option<String>>(3)});
                    crate::events::append(tx, r.get(1), COMMAND_FINISHED, Some(&instance), &data)
                        .await?;
                }
                Ok(rows.len() as u64)
            })
            .await?;
        ended.push((status, n));
    }
    Ok(ended)
}

/// Of `instances`, those with commands queued.
pub async fn queued_for(db: &Db, instances: &[String]) -> Result<Vec<String>> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    Ok(db
        .query(
            "SELECT DISTINCT instance_id FROM agent_commands \
             WHERE instance_id = ANY($1) AND status = 'queued'",
            &[(&instances, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(argv: &[&str], timeout_s: Option<u32>) -> NewCommand {
        NewCommand {
            kind: "exec".into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            timeout_s,
        }
    }

    #[test]
    fn commands_are_checked_naming_the_field() {
        assert_eq!(
            new(&["echo", "hi"], None).check().unwrap(),
            DEFAULT_TIMEOUT_S
        );
        assert_eq!(new(&["true"], Some(5)).check().unwrap(), 5);
        let long = "x".repeat(MAX_ARG_BYTES + 1);
        for (c, field) in [
            (new(&[], None), "argv"),
            (new(&[""], None), "argv"),
            (new(&["a\0b"], None), "argv"),
            (new(&["echo", &long], None), "argv"),
            (new(&["true"], Some(0)), "timeout_s"),
            (new(&["true"], Some(MAX_TIMEOUT_S + 1)), "timeout_s"),
            (
                NewCommand {
                    kind: "shell".into(),
                    ..new(&["true"], None)
                },
                "kind",
            ),
        ] {
            let e = c.check().unwrap_err();
            assert_eq!(e.kind.status(), 400);
            assert!(e.message.contains(&format!("`{field}`")), "{}", e.message);
        }
    }

    #[test]
    fn kept_output_ends_on_a_character() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("héllo", 3), "hé");
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(prefix("abc", 0), "");
    }
}
