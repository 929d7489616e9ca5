//! The seeded inventory: the same seed gives the same offers, so tests can assert on them.
//! Payloads carry the quirks docs/providers.md lists (MB memory, host-wide CPU/RAM, geolocation as
//! "Region, CC", a bare country or null, null `cpu_cores`, int-or-string `deploy_id`).

use serde_json::{Value, json};

use crate::faults::Rng;

/// (Vast name, io.net name, MB per GPU, $/GPU-hour base)
const GPUS: &[(&str, &str, u64, f64)] = &[
    ("RTX 4090", "GeForce RTX 4090", 24564, 0.35),
    ("RTX 3090", "GeForce RTX 3090", 24576, 0.20),
    ("RTX A6000", "RTX A6000", 49140, 0.45),
    ("A100 SXM4", "A100-SXM4-80GB", 81920, 1.20),
    ("A100 PCIE", "A100-PCIE-40GB", 40960, 0.90),
    ("H100 SXM", "H100 80GB HBM3", 81559, 2.10),
    ("H100 PCIE", "H100 PCIe", 81559, 1.80),
    ("L40S", "L40S", 46068, 0.80),
    ("Tesla V100", "Tesla V100-SXM2-16GB", 16384, 0.15),
    ("B200", "B200", 183359, 3.90),
];

const PLACES: &[Option<&str>] = &[
    Some("Alberta, CA"),
    Some("Texas, US"),
    Some("California, US"),
    Some("The Netherlands, NL"),
    Some("Bavaria, DE"),
    Some("Norway"),
    Some("Ontario, CA"),
    Some("Tokyo, JP"),
    None,
    Some("Quebec, Canada"),
];

const COUNTRIES: &[&str] = &["US", "CA", "DE", "FI", "NL", "JP", "SG", "GB"];

pub fn vast_offers(seed: u64, n: usize) -> Vec<Value> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let g = rng.pick(GPUS);
            let num_gpus = *rng.pick(&[1u64, 1, 2, 2, 4, 8]);
            let per_gpu = g.3 * (0.8 + 0.5 * rng.unit());
            let dph_base = round(per_gpu * num_gpus as f64, 4);
            let cpu_cores = *rng.pick(&[16u64, 32, 64, 128]);
            let eff = (cpu_cores as f64 * num_gpus as f64 / 8.0).max(4.0);
            let reliability = round(0.90 + 0.0999 * rng.unit(), 4);
            json!({
                "id": 5_000_000 + i as u64 * 7,
                "ask_contract_id": 5_000_000 + i as u64 * 7,
                "bundle_id": 900_000 + i,
                "machine_id": 10_000 + i / 2,
                "host_id": 100 + i / 5,
                "num_gpus": num_gpus,
                "gpu_name": g.0,
                "gpu_ram": g.2,
                "gpu_total_ram": g.2 * num_gpus,
                "gpu_arch": "nvidia",
                "cpu_name": "AMD EPYC 7763 64-Core Processor  ",
                "cpu_cores": if i % 23 == 5 { Value::Null } else { json!(cpu_cores) },
                "cpu_cores_effective": eff,
                "cpu_ram": 257_000 * (cpu_cores / 32).max(1),
                "disk_space": round(100.0 + 900.0 * rng.unit(), 1),
                "inet_up": round(100.0 + 900.0 * rng.unit(), 1),
                "inet_down": round(200.0 + 1800.0 * rng.unit(), 1),
                // bandwidth is billed per GB (charge items bwu/bwd)
                "inet_up_cost": round(0.001 + (i % 7) as f64 * 0.001, 4),
                "inet_down_cost": round(0.002 + (i % 5) as f64 * 0.001, 4),
                "direct_port_count": (i % 4) * 8,
                "dph_base": dph_base,
                "storage_cost": round(0.1 + 0.2 * rng.unit(), 3),
                "min_bid": round(dph_base * 0.5, 4),
                "reliability": reliability,
                "reliability2": reliability,
                "verification": "verified",
                "verified": true,
                "external": false,
                "geolocation": rng.pick(PLACES),
                "rentable": true,
                "rented": false,
                "is_bid": false,
                "score": round(100.0 * rng.unit(), 2),
                "start_date": 1.79e9,
                "end_date": 1.81e9,
                "sla_target": 0.99
            })
        })
        .collect()
}

/// io.net lists one hardware type once per card count and location (docs/providers.md, "Offers and other quirks"): the
/// first types of the catalogue come as such families (one `deploy_id`, 1/2/4/8 cards, two
/// countries, each configuration its own price), the rest one configuration each.
pub fn ionet_hardware(seed: u64, n: usize) -> Vec<Value> {
    let mut out = ionet_families(seed);
    out.extend(ionet_singles(seed, n.saturating_sub(out.len())));
    out
}

fn ionet_families(seed: u64) -> Vec<Value> {
    let mut rng = Rng::new(seed ^ 0xfa_111);
    let mut out = Vec::new();
    for (f, g) in [GPUS[0], GPUS[5]].iter().enumerate() {
        let deploy_id = 12 + f as u64 * 1000;
        let places = [COUNTRIES[f], COUNTRIES[f + 2]];
        for cc in places {
            for cards in [1u64, 2, 4, 8] {
                // bigger configurations are a little cheaper per card, and places differ
                let per_card = g.3 * (1.0 - 0.03 * cards as f64) * (0.9 + 0.3 * rng.unit());
                out.push(json!({
                    "id": format!("{deploy_id}__{cards}"),
                    "deploy_id": deploy_id,
                    "name": g.1,
                    "num_cards": cards,
                    "supplier": "internal",
                    "price": round(per_card * cards as f64, 4),
                    "vram_per_card": (g.2 + 512) / 1024,
                    "vcpu": 8 * cards,
                    "memory": 64 * cards,
                    "storage": 500 * cards,
                    "interconnect": if cards == 8 { json!("sxm") } else { Value::Null },
                    "nvlink": cards == 8,
                    "location": cc,
                    "sold_out": false
                }));
            }
        }
    }
    out
}

fn ionet_singles(seed: u64, n: usize) -> Vec<Value> {
    let mut rng = Rng::new(seed ^ 0x10_7e7);
    (0..n)
        .map(|i| {
            let g = rng.pick(GPUS);
            let cards = *rng.pick(&[1u64, 2, 4, 8]);
            let cc = *rng.pick(COUNTRIES);
            let price = round(g.3 * cards as f64 * (0.85 + 0.4 * rng.unit()), 4);
            // half the ids are ints, half strings (live data has "8B300.240V")
            let deploy_id = if i % 2 == 0 {
                json!(100 + i)
            } else {
                json!(format!("{cards}{}.{}V", g.0.replace(' ', ""), 100 + i))
            };
            let id_key = deploy_id.to_string().trim_matches('"').to_owned();
            // a few are listed without a location at all (the id then ends in the card count,
            // as io.net's own example `12__2`): deploying one asks available-vms where
            let unlocated = i % 17 == 3;
            json!({
                "id": if unlocated { format!("{id_key}__{cards}") } else { format!("{id_key}__{cc}") },
                "deploy_id": deploy_id,
                "name": g.1,
                "num_cards": cards,
                "supplier": if i % 3 == 0 { "external" } else { "internal" },
                "price": price,
                "vram_per_card": (g.2 + 512) / 1024,
                "vcpu": 8 * cards,
                "memory": 64 * cards,
                "storage": 500 * cards,
                "interconnect": if cards == 8 { json!("sxm") } else { Value::Null },
                "nvlink": cards == 8,
                "location": if unlocated { Value::Null } else { json!(cc) },
                "sold_out": i % 11 == 4
            })
        })
        .collect()
}

pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}
