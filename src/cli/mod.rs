//! The command line: `serve`, `check-config`, and the account administration in `admin.rs`
//! (`migrate`, `accounts …`, `keys …`).

pub mod admin;
pub mod doctor;
pub mod table;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, EXIT_BAD_CONFIG, LogFormat, Sources};
use crate::server::{Daemon, Listeners, signals};

#[derive(Debug, Parser)]
#[command(
    name = "gpuproxyd",
    version,
    about = "Edge proxy in front of GPU-rental providers (Vast.ai, io.net)",
    long_about = "Edge proxy in front of GPU-rental providers (Vast.ai, io.net).\n\n\
Configuration layers, later wins: built-in defaults < TOML file (--config) < GPUPROXY_* \
environment (GPUPROXY_SERVER_WORKERS=4 sets server.workers) < flags. Secrets come only from the \
environment: DATABASE_URL, REDIS_URL, JWT_SECRET, VASTAI_API_KEY, IONET_API_KEY."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTPS (and optional plain HTTP) API listeners plus the metrics listener.
    ///
    /// SIGTERM/SIGINT drain and exit 0 (a second signal exits at once with 1); SIGHUP reloads the
    /// TLS certificate and key. Exits 64 on a bad configuration.
    Serve(ConfigArgs),
    /// Validate the configuration and print the effective values (secrets redacted).
    ///
    /// Exits 0 when valid, 64 with a message naming the key at fault otherwise.
    CheckConfig(ConfigArgs),
    /// Apply the database migrations (each once, under an advisory lock; safe to run from
    /// several hosts at once).
    Migrate(admin::MigrateArgs),
    /// Manage accounts (against DATABASE_URL).
    #[command(subcommand)]
    Accounts(admin::AccountsCmd),
    /// Compare this host (RLIMIT_NOFILE, kernel settings) with the shipped recommendation and the
    /// configured caps; exits 1 when the host would cap the daemon below its configuration.
    /// With `--ledger`: list the ledger rows an earlier version ended on a bare 404 or destroyed
    /// as stuck or dead after they had run (against DATABASE_URL); exits 1 when there are any.
    Doctor(DoctorArgs),
    /// Manage API keys (against DATABASE_URL; revocations reach running daemons through
    /// REDIS_URL when it is set).
    #[command(subcommand)]
    Keys(admin::KeysCmd),
    /// An account's usage from the rentals ledger (USD, GPU-hours, instance-hours), as a table
    /// or JSON (against DATABASE_URL).
    Usage(admin::UsageArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Check the rentals ledger instead of the host (docs/providers.md).
    #[arg(long)]
    pub ledger: bool,
    /// With --ledger: print JSON instead of a table.
    #[arg(long, requires = "ledger")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see config/gpuproxyd.toml for every key).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTPS listen address (server.https_listen), or "off".
    #[arg(long, value_name = "ADDR")]
    pub https_listen: Option<String>,
    /// Plain-HTTP listen address for use behind a TLS terminator (server.http_listen), or "off".
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Prometheus metrics listen address (server.metrics_listen), or "off".
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Worker threads, 0 = one per core (server.workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Log format (log.format).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Start even when connections.max does not fit RLIMIT_NOFILE, lowering the cap to what fits
    /// (connections.clamp_to_fd_limit).
    #[arg(long)]
    pub clamp_to_fd_limit: bool,
    /// Set any key: --set server.shutdown_grace_ms=5000 (repeatable, applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    pub fn sources(&self) -> Sources {
        let quoted = |key: &str, v: &Option<String>| {
            v.as_ref()
                .map(|v| format!("{key}={}", toml::Value::String(v.clone())))
        };
        let mut overrides: Vec<String> = [
            quoted("server.https_listen", &self.https_listen),
            quoted("server.http_listen", &self.http_listen),
            quoted("server.metrics_listen", &self.metrics_listen),
            self.workers.map(|w| format!("server.workers={w}")),
            self.clamp_to_fd_limit
                .then(|| "connections.clamp_to_fd_limit=true".to_string()),
            self.log_format.map(|f| {
                format!(
                    "log.format=\"{}\"",
                    match f {
                        LogFormat::Json => "json",
                        LogFormat::Text => "text",
                    }
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        overrides.extend(self.set.iter().cloned());
        Sources {
            file: self.config.clone(),
            env: std::env::vars().collect(),
            overrides,
        }
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        config::load(&self.sources())
    }
}

/// Runs the command line and returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate(a) => admin::migrate(a),
        Command::Accounts(c) => admin::accounts(c),
        Command::Keys(c) => admin::keys(c),
        Command::Usage(a) => admin::usage(a),
        Command::Doctor(args) if args.ledger => admin::ledger_audit(args.json),
        Command::Doctor(args) => match args.config.load() {
            Ok(c) => doctor::run(&c),
            Err(e) => {
                eprintln!("{e}");
                EXIT_BAD_CONFIG
            }
        },
        Command::CheckConfig(args) => match args.load() {
            Ok(c) => {
                print!("{}", c.render_redacted());
                eprintln!("configuration is valid");
                0
            }
            Err(e) => {
                eprintln!("{e}");
                EXIT_BAD_CONFIG
            }
        },
        Command::Serve(args) => {
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return EXIT_BAD_CONFIG;
                }
            };
            crate::logging::init(&config.log);
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if config.server.workers > 0 {
                rt.worker_threads(config.server.workers);
            }
            let rt = match rt.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return 1;
                }
            };
            rt.block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> i32 {
    let listeners = match Listeners::bind(&config.server).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{e}");
            return 1;
        }
    };
    let daemon = match Daemon::new(config) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("cannot start: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let shutdown = match signals::install(daemon.cert_store()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    daemon.run(listeners, shutdown).await;
    tracing::info!("stopped");
    0
}
