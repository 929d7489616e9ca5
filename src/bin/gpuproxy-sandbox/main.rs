//! Sandbox providers: real HTTP servers that speak the Vast.ai and io.net wire formats
//! (docs/providers.md) from a deterministic, seeded inventory, with instances that move
//! through their states over time and faults switched on at will. The tests, the local demo and
//! the load scripts point the daemon at it instead of the real providers.
//!
//! One listener per provider. Besides the provider's API, each answers:
//! - `POST /_sandbox/faults` with a JSON [`faults::Faults`] (replaces the current set),
//! - `GET /_sandbox/stats`: calls received by operation (`{"calls":{"search":3}}`),
//! - `GET /_sandbox/requests`: the latest requests (operation, method, path, decoded query, JSON
//!   body), to hold a client's requests against the provider's own client's;
//!   `POST /_sandbox/requests/clear` forgets them,
//! - `POST /_sandbox/reset`: faults off, counters and requests cleared (the inventory and
//!   instances stay).
//!
//! On start it prints one JSON line with both base URLs, so a caller that asked for port 0 can
//! read where to point the daemon: `{"vastai":"http://127.0.0.1:41234","ionet":"http://..."}`.

mod faults;
mod inventory;
mod ionet;
mod schema;
mod server;
mod vast;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "gpuproxy-sandbox",
    about = "Sandbox Vast.ai and io.net APIs for tests and demos"
)]
pub struct Args {
    /// Where the Vast.ai API listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub vast_listen: SocketAddr,
    /// Where the io.net API listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub ionet_listen: SocketAddr,
    /// Seed of the inventory (same seed, same offers).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Offers in the Vast.ai inventory.
    #[arg(long, default_value_t = 300)]
    pub vast_offers: usize,
    /// Hardware configurations in the io.net catalogue.
    #[arg(long, default_value_t = 120)]
    pub ionet_hardware: usize,
    /// The Vast.ai API key the sandbox accepts (Bearer or `?api_key=`).
    #[arg(
        long,
        env = "SANDBOX_VASTAI_API_KEY",
        default_value = "sandbox-vast-key"
    )]
    pub vast_key: String,
    /// The io.net API key the sandbox accepts (`x-api-key`).
    #[arg(
        long,
        env = "SANDBOX_IONET_API_KEY",
        default_value = "sandbox-ionet-key"
    )]
    pub ionet_key: String,
    /// How long a new instance takes to be running (half of it "loading" on Vast.ai).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub provision_time: Duration,
    /// io.net's deploy answer: `empty` (as reported live) or `id` (`{"status","deployment_id"}`).
    #[arg(long, default_value = "id")]
    pub ionet_deploy_response: String,
    /// Vast.ai's quirk (docs/providers.md, "Offers and other quirks"): create the instance, then answer 400 with
    /// `success: false` and the `new_contract` anyway.
    #[arg(long)]
    pub vast_refuse_after_create: bool,
    /// Faults to start with, as the JSON `/_sandbox/faults` takes (applies to both providers).
    #[arg(long)]
    pub faults: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let initial = match args
        .faults
        .as_deref()
        .map(serde_json::from_str::<faults::Faults>)
    {
        None => faults::Faults::default(),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("gpuproxy-sandbox: --faults: {e}");
            std::process::exit(64);
        }
    };
    let vast = Arc::new(vast::Vast::new(&args));
    // billing by state: every instance's charges settled at the rate of its state now
    let billing = vast.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            billing.settle_all();
        }
    });
    let ionet = Arc::new(ionet::Ionet::new(&args));
    let vl = tokio::net::TcpListener::bind(args.vast_listen).await;
    let il = tokio::net::TcpListener::bind(args.ionet_listen).await;
    let (vl, il) = match (vl, il) {
        (Ok(v), Ok(i)) => (v, i),
        (v, i) => {
            eprintln!("gpuproxy-sandbox: cannot bind: {:?} {:?}", v.err(), i.err());
            std::process::exit(1);
        }
    };
    let urls = serde_json::json!({
        "vastai": format!("http://{}", vl.local_addr().expect("bound")),
        "ionet": format!("http://{}", il.local_addr().expect("bound")),
    });
    println!("{urls}");
    let vs = Arc::new(server::Sandbox::new(
        "vastai",
        args.seed,
        initial.clone(),
        vast,
    ));
    let is = Arc::new(server::Sandbox::new(
        "ionet",
        args.seed ^ 0x5eed,
        initial,
        ionet,
    ));
    tokio::spawn(server::serve(vl, vs));
    tokio::spawn(server::serve(il, is));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
