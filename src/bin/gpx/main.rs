//! `gpx`, the tenant's command-line tool: offers, rentals, events and usage over the daemon's
//! REST API, as one account's key. `gpx login` keeps the URL and key (mode 0600); `GPX_URL`,
//! `GPX_API_KEY` and `GPX_CACERT` override them. Errors print the server's message and exit
//! with a sysexits status: 64 a wrong command line, 77 a refused key, 65 a refused request, 69 a
//! daemon or provider that cannot answer (`client::Failure`).

mod client;
mod commands;

use clap::{CommandFactory, Parser, Subcommand};

use client::{EX_USAGE, Failure};

#[derive(Parser)]
#[command(
    name = "gpx",
    version,
    about = "GPU rentals through gpuproxyd, from the command line"
)]
struct Cli {
    /// The daemon's base URL (default: the saved login's).
    #[arg(long, global = true, env = "GPX_URL")]
    url: Option<String>,
    /// A PEM file of CA certificates to trust beside the public ones (a private CA, the demo's).
    #[arg(long, global = true, env = "GPX_CACERT")]
    cacert: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a key against the daemon and keep it (with the URL) for the next commands.
    Login {
        /// The API key (or GPX_API_KEY).
        #[arg(long, env = "GPX_API_KEY")]
        key: String,
    },
    /// Offers, cheapest first.
    Offers(commands::OffersArgs),
    /// Rent an offer, or the best offer matching a spec.
    Rent(Box<commands::RentArgs>),
    /// Your instances.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// One instance, with its history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Open an SSH session to an instance (execs `ssh`; extra arguments follow `--`).
    Ssh {
        id: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Buy more hours (io.net) or move the end of a lifetime.
    Extend {
        id: String,
        #[arg(long)]
        hours: u32,
    },
    /// Stop an instance (it keeps its disk and bills it only).
    Stop { id: String },
    /// Start a stopped instance.
    Start { id: String },
    /// Destroy an instance.
    Destroy { id: String },
    /// The account's events; `--follow` keeps reading, resuming after a disconnect.
    Events(commands::EventsArgs),
    /// Usage and spend (`--csv` for one row per instance and day).
    Usage(commands::UsageArgs),
    /// Volumes: disk on one machine that outlives instances (Vast).
    #[command(subcommand)]
    Volumes(commands::VolumesCmd),
    /// The API keys of your account (never their secrets).
    Keys {
        #[arg(long)]
        json: bool,
    },
    /// Shell completions for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => {}
        Err(Failure { code, message }) => {
            eprintln!("gpx: {message}");
            std::process::exit(code);
        }
    }
}

async fn run(cli: Cli) -> client::Outcome<()> {
    let saved = client::load();
    let url = cli
        .url
        .clone()
        .or(saved.url.clone())
        .unwrap_or_else(|| "https://localhost:8443".into());
    let cacert = cli.cacert.clone().or(saved.cacert.clone());
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "gpx", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Login { key } = &cli.command {
        let api = client::Api::new(&url, key, cacert.as_deref())?;
        let account = api.call(hyper::Method::GET, "/v1/account", None).await?;
        let path = client::save(&client::Saved {
            url: Some(url.clone()),
            api_key: Some(key.clone()),
            cacert: cacert.clone(),
        })?;
        println!(
            "logged in to {url} as account {} (saved in {})",
            account["account"]["name"]
                .as_str()
                .or(account["name"].as_str())
                .unwrap_or("?"),
            path.display()
        );
        return Ok(());
    }
    let key = std::env::var("GPX_API_KEY")
        .ok()
        .or(saved.api_key)
        .ok_or_else(|| {
            Failure::new(
                client::EX_NOPERM,
                "no API key: run `gpx login --key <key>` or set GPX_API_KEY",
            )
        })?;
    let api = client::Api::new(&url, &key, cacert.as_deref())?;
    match cli.command {
        Command::Offers(a) => commands::offers(&api, a).await,
        Command::Rent(a) => commands::rent(&api, *a).await,
        Command::Ls { json } => commands::ls(&api, json).await,
        Command::Show { id, json } => commands::show(&api, &id, json).await,
        Command::Ssh { id, args } => commands::ssh(&api, &id, &args).await,
        Command::Extend { id, hours } => commands::extend(&api, &id, hours).await,
        Command::Stop { id } => commands::change(&api, &id, "stop").await,
        Command::Start { id } => commands::change(&api, &id, "start").await,
        Command::Destroy { id } => commands::destroy(&api, &id).await,
        Command::Events(a) => commands::events(&api, a).await,
        Command::Usage(a) => commands::usage(&api, a).await,
        Command::Keys { json } => commands::keys(&api, json).await,
        Command::Volumes(c) => commands::volumes(&api, c).await,
        Command::Login { .. } | Command::Completions { .. } => Ok(()),
    }
}
