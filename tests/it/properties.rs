//! Property tests over what hostile input reaches first (issue 18): the PROXY protocol parser,
//! the offer normalizers on arbitrary JSON, the cursor and query decoders, and the passthrough
//! rule matcher. Each runs a fixed number of generated cases (proptest's shrinking names the
//! smallest failing input); they need no services. Fuzzing with `cargo fuzz` would need a nightly
//! toolchain, which the test command does not install.

use gpuproxyd::config::{OffersConfig, ProvidersConfig};
use gpuproxyd::providers::ProviderId;
use gpuproxyd::server::proxy::{self, Parse};
use gpuproxyd::service::offers::Filters;
use gpuproxyd::types::passthrough;
use hyper::Method;
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, a few levels deep, with the keys the normalizers read among random ones.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("id".to_owned()),
        Just("gpu_name".to_owned()),
        Just("num_gpus".to_owned()),
        Just("dph_base".to_owned()),
        Just("storage_cost".to_owned()),
        Just("gpu_ram".to_owned()),
        Just("geolocation".to_owned()),
        Just("min_bid".to_owned()),
        Just("reliability2".to_owned()),
        Just("price".to_owned()),
        Just("num_cards".to_owned()),
        Just("deploy_id".to_owned()),
        Just("name".to_owned()),
        Just("locations".to_owned()),
        "[a-z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("1e309"),
            Just("-0"),
            Just("NaN"),
            Just("24 GB"),
            Just("US")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 64, 12, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..12)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn sane(o: &gpuproxyd::providers::Offer, prefix: &str) {
    assert!(o.id.starts_with(prefix), "{}", o.id);
    for x in [o.price_per_hour, o.price_per_gpu_hour, o.storage_per_hour] {
        assert!(x.is_finite() && x >= 0.0, "{o:?}");
    }
    assert!(o.gpu_count >= 1, "{o:?}");
    assert!(
        o.reliability.is_none_or(|r| (0.0..=1.0).contains(&r)),
        "{o:?}"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn proxy_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = proxy::parse(&bytes);
        // with a real signature in front, too
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&bytes);
        let _ = proxy::parse(&v2);
        let mut v1 = b"PROXY ".to_vec();
        v1.extend_from_slice(&bytes);
        let _ = proxy::parse(&v1);
    }

    #[test]
    fn proxy_v2_round_trips(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), p in 1u16.., q in 1u16..) {
        let src = std::net::SocketAddr::from((a, p));
        let dst = std::net::SocketAddr::from((b, q));
        let bytes = proxy::encode_v2(src, dst);
        match proxy::parse(&bytes) {
            Parse::Complete { header, consumed } => {
                prop_assert_eq!(header.source, Some(src));
                prop_assert_eq!(consumed, bytes.len());
            }
            other => prop_assert!(false, "{:?}", other),
        }
        // every prefix is incomplete, never invalid
        for n in 1..bytes.len() {
            prop_assert_eq!(proxy::parse(&bytes[..n]), Parse::Incomplete);
        }
    }

    #[test]
    fn offer_normalizers_take_any_json(v in json(), disk in 1u32..100_000, bid in any::<bool>()) {
        let vast = ProviderId::register("vastai").unwrap();
        let ionet = ProviderId::register("ionet").unwrap();
        if let Some(o) = gpuproxyd::providers::vastai::normalize(vast, &v, f64::from(disk), bid) {
            sane(&o, "vastai:");
        }
        if let Some(o) = gpuproxyd::providers::ionet::normalize(ionet, &v) {
            sane(&o, "ionet:");
        }
        for o in gpuproxyd::providers::ionet::normalize_all(ionet, std::slice::from_ref(&v)) {
            sane(&o, "ionet:");
        }
        let other = ProviderId::register("acme").unwrap();
        if let Some(o) = gpuproxyd::providers::generic::normalize(other, &v) {
            sane(&o, "acme:");
        }
    }

    #[test]
    fn offer_queries_and_cursors_never_panic(q in "[a-z_=&%0-9.,A-Z+-]{0,80}") {
        let _ = Filters::parse(Some(&q), &OffersConfig::default());
    }

    #[test]
    fn offer_cursors_never_wrap(off in any::<u64>(), fp in "[0-9a-f]{1,16}") {
        let q = format!("cursor={off}.{fp}");
        if let Ok(f) = Filters::parse(Some(&q), &OffersConfig::default()) {
            prop_assert!(f.offset <= 10_000_000);
        }
    }

    #[test]
    fn instance_cursors_are_times_or_refused(c in ".{0,40}", limit in ".{0,8}") {
        let q = format!("cursor={c}&limit={limit}");
        let read: gpuproxyd::error::Result<gpuproxyd::service::instances::ListInstances> =
            gpuproxyd::service::query::query(Some(&q));
        if let Ok(l) = read {
            prop_assert!(l.cursor.is_none_or(|b| (0.0..1e11).contains(&b.0)));
            prop_assert!(l.limit.is_none_or(|n| (1..=200).contains(&n.0)));
        }
    }

    #[test]
    fn passthrough_binds_one_clean_instance(path in "(/[a-zA-Z0-9.%{}*_ -]{0,12}){0,7}/?", m in 0usize..4) {
        let rules: Vec<passthrough::Rule> = ProvidersConfig::default()
            .tables
            .values()
            .flat_map(|t| t.passthrough.clone())
            .collect();
        let method = [Method::GET, Method::PUT, Method::POST, Method::DELETE][m].clone();
        if let Ok(a) = passthrough::check(&rules, &method, &path) {
            prop_assert!(!path.split('/').any(|s| s == ".." || s == "."), "{}", path);
            prop_assert!(!path.to_ascii_lowercase().split('/').any(|s| s == "ssh"));
            if let Some(i) = a.instance {
                prop_assert!(!i.is_empty() && !i.contains('/'));
            }
        }
    }

    #[test]
    fn decoded_values_hold_no_control_characters(s in "(%[0-9a-fA-F]{2}|[a-z]){0,20}") {
        if let Some(d) = gpuproxyd::types::text::percent_decode(&s) {
            prop_assert!(!d.chars().any(char::is_control), "{:?}", d);
        }
    }
}
