//! Passthrough rules: which provider API calls a client may make through
//! `/v1/providers/{provider}/{path}` (each provider table's `passthrough` list).
//!
//! A rule is `METHOD /path/with/{instance}/segments [body=key,key] [query=name,name]`;
//! `{instance}` matches one segment (at most one per rule) and names an instance (the caller must
//! own it: checked by the handler against the ledger); a final `*` matches any rest; `body=`
//! limits the JSON body to those top-level keys (Vast's `PUT /api/v0/instances/{id}/` also
//! changes the label, which the reconciler reads our id from, so the default rule forwards only
//! `state`); `query=` names the query parameters forwarded (none without it). Matching is on the
//! decoded path, segment by segment; `.` and `..` segments and empty paths never match; what is
//! forwarded is that decoded path and query, encoded again ([`forward_path`],
//! [`Rule::forward_query`]), never the client's raw text.
//!
//! No rule may reach an `ssh` path, and no request path with an `ssh` segment passes: Vast's
//! `POST /api/v0/ssh/` adds a key to every instance of the (shared) provider account.

use hyper::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Instance,
    Rest,
}

/// Read from config as its text (`serde(try_from)`): a rule that does not parse is a config
/// error naming it, and nothing parses it again later.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rule {
    pub text: String,
    method: Method,
    segs: Vec<Seg>,
    /// The JSON body keys the rule forwards; `None` = any body.
    pub body_keys: Option<Vec<String>>,
    /// The query parameters the rule forwards (none when empty).
    pub query_keys: Vec<String>,
}

/// Path segments no rule and no request may contain.
const FORBIDDEN_SEGMENTS: &[&str] = &["ssh"];

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

impl TryFrom<String> for Rule {
    type Error = String;

    fn try_from(s: String) -> Result<Rule, String> {
        Rule::parse(&s)
    }
}

impl From<Rule> for String {
    fn from(r: Rule) -> String {
        r.text
    }
}

impl Rule {
    /// Whether `body` may be forwarded under this rule: with `body=`, a JSON object with only
    /// those keys (an empty body passes). The error names the first key refused.
    pub fn check_body(&self, body: &[u8]) -> Result<(), String> {
        let Some(keys) = &self.body_keys else {
            return Ok(());
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| format!("the body must be a JSON object (rule `{}`)", self.text))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("the body must be a JSON object (rule `{}`)", self.text))?;
        match obj.keys().find(|k| !keys.contains(k)) {
            Some(k) => Err(format!(
                "body key `{}` is not forwarded (rule `{}` allows: {})",
                crate::types::text::truncate(k, 64),
                self.text,
                keys.join(", ")
            )),
            None => Ok(()),
        }
    }

    /// The query the provider gets: the client's parameters, decoded, each one the rule names,
    /// encoded again. The error names the first parameter refused.
    pub fn forward_query(&self, query: Option<&str>) -> Result<Option<String>, String> {
        let Some(q) = query.filter(|q| !q.is_empty()) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |x: &str| crate::types::text::percent_decode(&x.replace('+', " "));
            let (Some(k), Some(v)) = (decode(k), decode(v)) else {
                return Err("the query has broken percent-encoding or a control character".into());
            };
            if !self.query_keys.contains(&k) {
                return Err(format!(
                    "query parameter `{}` is not forwarded (rule `{}` allows: {})",
                    crate::types::text::truncate(&k, 64),
                    self.text,
                    if self.query_keys.is_empty() {
                        "none".to_owned()
                    } else {
                        self.query_keys.join(", ")
                    }
                ));
            }
            out.push(format!(
                "{}={}",
                crate::types::text::percent_encode(&k),
                crate::types::text::percent_encode(&v)
            ));
        }
        Ok((!out.is_empty()).then(|| out.join("&")))
    }

    pub fn parse(text: &str) -> Result<Rule, String> {
        let mut words = text.split_whitespace();
        let (Some(m), Some(path)) = (words.next(), words.next()) else {
            return Err(format!(
                "`{text}`: expected `METHOD /path [body=key,…] [query=name,…]`"
            ));
        };
        let list = |w: &str| -> Vec<String> {
            w.split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (mut body_keys, mut query_keys) = (None, None);
        for w in words {
            if let Some(keys) = w.strip_prefix("body=")
                && body_keys.is_none()
            {
                // `body=` alone: no keys (an empty body or `{}`)
                body_keys = Some(list(keys));
            } else if let Some(keys) = w.strip_prefix("query=")
                && query_keys.is_none()
            {
                query_keys = Some(list(keys));
            } else {
                return Err(format!(
                    "`{text}`: after the path only `body=key,…` and `query=name,…` may follow, once each"
                ));
            }
        }
        let method: Method = m
            .parse()
            .map_err(|_| format!("`{text}`: `{m}` is not an HTTP method"))?;
        // providers treat a trailing slash loosely (docs/providers.md, "Offers and other quirks"): either form matches
        let (raw, _) = segments(path.trim()).ok_or_else(|| {
            format!("`{text}`: the path must start with / and have no empty segments")
        })?;
        let n = raw.len();
        if raw.iter().filter(|s| **s == "{instance}").count() > 1 {
            return Err(format!(
                "`{text}`: at most one `{{instance}}` per rule (each must be checked against the ledger)"
            ));
        }
        let segs = raw
            .iter()
            .enumerate()
            .map(|(i, s)| match *s {
                "{instance}" => Ok(Seg::Instance),
                "*" if i == n - 1 => Ok(Seg::Rest),
                "*" => Err(format!("`{text}`: `*` only at the end")),
                lit if FORBIDDEN_SEGMENTS.contains(&lit) => Err(format!(
                    "`{text}`: `{lit}` paths are never forwarded (they reach every tenant's instances)"
                )),
                lit => Ok(Seg::Lit(lit.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            method,
            segs,
            body_keys,
            query_keys: query_keys.unwrap_or_default(),
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

/// The decoded path `path` encoded again, segment by segment, for the provider: what it gets is
/// what was matched, whatever encoding the client chose.
pub fn forward_path(path: &str) -> String {
    path.split('/')
        .map(crate::types::text::percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// The first rule allowing `method path`, or why none does.
pub fn check<'r>(rules: &'r [Rule], method: &Method, path: &str) -> Result<Allowed<'r>, String> {
    if path
        .split('/')
        .any(|s| FORBIDDEN_SEGMENTS.iter().any(|f| s.eq_ignore_ascii_case(f)))
    {
        return Err(format!(
            "`{method} {}`: SSH key paths are never forwarded; use /v1/ssh-keys and `ssh_key_ids`",
            crate::types::text::truncate(path, 200)
        ));
    }
    for r in rules {
        if let Some(instance) = r.matches(method, path) {
            return Ok(Allowed { rule: r, instance });
        }
    }
    Err(format!(
        "`{method} {}` matches no passthrough rule (allowed: {})",
        crate::types::text::truncate(path, 200),
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
        crate::config::ProvidersConfig::default().tables["vastai"]
            .passthrough
            .clone()
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
        // nothing reaches an ssh path, whatever the rules say
        assert!(Rule::parse("POST /api/v0/ssh/").is_err());
        assert!(Rule::parse("POST /api/v0/instances/{instance}/ssh/").is_err());
        let any = [Rule::parse("POST /api/*").unwrap()];
        assert!(check(&any, &Method::POST, "/api/v0/ssh/").is_err());
        assert!(check(&any, &Method::POST, "/api/v0/instances/1/SSH/").is_err());
        let empty = Rule::parse("PUT /a body=").unwrap();
        assert!(empty.check_body(b"{}").is_ok());
        assert!(empty.check_body(br#"{"x": 1}"#).is_err());
        assert!(Rule::parse("PUT /a label=x").is_err());
        assert!(Rule::parse("PUT /a body= body=x").is_err());
        // two instances, of which only one would be checked
        assert!(Rule::parse("GET /i/{instance}/to/{instance}").is_err());
        assert!(Rule::parse("GET /i/{instance}/logs query=tail body=").is_ok());
    }

    #[test]
    fn only_named_query_parameters_are_forwarded_encoded_again() {
        let r = Rule::parse("GET /price query=hardware_id,location_ids").unwrap();
        assert_eq!(r.forward_query(None).unwrap(), None);
        assert_eq!(
            r.forward_query(Some("hardware_id=12&location_ids=%5B%22US%22%5D"))
                .unwrap()
                .as_deref(),
            Some("hardware_id=12&location_ids=%5B%22US%22%5D")
        );
        assert_eq!(
            r.forward_query(Some("hardware_id=a+b")).unwrap().as_deref(),
            Some("hardware_id=a%20b")
        );
        let e = r
            .forward_query(Some("hardware_id=1&api_key=x"))
            .unwrap_err();
        assert!(e.contains("`api_key`"), "{e}");
        assert!(r.forward_query(Some("hardware_id=%00")).is_err());
        let none = Rule::parse("GET /a").unwrap();
        assert!(
            none.forward_query(Some("x=1"))
                .unwrap_err()
                .contains("none")
        );
        assert_eq!(
            forward_path("/api/v0/instances/a b/"),
            "/api/v0/instances/a%20b/"
        );
        assert_eq!(forward_path("/a/%2F/"), "/a/%252F/");
    }

    #[test]
    fn body_rules_forward_only_their_keys() {
        let r = rules();
        let a = check(&r, &Method::PUT, "/api/v0/instances/7/").unwrap();
        assert!(a.rule.check_body(br#"{"state": "stopped"}"#).is_ok());
        assert!(a.rule.check_body(b"").is_ok());
        let e = a
            .rule
            .check_body(br#"{"state": "running", "label": "x"}"#)
            .unwrap_err();
        assert!(e.contains("`label`"), "{e}");
        assert!(a.rule.check_body(b"[1]").is_err());
        assert!(a.rule.check_body(b"not json").is_err());
        // the default rules: no label changes, no ssh
        for rule in rules() {
            assert!(rule.check_body(br#"{"label": "x"}"#).is_err() || rule.method != Method::PUT);
        }
    }
}
