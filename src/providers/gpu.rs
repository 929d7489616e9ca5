//! Canonical GPU model names, both ways: a provider's spelling ("GeForce RTX 4090", "A100 SXM4",
//! "Tesla V100") to one canonical name ("RTX 4090", "A100 80GB SXM", "V100"), and a canonical name
//! (or a family such as "A100") back to the spellings Vast.ai searches with, so a `gpu` filter can
//! be pushed down to its search.
//!
//! Canonical form: the model without vendor or brand words ("NVIDIA", "GeForce", "Tesla"), then the
//! memory size where one model ships with several (A100 40/80GB, H100 80/94GB), then the form
//! factor where it changes the part (SXM, PCIe, NVL). A name we do not know is kept, cleaned up
//! (upper-cased words, brand words dropped), so new hardware still shows and can be filtered on.

/// Models sold in several memory sizes or form factors, with the Vast.ai names that map to them.
/// `(family, canonical, vast names)`; `canonical` may contain `{mem}`, filled from the offer.
const KNOWN: &[(&str, &str, &[&str])] = &[
    ("A100", "A100 {mem}GB SXM", &["A100 SXM4", "A100 SXM"]),
    ("A100", "A100 {mem}GB PCIe", &["A100 PCIE"]),
    ("H100", "H100 {mem}GB SXM", &["H100 SXM", "H100 SXM5"]),
    ("H100", "H100 {mem}GB PCIe", &["H100 PCIE"]),
    ("H100", "H100 NVL", &["H100 NVL"]),
    ("H200", "H200", &["H200", "H200 NVL"]),
    ("B200", "B200", &["B200"]),
    ("L40S", "L40S", &["L40S"]),
    ("L40", "L40", &["L40"]),
    ("L4", "L4", &["L4"]),
    ("A40", "A40", &["A40"]),
    ("A10", "A10", &["A10"]),
    ("V100", "V100", &["Tesla V100", "V100"]),
    (
        "RTX 6000 Ada",
        "RTX 6000 Ada",
        &["RTX 6000Ada", "RTX 6000 Ada"],
    ),
    ("RTX A6000", "RTX A6000", &["RTX A6000"]),
    ("RTX A5000", "RTX A5000", &["RTX A5000"]),
    ("RTX A4000", "RTX A4000", &["RTX A4000"]),
    ("RTX 5090", "RTX 5090", &["RTX 5090"]),
    ("RTX 4090", "RTX 4090", &["RTX 4090"]),
    ("RTX 4080", "RTX 4080", &["RTX 4080"]),
    ("RTX 3090", "RTX 3090", &["RTX 3090", "RTX 3090 Ti"]),
    ("RTX 3080", "RTX 3080", &["RTX 3080"]),
];

/// Words that name a vendor or brand, not a model.
const NOISE: &[&str] = &["NVIDIA", "GEFORCE", "TESLA", "AMD", "RADEON"];

/// Upper-cased words of a provider's name: separators (`-`, `_`, `/`) become spaces, brand words
/// go, and memory tokens ("80GB", "HBM3", "80G") are split off into `mem_gb`.
fn words(raw: &str) -> (Vec<String>, Option<u32>) {
    let mut mem = None;
    let mut out = Vec::new();
    for w in raw
        .split(|c: char| c.is_whitespace() || matches!(c, '-' | '_' | '/' | ','))
        .filter(|w| !w.is_empty())
    {
        let mut up = w.to_ascii_uppercase();
        // Vast writes "RTX 6000Ada"
        if up.len() > 3 && up.ends_with("ADA") && up.as_bytes()[up.len() - 4].is_ascii_digit() {
            up.truncate(up.len() - 3);
            out.push(up);
            out.push("ADA".into());
            continue;
        }
        if NOISE.contains(&up.as_str()) || up.starts_with("HBM") || up == "GB" {
            continue;
        }
        let digits = up.trim_end_matches("GB").trim_end_matches('G');
        if digits.len() < up.len()
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
        {
            mem = digits.parse().ok();
            continue;
        }
        out.push(up);
    }
    (out, mem)
}

/// The canonical name of a provider's GPU name; `mem_gb` (per GPU) tells A100 40GB from 80GB when
/// the name does not.
pub fn canonical(raw: &str, mem_gb: Option<f64>) -> String {
    let (w, mem_in_name) = words(raw);
    let joined = w.join(" ");
    let mem = mem_in_name
        .map(f64::from)
        .or(mem_gb)
        .map(|m| nominal_memory(m.round() as u32));
    let has = |t: &str| w.iter().any(|x| x.starts_with(t));
    let family = KNOWN
        .iter()
        .map(|(f, _, _)| *f)
        .filter(|f| {
            let fw: Vec<String> = f.split(' ').map(str::to_ascii_uppercase).collect();
            // (families are compared upper-cased; the canonical name keeps the table's case)
            // the family's words appear in order, as whole words (so "L4" is not "L40S")
            w.windows(fw.len()).any(|win| win == fw.as_slice())
        })
        .max_by_key(|f| f.len());
    let Some(family) = family else {
        return tidy(&joined);
    };
    let variant = |form: &str| match mem {
        Some(m) => format!("{family} {m}GB {form}"),
        None => format!("{family} {form}"),
    };
    let form_given = has("SXM") || has("PCIE") || has("NVL");
    match family {
        // a bare family ("A100", as a filter) stays the family
        "A100" | "H100" if !form_given && mem.is_none() => family.to_owned(),
        "A100" | "H100" if has("NVL") => format!("{family} NVL"),
        "A100" | "H100" if has("PCIE") || joined.contains("A100X") => variant("PCIe"),
        "A100" | "H100" => variant("SXM"),
        f => f.to_owned(),
    }
}

/// Rounds a provider's memory figure to the size the part is sold as (Vast reports 81920 MB or
/// 80 GB for an A100 80GB, some hosts 79.6 GB).
fn nominal_memory(gb: u32) -> u32 {
    const SIZES: [u32; 12] = [8, 10, 12, 16, 20, 24, 32, 40, 48, 80, 94, 141];
    SIZES
        .iter()
        .copied()
        .min_by_key(|s| s.abs_diff(gb))
        .filter(|s| s.abs_diff(gb) * 10 <= *s)
        .unwrap_or(gb)
}

/// Keeps an unknown name readable: upper-case model words, brand words dropped.
fn tidy(joined: &str) -> String {
    if joined.is_empty() {
        "UNKNOWN".into()
    } else {
        joined.to_owned()
    }
}

/// Whether an offer's canonical model matches a `gpu` filter: the filter is canonicalized the same
/// way and matches the model or any model of its family ("A100" matches "A100 80GB SXM").
pub fn matches(filter_canonical: &str, offer_canonical: &str) -> bool {
    offer_canonical.eq_ignore_ascii_case(filter_canonical)
        || offer_canonical
            .get(..filter_canonical.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(filter_canonical))
            && offer_canonical.as_bytes().get(filter_canonical.len()) == Some(&b' ')
}

/// The Vast.ai `gpu_name` values that can produce offers matching `filter_canonical`, or `None`
/// when the model is not one we know (then the filter is applied after the search only).
pub fn vast_names(filter_canonical: &str) -> Option<Vec<&'static str>> {
    let mut out: Vec<&'static str> = Vec::new();
    for (family, canon, names) in KNOWN {
        let sample = canon.replace("{mem}", "80");
        let sample40 = canon.replace("{mem}", "40");
        let hit = family.eq_ignore_ascii_case(filter_canonical)
            || matches(filter_canonical, &sample)
            || matches(filter_canonical, &sample40)
            || canon.eq_ignore_ascii_case(filter_canonical);
        if hit {
            out.extend_from_slice(names);
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_spellings_map_to_one_name() {
        assert_eq!(canonical("RTX 4090", Some(24.0)), "RTX 4090");
        assert_eq!(canonical("GeForce RTX 4090", Some(24.0)), "RTX 4090");
        assert_eq!(canonical("NVIDIA GeForce RTX 4090", None), "RTX 4090");
        assert_eq!(canonical("A100 SXM4", Some(80.0)), "A100 80GB SXM");
        assert_eq!(canonical("A100 SXM4", Some(40.0)), "A100 40GB SXM");
        assert_eq!(canonical("A100-SXM4-80GB", None), "A100 80GB SXM");
        assert_eq!(canonical("A100 PCIE", Some(79.6)), "A100 80GB PCIe");
        assert_eq!(canonical("H100 SXM", Some(80.0)), "H100 80GB SXM");
        assert_eq!(canonical("H100 80GB HBM3", None), "H100 80GB SXM");
        assert_eq!(canonical("H100 NVL", Some(94.0)), "H100 NVL");
        assert_eq!(canonical("Tesla V100", Some(16.0)), "V100");
        assert_eq!(canonical("RTX 6000Ada", Some(48.0)), "RTX 6000 Ada");
        assert_eq!(canonical("L40S", Some(48.0)), "L40S");
        assert_eq!(canonical("L4", Some(24.0)), "L4");
        assert_eq!(canonical("B200", None), "B200");
        assert_eq!(canonical("Instinct MI300X", None), "INSTINCT MI300X");
        assert_eq!(canonical("", None), "UNKNOWN");
    }

    #[test]
    fn filters_match_models_and_families() {
        let f = canonical("a100", None);
        assert!(matches(&f, "A100 80GB SXM"));
        assert!(matches(&f, "A100 40GB PCIe"));
        assert!(!matches(&f, "A10"));
        assert!(!matches(&canonical("A10", None), "A100 80GB SXM"));
        assert!(matches(&canonical("geforce rtx 4090", None), "RTX 4090"));
        assert!(!matches(&canonical("L4", None), "L40S"));
        assert!(matches(&canonical("A100 80GB SXM", None), "A100 80GB SXM"));
        assert!(!matches(&canonical("A100 80GB SXM", None), "A100 40GB SXM"));
    }

    #[test]
    fn canonical_names_map_back_to_vast_spellings() {
        let a100 = vast_names(&canonical("A100", None)).unwrap();
        assert!(a100.contains(&"A100 SXM4") && a100.contains(&"A100 PCIE"));
        let sxm = vast_names(&canonical("A100 80GB SXM", None)).unwrap();
        assert!(sxm.contains(&"A100 SXM4") && !sxm.contains(&"A100 PCIE"));
        assert_eq!(
            vast_names(&canonical("RTX 4090", None)).unwrap(),
            ["RTX 4090"]
        );
        assert!(vast_names("INSTINCT MI300X").is_none());
        // every Vast spelling we list canonicalizes into its own entry's family
        for (family, _, names) in KNOWN {
            for n in *names {
                let c = canonical(n, Some(80.0));
                assert!(
                    matches(&canonical(family, None), &c),
                    "{n} -> {c} is not in family {family}"
                );
            }
        }
    }
}
