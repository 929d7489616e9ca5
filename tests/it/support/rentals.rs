//! Helpers of the rental tests: authenticated calls, budgeted accounts, offers and rent bodies.

use serde_json::{Value, json};

use super::accounts::TestDb;
use super::client::Resp;
use super::daemon::DaemonProc;

/// Throwaway OpenSSH ed25519 public keys (valid encodings of made-up key bytes).
pub const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0";
pub const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG90aGVya2V5b3RoZXJrZXlvdGhlcmtleW90aGVya2V5";
pub const KEY_C: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRoaXJka2V5dGhpcmRrZXl0aGlyZGtleXRoaXJka2V5";

/// One request as the holder of `token`, with an `Idempotency-Key` when given.
pub async fn call(
    d: &DaemonProc,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
    idem: Option<&str>,
) -> Resp {
    let extra: Vec<(&str, &str)> = idem.map(|k| ("idempotency-key", k)).into_iter().collect();
    super::client::authed(d.https, token, method, path, body, &extra).await
}

/// An account with a daily budget and an instance limit, and a key for it.
pub fn account(db: &TestDb<'_>, name: &str, budget: f64, max: u32) -> String {
    db.cli(&[
        "accounts",
        "create",
        "--name",
        name,
        "--daily-budget-usd",
        &budget.to_string(),
        "--max-instances",
        &max.to_string(),
    ]);
    let k = db.cli(&["keys", "create", "--account", name]);
    k["token"].as_str().unwrap().to_owned()
}

/// The cheapest available offer of a provider (`query` adds filters, e.g. `&interruptible=true`).
pub async fn cheapest(d: &DaemonProc, token: &str, provider: &str, query: &str) -> Value {
    let r = call(
        d,
        token,
        "GET",
        &format!("/v1/offers?providers={provider}&limit=1&sort=price{query}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    r.json()["offers"][0].clone()
}

/// A rental of `offer_id` with a 20 GB disk and an inline key: a container image on Vast, io.net's
/// `general` VM image on io.net (it takes no container image).
pub fn rent_body(offer_id: &str) -> String {
    json!({"offer_id": offer_id, "image": image_for(offer_id), "disk_gb": 20,
           "ssh_public_key": format!("{KEY_A} test@example")})
    .to_string()
}

/// [`rent_body`] with `extra`'s fields set over it (a launch spec, ports, a lifetime, ...).
pub fn rent_body_with(offer_id: &str, extra: &Value) -> Value {
    let mut body: Value = serde_json::from_str(&rent_body(offer_id)).unwrap();
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    body
}

/// The image a test rents `offer_id` with.
pub fn image_for(offer_id: &str) -> &'static str {
    if offer_id.starts_with("ionet:") {
        "general"
    } else {
        "pytorch/pytorch:latest"
    }
}

/// Rents the cheapest on-demand offer of `provider`; returns the instance id.
pub async fn rent_cheapest(d: &DaemonProc, token: &str, provider: &str) -> String {
    let offer = cheapest(d, token, provider, "").await;
    let r = post(d, token, &rent_body(offer["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// [`rent_cheapest`], then waits until it runs; returns the instance id.
pub async fn rent_cheapest_running(d: &DaemonProc, token: &str, provider: &str) -> String {
    let id = rent_cheapest(d, token, provider).await;
    until(d, token, &id, "running", |v| v["status"] == "running").await;
    id
}

/// Rents the cheapest on-demand Vast offer and destroys it; returns the instance id.
pub async fn rent_and_destroy(d: &DaemonProc, token: &str) -> String {
    let id = rent_cheapest(d, token, "vastai").await;
    let r = call(d, token, "DELETE", &format!("/v1/instances/{id}"), "", None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    id
}

/// `GET /v1/instances/{id}` until `done` holds for it.
pub async fn until(
    d: &DaemonProc,
    token: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    super::eventually(what, || async {
        let v = call(d, token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        done(&v).then_some(v)
    })
    .await
}

/// The configuration an io.net offer id names: (cards, hardware id, place), from
/// `ionet:<cards>x<hardware>@<place>`.
pub fn ionet_config(offer_id: &str) -> (&str, &str, &str) {
    let (cards, rest) = offer_id
        .trim_start_matches("ionet:")
        .split_once('x')
        .expect("an io.net offer id");
    let (hw, place) = rest.split_once('@').expect("an io.net offer id");
    (cards, hw, place)
}

/// `DELETE /v1/instances/{id}` (it must answer 200), then the instance once it has ended.
pub async fn destroy_until_ended(d: &DaemonProc, token: &str, id: &str) -> Value {
    let r = call(d, token, "DELETE", &format!("/v1/instances/{id}"), "", None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    until(d, token, id, "terminated", |v| v["status"] == "terminated").await
}

/// The `kind`s of an instance's events, in order.
pub fn kinds(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["kind"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /v1/instances` with `body` as the holder of `token`.
pub async fn post(d: &DaemonProc, token: &str, body: &str) -> Resp {
    call(d, token, "POST", "/v1/instances", body, None).await
}

/// `POST /v1/instances` on a connection of its own; an error when the connection dies first (a
/// daemon killed mid-request).
pub async fn try_post(
    https: std::net::SocketAddr,
    token: &str,
    body: String,
    idem: Option<&str>,
) -> Result<Resp, hyper::Error> {
    let mut c = super::client::Conn::tls(https, &[b"http/1.1"])
        .await
        .unwrap();
    let mut req = super::client::request("POST", "/v1/instances", bytes::Bytes::from(body));
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    if let Some(k) = idem {
        h.insert("idempotency-key", k.parse().unwrap());
    }
    c.send(req).await
}

/// [`try_post`] in a task (for rentals that overlap); it must be answered.
pub fn spawn_post(
    https: std::net::SocketAddr,
    token: String,
    body: String,
    idem: Option<&'static str>,
) -> tokio::task::JoinHandle<Resp> {
    tokio::spawn(async move { try_post(https, &token, body, idem).await.unwrap() })
}

/// Concurrent changes with a budget for one: exactly one answered `ok`, every other 402
/// `budget_exceeded`.
pub fn one_passed_the_rest_over_budget(answers: &[Resp], ok: u16) {
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == ok).count(),
        1,
        "{statuses:?}"
    );
    for r in answers.iter().filter(|r| r.status != ok) {
        assert_eq!(r.status, 402, "{:?}", r.json());
        assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    }
}

/// The error message of an answer (empty when it has none).
pub fn message(r: &Resp) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// What an account has spent over the last 24 h, from the ledger (the query the budgets use).
pub async fn spent(db: &TestDb<'_>, account: &str) -> f64 {
    let client = db.client().await;
    let id: i64 = client
        .query_one("SELECT id FROM accounts WHERE name = $1", &[&account])
        .await
        .unwrap()
        .get(0);
    client
        .query_one(
            gpuproxyd::rentals::ledger::SPENT,
            &[&id, &None::<i64>, &24i32],
        )
        .await
        .unwrap()
        .get(0)
}
