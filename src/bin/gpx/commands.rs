//! What each `gpx` command asks the daemon and prints: a table by default, the daemon's JSON
//! with `--json`.

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use crate::client::{Api, EX_USAGE, Failure, Outcome};

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    }
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    gpuproxyd::cli::table::print(head, rows, 48);
}

/// The objects of the JSON array `items` as a table, one column per field.
fn items_table(items: &Value, head: &[&str], fields: &[&str]) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| fields.iter().map(|f| s(&o[*f])).collect())
        .collect();
    table(head, &rows);
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A query string of the pairs that are set, percent-encoded.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{k}={}", gpuproxyd::types::text::percent_encode(v)))
        })
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

#[derive(clap::Args)]
pub struct OffersArgs {
    /// A GPU model or family (`RTX 4090`, `H100`).
    #[arg(long)]
    gpu: Option<String>,
    /// Only these providers (comma-separated: vastai,ionet).
    #[arg(long)]
    providers: Option<String>,
    /// The highest price per hour (USD).
    #[arg(long)]
    max_price: Option<f64>,
    #[arg(long)]
    min_gpus: Option<u32>,
    /// Interruptible (bid) offers.
    #[arg(long)]
    interruptible: bool,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

pub async fn offers(api: &Api, a: OffersArgs) -> Outcome<()> {
    let q = query(&[
        ("gpu", a.gpu),
        ("providers", a.providers),
        ("max_price", a.max_price.map(|p| p.to_string())),
        ("min_gpus", a.min_gpus.map(|n| n.to_string())),
        ("interruptible", a.interruptible.then(|| "true".into())),
        ("limit", Some(a.limit.to_string())),
        ("sort", Some("price".into())),
    ]);
    let v = api
        .call(Method::GET, &format!("/v1/offers{q}"), None)
        .await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    items_table(
        &v["offers"],
        &["ID", "GPU", "N", "USD/H", "COUNTRY", "RELIABILITY"],
        &[
            "id",
            "gpu_model",
            "gpu_count",
            "price_per_hour",
            "country",
            "reliability",
        ],
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct RentArgs {
    /// An offer id from `gpx offers` (or give a spec: `--gpu` and `--max-price`).
    #[arg(long, conflicts_with = "gpu")]
    offer: Option<String>,
    /// Rent by spec: a GPU model or family.
    #[arg(long)]
    gpu: Option<String>,
    /// Rent by spec: the highest price per hour (USD).
    #[arg(long)]
    max_price: Option<f64>,
    /// Rent by spec: only these providers (comma-separated).
    #[arg(long)]
    providers: Option<String>,
    #[arg(long, default_value = "ubuntu:22.04")]
    image: String,
    #[arg(long, default_value_t = 20)]
    disk_gb: u32,
    /// Destroyed this many hours after the rental.
    #[arg(long)]
    hours: Option<f64>,
    /// io.net: the hours paid up front.
    #[arg(long)]
    duration_hours: Option<u32>,
    /// A script run at start (Vast).
    #[arg(long)]
    onstart: Option<String>,
    /// A port to expose (repeat for more).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// An SSH key id from the account (repeat for more).
    #[arg(long = "ssh-key-id")]
    ssh_key_ids: Vec<String>,
    /// An OpenSSH public key file to give the instance.
    #[arg(long)]
    ssh_key_file: Option<String>,
    /// A volume of yours to attach (`gpx volumes`), mounted at `--mount` (default /data).
    #[arg(long)]
    volume: Option<String>,
    #[arg(long, default_value = "/data", requires = "volume")]
    mount: String,
    /// Stop (or `--idle-action destroy`) the instance once its GPU utilisation has stayed below
    /// this percentage for `--idle-minutes`.
    #[arg(long, requires = "idle_minutes")]
    idle_below: Option<f64>,
    #[arg(long, requires = "idle_below")]
    idle_minutes: Option<f64>,
    #[arg(long, default_value = "stop", requires = "idle_below")]
    idle_action: String,
    /// What to do when outbid: wait, rebid (with `--max-bid`), failover (by spec) or destroy.
    #[arg(long)]
    on_interrupt: Option<String>,
    /// The highest bid `--on-interrupt rebid` may place (USD/h).
    #[arg(long, requires = "on_interrupt")]
    max_bid: Option<f64>,
    /// Interruptible offers only (rent by spec).
    #[arg(long)]
    interruptible: bool,
    /// Makes a retry of this command safe: the same key rents once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait until the instance runs, then print its SSH command.
    #[arg(long)]
    wait: bool,
    #[arg(long)]
    json: bool,
}

pub async fn rent(api: &Api, a: RentArgs) -> Outcome<()> {
    let mut body = json!({"image": a.image, "disk_gb": a.disk_gb});
    match (&a.offer, &a.gpu, a.max_price) {
        (Some(o), _, _) => body["offer_id"] = json!(o),
        (None, gpu, Some(max)) => {
            let mut spec = json!({"max_price_per_hour": max});
            if let Some(g) = gpu {
                spec["gpu"] = json!(g);
            }
            if let Some(p) = &a.providers {
                spec["providers"] = json!(p.split(',').map(str::trim).collect::<Vec<_>>());
            }
            if a.interruptible {
                spec["interruptible"] = json!(true);
            }
            body["spec"] = spec;
        }
        _ => {
            return Err(Failure::new(
                EX_USAGE,
                "give --offer <id>, or a spec with --max-price (and --gpu)",
            ));
        }
    }
    if let Some(h) = a.hours {
        body["max_duration_hours"] = json!(h);
    }
    if let Some(h) = a.duration_hours {
        body["duration_hours"] = json!(h);
    }
    if let Some(o) = &a.onstart {
        body["onstart"] = json!(o);
    }
    if !a.ports.is_empty() {
        body["ports"] = json!(
            a.ports
                .iter()
                .map(|p| json!({"port": p}))
                .collect::<Vec<_>>()
        );
    }
    if !a.ssh_key_ids.is_empty() {
        body["ssh_key_ids"] = json!(a.ssh_key_ids);
    }
    if let Some(v) = &a.volume {
        body["volume"] = json!({"id": v, "mount_path": a.mount});
    }
    if let (Some(below), Some(minutes)) = (a.idle_below, a.idle_minutes) {
        body["idle"] =
            json!({"gpu_util_below": below, "for_minutes": minutes, "action": a.idle_action});
    }
    if let Some(action) = &a.on_interrupt {
        let mut on = json!({"action": action});
        if let Some(max) = a.max_bid {
            on["max_bid_per_hour"] = json!(max);
        }
        body["on_interrupt"] = on;
    }
    if let Some(f) = &a.ssh_key_file {
        let k = std::fs::read_to_string(f)
            .map_err(|e| Failure::new(EX_USAGE, format!("--ssh-key-file {f}: {e}")))?;
        body["ssh_public_key"] = json!(k.trim());
    }
    let headers: Vec<(&str, &str)> = a
        .idempotency_key
        .as_deref()
        .map(|k| ("idempotency-key", k))
        .into_iter()
        .collect();
    let mut v = api
        .call_with(Method::POST, "/v1/instances", Some(&body), &headers)
        .await?;
    let id = s(&v["id"]);
    if a.wait {
        v = wait_running(api, &id).await?;
    }
    if a.json {
        print_json(&v);
        return Ok(());
    }
    println!(
        "{id} {} {} {} USD/h",
        s(&v["status"]),
        s(&v["offer_id"]),
        s(&v["price_per_hour"])
    );
    if let Some(cmd) = v["ssh_command"].as_str() {
        println!("{cmd}");
    }
    Ok(())
}

/// Polls an instance until it runs (or can no longer).
async fn wait_running(api: &Api, id: &str) -> Outcome<Value> {
    loop {
        let v = api
            .call(Method::GET, &format!("/v1/instances/{id}"), None)
            .await?;
        match v["status"].as_str() {
            Some("running") if v["ssh_command"].is_string() || v["ssh"].is_null() => return Ok(v),
            Some("failed" | "terminated" | "terminating") => {
                return Err(Failure::new(
                    crate::client::EX_UNAVAILABLE,
                    format!("instance {id} is {}: {}", s(&v["status"]), s(&v["failure"])),
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

pub async fn ls(api: &Api, json: bool) -> Outcome<()> {
    let v = api
        .call(Method::GET, "/v1/instances?limit=200", None)
        .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    items_table(
        &v["instances"],
        &["ID", "PROVIDER", "GPU", "STATUS", "USD/H", "CREATED"],
        &[
            "id",
            "provider",
            "gpu_model",
            "status",
            "price_per_hour",
            "created_at",
        ],
    );
    Ok(())
}

pub async fn show(api: &Api, id: &str, json: bool) -> Outcome<()> {
    let v = api
        .call(Method::GET, &format!("/v1/instances/{id}"), None)
        .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    for k in [
        "id",
        "provider",
        "offer_id",
        "gpu_model",
        "gpu_count",
        "status",
        "price_per_hour",
        "ssh_command",
        "endpoints",
        "expires_at",
        "failure",
    ] {
        println!("{k:<15} {}", s(&v[k]));
    }
    let rows: Vec<Vec<String>> = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| vec![s(&e["at"]), s(&e["kind"]), s(&e["status"]), s(&e["detail"])])
        .collect();
    if !rows.is_empty() {
        println!();
        table(&["AT", "EVENT", "STATUS", "DETAIL"], &rows);
    }
    Ok(())
}

/// Execs `ssh` with the instance's host, port and user (this process becomes ssh).
pub async fn ssh(api: &Api, id: &str, extra: &[String]) -> Outcome<()> {
    use std::os::unix::process::CommandExt;
    let v = api
        .call(Method::GET, &format!("/v1/instances/{id}"), None)
        .await?;
    let (Some(host), Some(port)) = (v["ssh"]["host"].as_str(), v["ssh"]["port"].as_u64()) else {
        return Err(Failure::new(
            crate::client::EX_UNAVAILABLE,
            format!(
                "instance {id} has no SSH access yet (status {})",
                s(&v["status"])
            ),
        ));
    };
    let user = v["ssh"]["user"].as_str().unwrap_or("root");
    let err = std::process::Command::new(std::env::var("GPX_SSH").unwrap_or_else(|_| "ssh".into()))
        .args(["-p", &port.to_string(), &format!("{user}@{host}")])
        .args(extra)
        .exec();
    Err(Failure::new(1, format!("cannot run ssh: {err}")))
}

pub async fn extend(api: &Api, id: &str, hours: u32) -> Outcome<()> {
    let v = api
        .call(
            Method::POST,
            &format!("/v1/instances/{id}/extend"),
            Some(&json!({"hours": hours})),
        )
        .await?;
    println!("{id} {} until {}", s(&v["status"]), s(&v["expires_at"]));
    Ok(())
}

/// `stop` or `start`.
pub async fn change(api: &Api, id: &str, what: &str) -> Outcome<()> {
    let v = api
        .call(Method::POST, &format!("/v1/instances/{id}/{what}"), None)
        .await?;
    println!("{id} {}", s(&v["status"]));
    Ok(())
}

pub async fn destroy(api: &Api, id: &str) -> Outcome<()> {
    let v = api
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None)
        .await?;
    println!("{id} {}", s(&v["status"]));
    Ok(())
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Keep reading, resuming after a disconnect from the last event seen.
    #[arg(long)]
    follow: bool,
    /// Start after this event id (default: the next event).
    #[arg(long)]
    after: Option<i64>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

/// One JSON line per event (`{"id", "type", "data"}`).
pub async fn events(api: &Api, a: EventsArgs) -> Outcome<()> {
    let mut seen = 0u64;
    let mut after = a.after;
    let mut delay = Duration::from_millis(250);
    loop {
        let mut each = |id: i64, kind: &str, data: &str| {
            let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            println!("{}", json!({"id": id, "type": kind, "data": data["data"]}));
            seen += 1;
            a.count.is_none_or(|n| seen < n)
        };
        match api.events(after, &mut each).await {
            Ok((last, ended)) => {
                after = last.or(after);
                if !ended || !a.follow {
                    return Ok(());
                }
                delay = Duration::from_millis(250);
            }
            // a daemon restarting refuses connections a while: keep trying when following
            Err(f) if a.follow && f.code == crate::client::EX_UNAVAILABLE => {
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(f) => return Err(f),
        }
        tokio::time::sleep(delay).await;
    }
}

#[derive(clap::Args)]
pub struct UsageArgs {
    /// day, instance, key, provider or instance_day.
    #[arg(long)]
    group_by: Option<String>,
    /// RFC 3339 start (default: the start of the month).
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// CSV, one row per instance and day unless `--group-by` says otherwise.
    #[arg(long)]
    csv: bool,
    #[arg(long)]
    json: bool,
}

pub async fn usage(api: &Api, a: UsageArgs) -> Outcome<()> {
    let group = a
        .group_by
        .or_else(|| a.csv.then(|| "instance_day".to_owned()));
    let q = query(&[
        ("group_by", group),
        ("from", a.from),
        ("to", a.to),
        ("format", a.csv.then(|| "csv".into())),
    ]);
    if a.csv {
        let (status, body) = api
            .raw(Method::GET, &format!("/v1/usage{q}"), None, &[])
            .await?;
        if status != 200 {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(Failure::new(
                if status == 401 || status == 403 {
                    crate::client::EX_NOPERM
                } else {
                    crate::client::EX_DATAERR
                },
                format!(
                    "{}: {} (HTTP {status})",
                    s(&v["error"]["code"]),
                    s(&v["error"]["message"])
                ),
            ));
        }
        print!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let v = api
        .call(Method::GET, &format!("/v1/usage{q}"), None)
        .await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    let row = |k: &str, f: &Value| {
        vec![
            k.to_owned(),
            s(&f["usd"]),
            s(&f["storage_usd"]),
            s(&f["bandwidth_usd"]),
            s(&f["gpu_hours"]),
        ]
    };
    let mut rows: Vec<Vec<String>> = v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| row(g["key"].as_str().unwrap_or("-"), g))
        .collect();
    rows.push(row("total", &v["totals"]));
    table(
        &["GROUP", "USD", "STORAGE", "BANDWIDTH", "GPU_HOURS"],
        &rows,
    );
    Ok(())
}

pub async fn keys(api: &Api, json: bool) -> Outcome<()> {
    let v = api.call(Method::GET, "/v1/account/keys", None).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let scopes = k["scopes"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![
                s(&k["public_id"]),
                s(&k["label"]),
                scopes,
                s(&k["created_at"]),
                s(&k["last_used_at"]),
                s(&k["revoked_at"]),
            ]
        })
        .collect();
    table(
        &["ID", "LABEL", "SCOPES", "CREATED", "LAST_USED", "REVOKED"],
        &rows,
    );
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum VolumesCmd {
    /// Your volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Machines with room for a volume, cheapest storage first.
    Offers {
        #[arg(long, default_value_t = 10)]
        size_gb: u32,
        #[arg(long)]
        json: bool,
    },
    /// Create a volume from a volume offer (it bills until deleted).
    Create {
        #[arg(long)]
        offer: String,
        #[arg(long)]
        size_gb: u32,
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a volume (refused while an instance uses it).
    Rm { id: String },
}

pub async fn volumes(api: &Api, cmd: VolumesCmd) -> Outcome<()> {
    match cmd {
        VolumesCmd::Ls { json } => {
            let v = api.call(Method::GET, "/v1/volumes", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            items_table(
                &v["volumes"],
                &["ID", "STATUS", "GB", "MACHINE", "USD/H", "ATTACHED_TO"],
                &[
                    "id",
                    "status",
                    "size_gb",
                    "machine_id",
                    "price_per_hour",
                    "attached_to",
                ],
            );
        }
        VolumesCmd::Offers { size_gb, json } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/v1/volume-offers?size_gb={size_gb}"),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            items_table(
                &v["offers"],
                &["ID", "MACHINE", "FREE_GB", "USD/GB-MONTH", "COUNTRY"],
                &[
                    "id",
                    "machine_id",
                    "free_gb",
                    "price_per_gb_month",
                    "country",
                ],
            );
        }
        VolumesCmd::Create {
            offer,
            size_gb,
            name,
        } => {
            let mut body = json!({"offer_id": offer, "size_gb": size_gb});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            let v = api.call(Method::POST, "/v1/volumes", Some(&body)).await?;
            println!(
                "{} {} machine {}",
                s(&v["id"]),
                s(&v["status"]),
                s(&v["machine_id"])
            );
        }
        VolumesCmd::Rm { id } => {
            let v = api
                .call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
                .await?;
            println!("{} {}", s(&v["id"]), s(&v["status"]));
        }
    }
    Ok(())
}
