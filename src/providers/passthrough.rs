//! Passthrough rules: which provider API calls a client may make through
//! `/v1/providers/{provider}/{path}` (`passthrough.vastai`, `passthrough.ionet`).
//!
//! A rule is `METHOD /path/with/{instance}/segments`; `{instance}` matches one segment and names
//! an instance (the caller must own it: checked by the handler against the ledger); a final `*`
//! matches any rest. Matching is on the decoded path, segment by segment; `.` and `..` segments
//! and empty paths never match.

use hyper::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Instance,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub text: String,
    method: Method,
    segs: Vec<Seg>,
}

/// What a matching rule says about a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Allowed<'r> {
    pub rule: &'r Rule,
    /// The provider instance id the path names, which the caller must own.
    pub instance: Option<String>,
}

fn segments(path: &str) -> Option<(Vec<&str>, bool)> {
    let rest = path.strip_prefix('/')?;
    let trailing = rest.ends_with('/');
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return None;
    }
    Some((segs, trailing))
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, String> {
        let (m, path) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("`{text}`: expected `METHOD /path`"))?;
        let method: Method = m
            .parse()
            .map_err(|_| format!("`{text}`: `{m}` is not an HTTP method"))?;
        // providers treat a trailing slash loosely (providers.md §1.2): either form matches
        let (raw, _) = segments(path.trim()).ok_or_else(|| {
            format!("`{text}`: the path must start with / and have no empty segments")
        })?;
        let n = raw.len();
        let segs = raw
            .iter()
            .enumerate()
            .map(|(i, s)| match *s {
                "{instance}" => Ok(Seg::Instance),
                "*" if i == n - 1 => Ok(Seg::Rest),
                "*" => Err(format!("`{text}`: `*` only at the end")),
                lit => Ok(Seg::Lit(lit.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            text: text.trim().to_owned(),
            method,
            segs,
        })
    }

    fn matches(&self, method: &Method, path: &str) -> Option<Option<String>> {
        if *method != self.method {
            return None;
        }
        let (segs, _) = segments(path)?;
        let mut instance = None;
        for (i, s) in self.segs.iter().enumerate() {
            match s {
                Seg::Rest => return (segs.len() > i).then_some(instance),
                Seg::Lit(l) => {
                    if segs.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
                Seg::Instance => instance = Some((*segs.get(i)?).to_owned()),
            }
        }
        (segs.len() == self.segs.len()).then_some(instance)
    }
}

/// The first rule allowing `method path`, or why none does.
pub fn check<'r>(rules: &'r [Rule], method: &Method, path: &str) -> Result<Allowed<'r>, String> {
    for r in rules {
        if let Some(instance) = r.matches(method, path) {
            return Ok(Allowed { rule: r, instance });
        }
    }
    Err(format!(
        "`{method} {}` matches no passthrough rule (allowed: {})",
        crate::error::truncate(path, 200),
        rules
            .iter()
            .map(|r| r.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<Rule> {
        crate::config::PassthroughConfig::default()
            .vastai
            .iter()
            .map(|r| Rule::parse(r).unwrap())
            .collect()
    }

    #[test]
    fn instance_paths_bind_the_instance() {
        let r = rules();
        let a = check(&r, &Method::GET, "/api/v0/instances/123/").unwrap();
        assert_eq!(a.instance.as_deref(), Some("123"));
        assert_eq!(a.rule.text, "GET /api/v0/instances/{instance}/");
        let a = check(&r, &Method::PUT, "/api/v0/instances/reboot/55").unwrap();
        assert_eq!(a.instance.as_deref(), Some("55"));
        let a = check(&r, &Method::POST, "/api/v0/bundles/").unwrap();
        assert_eq!(a.instance, None);
    }

    #[test]
    fn everything_else_is_refused() {
        let r = rules();
        for (m, p) in [
            (Method::GET, "/api/v1/instances/"),
            (Method::DELETE, "/api/v0/instances/123/"),
            (Method::PUT, "/api/v0/asks/5000/"),
            (Method::GET, "/api/v0/users/current/"),
            (Method::GET, "/api/v0/instances/123/../../users/current/"),
            (Method::GET, "/api/v0/instances//"),
            (Method::GET, "api/v0/instances/1/"),
        ] {
            let e = check(&r, &m, p).unwrap_err();
            assert!(e.contains("matches no passthrough rule"), "{m} {p}");
        }
    }

    #[test]
    fn rules_are_validated() {
        assert!(Rule::parse("GET /a/*").is_ok());
        assert!(Rule::parse("GET /a/*/b").is_err());
        assert!(Rule::parse("FETCH").is_err());
        assert!(Rule::parse("GET a").is_err());
        let r = [Rule::parse("GET /files/*").unwrap()];
        assert!(check(&r, &Method::GET, "/files/x/y").is_ok());
        assert!(check(&r, &Method::GET, "/files/").is_err());
    }
}
