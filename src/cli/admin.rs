//! `gpuproxyd migrate`, `gpuproxyd accounts …` and `gpuproxyd keys …`: the operator's side of
//! accounts and keys, against `DATABASE_URL` (PgBouncer is fine: every statement is unnamed).
//! Output is a table, or JSON with `--json`. Revoking and suspending also tell running daemons
//! through Redis when `REDIS_URL` is set.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::accounts::policy::PolicyFields;
use crate::accounts::store::{
    self, Account, AccountChange, AccountRef, KeyChange, KeyInfo, NewAccount, NewKeySpec,
};
use crate::accounts::{Db, migrate};
use crate::auth::admin;
use crate::cache::Redis;
use crate::config::{DatabaseConfig, Secret};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL for the migrations; defaults to MIGRATE_DATABASE_URL, then DATABASE_URL.
    /// A direct connection (not PgBouncer) is the usual choice for DDL; through PgBouncer works
    /// too (only the simple protocol is used).
    #[arg(long, value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCmd {
    /// Create an account.
    Create {
        #[arg(long)]
        name: String,
        /// Spend allowed per rolling window of rentals.budget_window_hours, USD (default 100).
        #[arg(long)]
        daily_budget_usd: Option<f64>,
        /// Spend allowed per UTC month, USD (default: none).
        #[arg(long)]
        monthly_budget_usd: Option<f64>,
        /// What the reconciler does once a budget is spent: stop (default), destroy or alert.
        #[arg(long)]
        on_budget_exhausted: Option<String>,
        /// Instances running at once (default 5).
        #[arg(long)]
        max_instances: Option<i32>,
        /// Override of ratelimit.account_per_minute for this account.
        #[arg(long)]
        rate_limit_per_minute: Option<i32>,
        #[arg(long)]
        rate_limit_burst: Option<i32>,
        #[arg(long)]
        json: bool,
    },
    /// List accounts by id.
    List {
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one account (by id or name).
    Show {
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Change an account's budgets, its policy when one is spent, or its instance limit.
    Update {
        account: String,
        #[arg(long)]
        daily_budget_usd: Option<f64>,
        /// USD per UTC month, or `none` to remove the monthly budget.
        #[arg(long, value_parser = money_or_none)]
        monthly_budget_usd: Option<MoneyOrNone>,
        /// stop, destroy or alert.
        #[arg(long)]
        on_budget_exhausted: Option<String>,
        #[arg(long)]
        max_instances: Option<i32>,
        /// true: keys with the allow-exec policy may run commands through instance agents.
        #[arg(long)]
        agent_exec: Option<bool>,
        #[arg(long)]
        json: bool,
    },
    /// Suspend an account: its keys and tokens are refused (403 account_suspended).
    Suspend {
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Make a suspended account active again.
    Resume {
        account: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create an API key; the token is printed once and cannot be shown again.
    Create {
        /// Account id or name.
        #[arg(long)]
        account: String,
        /// `user` (default), `admin`, or `read` alone (search, list, read: no change);
        /// repeatable.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Override of ratelimit.key_per_minute for this key.
        #[arg(long)]
        rate_limit_per_minute: Option<i32>,
        #[arg(long)]
        rate_limit_burst: Option<i32>,
        /// USD per rolling window the instances this key rents may spend (default: no cap).
        #[arg(long)]
        spend_limit_usd: Option<f64>,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Set (USD per window) or remove (`none`) a key's spend cap; set its policies (the ones
    /// given; `--clear-policy` removes the others first).
    Update {
        public_id: String,
        #[arg(long, value_parser = money_or_none)]
        spend_limit_usd: Option<MoneyOrNone>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Remove every policy before applying the ones given.
        #[arg(long)]
        clear_policy: bool,
        #[arg(long)]
        json: bool,
    },
    /// List an account's keys (never their secrets).
    List {
        #[arg(long)]
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its public id (the 12 characters after `gpx_`).
    Revoke {
        public_id: String,
        #[arg(long)]
        json: bool,
    },
}

/// A key's policies on the command line (`accounts::policy`).
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// No rental above this USD/h (the bid for interruptible offers).
    #[arg(long)]
    max_price_per_hour: Option<f64>,
    /// Providers the key may rent from, comma-separated.
    #[arg(long, value_delimiter = ',')]
    allowed_providers: Option<Vec<String>>,
    /// GPU models the key may rent, comma-separated (as GET /v1/offers names them).
    #[arg(long, value_delimiter = ',')]
    allowed_gpu_models: Option<Vec<String>>,
    /// Every rental by the key must end within this many hours.
    #[arg(long)]
    require_max_duration_hours: Option<f64>,
    /// Open instances the key may have rented at once.
    #[arg(long = "key-max-instances")]
    max_instances: Option<i32>,
    /// true: the key may run commands through instance agents (if its account allows them).
    #[arg(long)]
    allow_exec: Option<bool>,
}

impl PolicyArgs {
    fn given(&self) -> bool {
        self.max_price_per_hour.is_some()
            || self.allowed_providers.is_some()
            || self.allowed_gpu_models.is_some()
            || self.require_max_duration_hours.is_some()
            || self.max_instances.is_some()
            || self.allow_exec.is_some()
    }

    /// `base` with the policies given here set.
    fn over(&self, base: PolicyFields) -> PolicyFields {
        PolicyFields {
            max_price_per_hour: self.max_price_per_hour.or(base.max_price_per_hour),
            allowed_providers: self.allowed_providers.clone().or(base.allowed_providers),
            allowed_gpu_models: self.allowed_gpu_models.clone().or(base.allowed_gpu_models),
            require_max_duration_hours: self
                .require_max_duration_hours
                .or(base.require_max_duration_hours),
            max_instances: self.max_instances.or(base.max_instances),
            allow_exec: self.allow_exec.or(base.allow_exec),
        }
    }
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Account id or name.
    #[arg(long)]
    pub account: String,
    /// Start: RFC 3339 or a date (2026-12-01); default the start of the UTC month.
    #[arg(long)]
    pub from: Option<String>,
    /// End: RFC 3339 or a date; default now.
    #[arg(long)]
    pub to: Option<String>,
    /// day, instance, key, provider or instance_day.
    #[arg(long, default_value = "day")]
    pub group_by: String,
    #[arg(long)]
    pub json: bool,
    /// CSV (one row per group), as `GET /v1/usage?format=csv` writes it.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}

/// `gpuproxyd usage`: the report `GET /v1/usage` serves, for any account.
pub fn usage(a: UsageArgs) -> i32 {
    use crate::rentals::usage::{self, GroupBy, Span};
    block_on(async move {
        let db = db()?;
        let e = |e: crate::error::Error| e.message.to_string();
        let group_by = GroupBy::parse(&a.group_by)
            .ok_or("invalid `--group-by`: day, instance, key, provider or instance_day")?;
        let span = Span {
            from: a
                .from
                .as_deref()
                .map(|v| usage::parse_time("from", v))
                .transpose()
                .map_err(e)?,
            to: a
                .to
                .as_deref()
                .map(|v| usage::parse_time("to", v))
                .transpose()
                .map_err(e)?,
        };
        let account = store::get_account(&db, &AccountRef::parse(&a.account))
            .await
            .map_err(e)?;
        let r = usage::report(&db, account.id, span, group_by)
            .await
            .map_err(e)?;
        if a.json {
            print_json(&usage::ReportView::of(&account.name, &r));
            return Ok(());
        }
        if a.csv {
            print!("{}", r.to_csv());
            return Ok(());
        }
        let t = |x: f64| {
            ts(Some(
                std::time::UNIX_EPOCH + Duration::from_secs_f64(x.max(0.0)),
            ))
        };
        println!(
            "account {} ({}), {} to {}",
            account.name,
            account.id,
            t(r.from),
            t(r.to)
        );
        let mut rows: Vec<Vec<String>> = r
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.key.clone(),
                    format!("{:.4}", g.figures.usd),
                    format!("{:.3}", g.figures.gpu_hours),
                    format!("{:.3}", g.figures.instance_hours),
                ]
            })
            .collect();
        rows.push(vec![
            "TOTAL".into(),
            format!("{:.4}", r.totals.usd),
            format!("{:.3}", r.totals.gpu_hours),
            format!("{:.3}", r.totals.instance_hours),
        ]);
        let head = a.group_by.to_uppercase();
        table(&[&head, "USD", "GPU-HOURS", "INSTANCE-HOURS"], &rows);
        Ok(())
    })
}

/// A USD amount, or `none` (no limit). A type of its own: clap reads `Option<Option<_>>` as a
/// flag whose value may be left out.
#[derive(Debug, Clone, Copy)]
pub struct MoneyOrNone(Option<f64>);

fn money_or_none(s: &str) -> Result<MoneyOrNone, String> {
    if s == "none" {
        return Ok(MoneyOrNone(None));
    }
    s.parse::<f64>()
        .map(|x| MoneyOrNone(Some(x)))
        .map_err(|_| format!("`{s}` is neither a USD amount nor `none`"))
}

/// Runs a command on a small runtime of its own; returns the exit status.
/// `gpuproxyd doctor --ledger`: rows ended or destroyed on a misreading of the provider; exits 1
/// when there are any (nothing is changed).
pub fn ledger_audit(json: bool) -> i32 {
    let mut found = false;
    let code = block_on(async {
        let db = db()?;
        let a = crate::rentals::audit::ledger(&db)
            .await
            .map_err(|e| e.message.to_string())?;
        found = !a.is_clean();
        if json {
            print_json(&a);
            return Ok(());
        }
        for (what, rows) in [
            (
                "ended on a status read that found nothing (may still run and bill at the provider)",
                &a.ended_by_not_found,
            ),
            (
                "destroyed as stuck or dead after it had run",
                &a.destroyed_after_running,
            ),
        ] {
            println!("{} instance(s) {what}", rows.len());
            for s in rows {
                println!(
                    "  {}  account {}  {}:{}  {}  {}",
                    s.instance_id,
                    s.account_id,
                    s.provider,
                    s.provider_instance_id.as_deref().unwrap_or("-"),
                    s.ended_at,
                    s.event
                );
            }
        }
        Ok(())
    });
    if code == 0 && found { 1 } else { code }
}

fn block_on(f: impl Future<Output = Result<(), String>>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(f) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn env_secret(name: &str) -> Option<Secret> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

fn db() -> Result<std::sync::Arc<Db>, String> {
    let url = env_secret("DATABASE_URL").ok_or("DATABASE_URL is not set")?;
    let cfg = DatabaseConfig {
        pool_size: crate::config::nz32(2),
        acquire_timeout_ms: crate::config::Millis(5_000),
        connect_timeout_ms: crate::config::Millis(5_000),
        query_timeout_ms: crate::config::Millis(30_000),
        ..DatabaseConfig::default()
    };
    Db::new(&url, &cfg)
}

/// The daemons' Redis, configured as they are from the environment (`REDIS_URL` and the
/// `GPUPROXY_REDIS_*` keys: the key prefix names their namespace, a TLS URL may need
/// `GPUPROXY_REDIS_TLS_CA_FILE`). `None` without `REDIS_URL`; a bad URL or CA file is an error.
async fn redis() -> Result<Option<Redis>, String> {
    let Some(url) = env_secret("REDIS_URL") else {
        return Ok(None);
    };
    let sources = crate::config::Sources {
        env: std::env::vars().collect(),
        ..Default::default()
    };
    let cfg = crate::config::load_unchecked(&sources).map_err(|e| e.to_string())?;
    let r = Redis::connect(&url, &cfg.redis)?;
    // a short wait: if Redis is down the command still succeeds, and says so
    r.wait_connected(Duration::from_secs(2)).await;
    Ok(Some(r))
}

pub fn migrate(args: MigrateArgs) -> i32 {
    let url = args
        .database_url
        .or_else(|| std::env::var("MIGRATE_DATABASE_URL").ok())
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| !u.is_empty());
    let Some(url) = url else {
        eprintln!(
            "error: no database URL: pass --database-url or set MIGRATE_DATABASE_URL or DATABASE_URL"
        );
        return crate::config::EXIT_BAD_CONFIG;
    };
    block_on(async move {
        let r = migrate::run(&url).await?;
        for (v, name) in &r.applied {
            println!("applied {v:04} {name}");
        }
        println!(
            "schema up to date: {} applied now, {} already applied",
            r.applied.len(),
            r.already
        );
        Ok(())
    })
}

pub fn accounts(cmd: AccountsCmd) -> i32 {
    block_on(async move {
        let db = db()?;
        let e = |e: crate::error::Error| e.message.to_string();
        match cmd {
            AccountsCmd::Create {
                name,
                daily_budget_usd,
                monthly_budget_usd,
                on_budget_exhausted,
                max_instances,
                rate_limit_per_minute,
                rate_limit_burst,
                json,
            } => {
                let a = store::create_account(
                    &db,
                    &NewAccount {
                        name,
                        daily_budget_usd,
                        monthly_budget_usd,
                        on_budget_exhausted,
                        max_instances,
                        rate_limit_per_minute,
                        rate_limit_burst,
                    },
                )
                .await
                .map_err(e)?;
                print_accounts(&[a], json);
            }
            AccountsCmd::List { after, limit, json } => {
                let list = store::list_accounts(&db, after, limit.clamp(1, 10_000))
                    .await
                    .map_err(e)?;
                print_accounts(&list, json);
            }
            AccountsCmd::Show { account, json } => {
                let a = store::get_account(&db, &AccountRef::parse(&account))
                    .await
                    .map_err(e)?;
                print_accounts(&[a], json);
            }
            AccountsCmd::Update {
                account,
                daily_budget_usd,
                monthly_budget_usd,
                on_budget_exhausted,
                max_instances,
                agent_exec,
                json,
            } => {
                let change = AccountChange {
                    daily_budget_usd,
                    monthly_budget_usd: monthly_budget_usd.map(|m| m.0),
                    on_budget_exhausted,
                    max_instances,
                    agent_exec,
                };
                let redis = redis().await?;
                let (a, p) = admin::update_account(
                    &db,
                    None,
                    redis.as_ref(),
                    &AccountRef::parse(&account),
                    &change,
                )
                .await
                .map_err(e)?;
                if json {
                    print_json(&json!({"account": a, "propagation": p}));
                } else {
                    print_accounts(&[a], false);
                    print_propagation(&p);
                }
            }
            AccountsCmd::Suspend { account, json } => {
                set_status(&db, &account, false, json).await?;
            }
            AccountsCmd::Resume { account, json } => {
                set_status(&db, &account, true, json).await?;
            }
        }
        Ok(())
    })
}

async fn set_status(db: &Db, account: &str, active: bool, json: bool) -> Result<(), String> {
    let redis = redis().await?;
    let (a, p) = admin::set_account_status(
        db,
        None,
        redis.as_ref(),
        &AccountRef::parse(account),
        active,
    )
    .await
    .map_err(|e| e.message.to_string())?;
    if json {
        print_json(&json!({"account": a, "propagation": p}));
    } else {
        print_accounts(&[a], false);
        print_propagation(&p);
    }
    Ok(())
}

pub fn keys(cmd: KeysCmd) -> i32 {
    block_on(async move {
        let db = db()?;
        let e = |e: crate::error::Error| e.message.to_string();
        match cmd {
            KeysCmd::Create {
                account,
                scopes,
                label,
                expires_in_days,
                rate_limit_per_minute,
                rate_limit_burst,
                spend_limit_usd,
                policy,
                json,
            } => {
                let spec = NewKeySpec {
                    scopes,
                    label,
                    expires_in_days,
                    rate_limit_per_minute,
                    rate_limit_burst,
                    spend_limit_usd,
                    policy: policy.given().then(|| policy.over(PolicyFields::default())),
                };
                let (key, token) = store::create_key(&db, &AccountRef::parse(&account), &spec)
                    .await
                    .map_err(e)?;
                if json {
                    print_json(&json!({"key": key, "token": token}));
                } else {
                    print_keys(&[key], false);
                    println!("\ntoken (shown once, store it now):\n{token}");
                }
            }
            KeysCmd::Update {
                public_id,
                spend_limit_usd,
                policy,
                clear_policy,
                json,
            } => {
                let policy = if policy.given() || clear_policy {
                    let base = if clear_policy {
                        PolicyFields::default()
                    } else {
                        store::get_key(&db, &public_id).await.map_err(e)?.policy
                    };
                    Some(policy.over(base))
                } else {
                    None
                };
                let change = KeyChange {
                    spend_limit_usd: spend_limit_usd.map(|m| m.0),
                    policy,
                };
                let redis = redis().await?;
                let (key, p) = admin::update_key(&db, None, redis.as_ref(), &public_id, &change)
                    .await
                    .map_err(e)?;
                if json {
                    print_keys(&[key], true);
                } else {
                    print_keys(&[key], false);
                    print_propagation(&p);
                }
            }
            KeysCmd::List { account, json } => {
                let list = store::list_keys(&db, &AccountRef::parse(&account))
                    .await
                    .map_err(e)?;
                print_keys(&list, json);
            }
            KeysCmd::Revoke { public_id, json } => {
                if !crate::auth::apikey::is_public_id(&public_id) {
                    return Err(
                        "a key's public id is the 12 letters and digits after `gpx_`".into(),
                    );
                }
                let redis = redis().await?;
                let (key, p) = admin::revoke_key(&db, None, redis.as_ref(), &public_id)
                    .await
                    .map_err(e)?;
                if json {
                    print_json(&json!({"key": key, "propagation": p}));
                } else {
                    print_keys(&[key], false);
                    print_propagation(&p);
                }
            }
        }
        Ok(())
    })
}

fn print_json(v: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("records serialize")
    );
}

fn print_propagation(p: &admin::Propagation) {
    match (&p.propagated, &p.note) {
        (true, _) => println!("running daemons were told through Redis"),
        (false, Some(n)) => println!("note: {n}"),
        (false, None) => {}
    }
}

fn ts(t: Option<std::time::SystemTime>) -> String {
    t.map_or("-".into(), |t| {
        humantime::format_rfc3339_seconds(t).to_string()
    })
}

fn print_accounts(list: &[Account], json: bool) {
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.name.clone(),
                a.status.clone(),
                format!("{:.2}", a.daily_budget_usd),
                a.max_instances.to_string(),
                a.rate_limit_per_minute
                    .map_or("-".into(), |r| r.to_string()),
                ts(Some(a.created_at)),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "BUDGET/DAY USD",
            "MAX INSTANCES",
            "RPM",
            "CREATED",
        ],
        &rows,
    );
}

fn print_keys(list: &[KeyInfo], json: bool) {
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|k| {
            vec![
                k.public_id.clone(),
                k.account_id.to_string(),
                k.scopes.join(","),
                k.label.clone().unwrap_or_else(|| "-".into()),
                ts(Some(k.created_at)),
                ts(k.expires_at),
                ts(k.revoked_at),
                ts(k.last_used_at),
            ]
        })
        .collect();
    table(
        &[
            "PUBLIC ID",
            "ACCOUNT",
            "SCOPES",
            "LABEL",
            "CREATED",
            "EXPIRES",
            "REVOKED",
            "LAST USED",
        ],
        &rows,
    );
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    super::table::print(head, rows, usize::MAX);
}
