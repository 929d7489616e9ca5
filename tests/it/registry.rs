//! Providers are a registry: a third provider, served here by a tiny HTTP stub that speaks the
//! `generic` API (src/providers/generic.rs), joins `/v1/offers` and rents through config alone:
//! one `[providers.acme]` table (here as `--set` overrides) and its key's variable. The files a
//! provider with a new API needs: its client in src/providers/ and one line in
//! `Providers::from_config`.

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use support::accounts::TestDb;
use support::rentals::{KEY_A, account, call, post, until};
use support::sandbox::Sandbox;
use support::services;

const ACME_KEY: &str = "acme-test-key";

/// What the stub has seen and holds.
#[derive(Default)]
struct Stub {
    /// (method, path, authorized) of every call.
    calls: Vec<(String, String, bool)>,
    instances: Vec<Value>,
}

async fn serve(stub: Arc<Mutex<Stub>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {ACME_KEY}"));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut s = stub.lock().unwrap();
    s.calls.push((method.clone(), path.clone(), authorized));
    let (status, v) = if !authorized {
        (401, json!({"error": "unauthorized"}))
    } else {
        match (method.as_str(), path.as_str()) {
            ("GET", "/offers") => (
                200,
                json!({"offers": [
                    {"id": "pool-1", "gpu_model": "H100 80GB HBM3", "gpu_count": 8,
                     "gpu_memory_gb": 80, "price_per_hour": 0.11, "country": "fi"},
                    {"id": "pool-2", "gpu_model": "RTX 4090", "gpu_count": 1,
                     "price_per_hour": 0.05, "available": false},
                    {"id": "broken", "gpu_count": 1}
                ]}),
            ),
            ("POST", "/instances") => {
                let b: Value = serde_json::from_slice(&body).unwrap();
                let id = format!("acme-{}", s.instances.len() + 1);
                s.instances
                    .push(json!({"id": id, "label": b["label"], "status": "running",
                    "offer": b["offer"], "ssh_keys": b["ssh_keys"],
                    "ssh": {"host": "10.9.8.7", "port": 2222, "user": "ubuntu"}}));
                (200, json!({"id": id}))
            }
            ("GET", "/instances") => (200, json!({"instances": s.instances})),
            ("GET", p) | ("DELETE", p) if p.starts_with("/instances/") => {
                let id = &p["/instances/".len()..];
                match s.instances.iter().position(|i| i["id"] == id) {
                    Some(n) if method == "DELETE" => {
                        s.instances.remove(n);
                        (200, json!({}))
                    }
                    Some(n) => (200, s.instances[n].clone()),
                    None => (404, json!({"error": "not found"})),
                }
            }
            _ => (404, json!({"error": "no route"})),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

async fn start_stub() -> (SocketAddr, Arc<Mutex<Stub>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stub = Arc::new(Mutex::new(Stub::default()));
    let s = stub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, std::convert::Infallible>(serve(s, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, stub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_provider_joins_offers_and_rentals_through_config_alone() {
    let s = services::shared();
    let db = TestDb::new(s, "registry");
    let token = account(&db, "multi", 10_000.0, 5);
    let sb = Sandbox::start(&[]);
    let (addr, stub) = start_stub().await;
    let base = format!("providers.acme.base_url=\"http://{addr}\"");
    let d = sb
        .daemon_with_env(
            &db,
            &[
                "providers.acme.kind=\"generic\"",
                &base,
                "providers.acme.api_key_env=\"ACME_KEY\"",
            ],
            &[("ACME_KEY", ACME_KEY)],
        )
        .await;

    let r = call(
        &d,
        &token,
        "GET",
        "/v1/offers?limit=200&sort=price",
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["providers"]["acme"]["status"], "ok", "{}", v["providers"]);
    assert_eq!(
        v["providers"]["acme"]["offers"], 1,
        "one available, one unreadable skipped"
    );
    for p in ["vastai", "ionet"] {
        assert_eq!(v["providers"][p]["status"], "ok", "the others still answer");
    }
    let acme: Vec<&Value> = v["offers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["provider"] == "acme")
        .collect();
    assert_eq!(acme.len(), 1);
    let o = acme[0];
    assert_eq!(o["id"], "acme:pool-1");
    assert_eq!(o["gpu_model"], "H100 80GB SXM");
    assert_eq!(o["country"], "FI");
    // filters work on it like on any other provider
    let r = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=acme&gpu=h100",
        "",
        None,
    )
    .await;
    assert_eq!(r.json()["offers"].as_array().unwrap().len(), 1);

    // renting through the generic client: key sent, our id as label, the renter's key passed
    let body = json!({"offer_id": "acme:pool-1", "image": "ubuntu:22.04", "disk_gb": 20,
                      "ssh_public_key": KEY_A})
    .to_string();
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let inst = r.json();
    assert_eq!(inst["provider"], "acme");
    assert_eq!(inst["price_per_hour"], 0.11);
    let id = inst["id"].as_str().unwrap().to_owned();
    {
        let s = stub.lock().unwrap();
        let made = &s.instances[0];
        assert_eq!(made["label"], id.as_str());
        assert_eq!(made["offer"], "pool-1");
        assert_eq!(
            made["ssh_keys"]
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap(),
            KEY_A
        );
        assert!(
            s.calls.iter().all(|c| c.2),
            "every call carried the key: {:?}",
            s.calls
        );
    }
    let v = until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    assert_eq!(v["ssh_command"], "ssh -p 2222 ubuntu@10.9.8.7");
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{id}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert!(
        stub.lock().unwrap().instances.is_empty(),
        "destroyed at the provider"
    );
    // its metrics carry its id like the others'
    let page = d.scrape().await;
    assert!(
        page.contains(r#"gpuproxy_rentals_total{provider="acme",result="created"} 1"#),
        "{page}"
    );
}

#[test]
fn a_provider_table_is_checked_when_the_config_loads() {
    let generic = "providers.acme.kind=\"generic\"";
    for (sets, key) in [
        (
            vec!["providers.acme.kind=\"carrier-pigeon\""],
            "providers.acme.kind",
        ),
        (
            vec![generic, "providers.acme.base_url=\"ftp://x\""],
            "providers.acme.base_url",
        ),
        (vec![generic], "providers.acme.base_url"),
        (
            vec!["providers.Bad_Id.base_url=\"http://x\""],
            "providers.Bad_Id",
        ),
        (
            vec!["providers.vastai.passthrough=[\"POST /api/v0/ssh/\"]"],
            "providers.vastai.passthrough[0]",
        ),
        (
            vec!["providers.conect_timeout_ms=3"],
            "providers.conect_timeout_ms",
        ),
    ] {
        let mut args = vec![
            "check-config",
            "--set",
            "server.https_listen=\"off\"",
            "--set",
            "server.http_listen=\"127.0.0.1:0\"",
        ];
        for s in &sets {
            args.extend(["--set", s]);
        }
        let out = support::accounts::gpuproxyd(&args, &[]);
        assert_eq!(out.status.code(), Some(64), "{sets:?}");
        let err = support::accounts::stderr(&out);
        assert!(err.contains(key), "{sets:?}: {err}");
    }
}
