//! Typed query strings.
//!
//! [`query`] reads a query string into a serde struct: every parameter checked (broken
//! percent-encoding, a control character, a name given twice, a name the struct does not have)
//! and every value converted, each refusal a 400 naming the parameter. Handlers declare what
//! they take as a struct, so the same input type serves every carrier (REST, MCP, later gRPC)
//! and the API description.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, truncate};
use crate::types::text::percent_decode;

fn invalid(name: &str, why: impl std::fmt::Display) -> Error {
    Error::bad_request(format!(
        "invalid query parameter `{}`: {why}",
        truncate(name, 64)
    ))
}

/// Reads `q` into `T` (a struct of the parameters a route takes; see the module header).
pub fn query<T: DeserializeOwned>(q: Option<&str>) -> Result<T> {
    let known = fields_of::<T>();
    // checked here, then read by serde from the query text itself (nothing is decoded into a
    // second string to be encoded again)
    let mut seen: Vec<&'static str> = Vec::new();
    let text = q.unwrap_or("");
    for raw in text.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
        let k = percent_decode(&k.replace('+', " ")).ok_or_else(|| {
            Error::bad_request("invalid query: a parameter name with broken percent-encoding")
        })?;
        let Some(&name) = known.iter().find(|n| **n == k) else {
            return Err(Error::bad_request(if known.is_empty() {
                format!(
                    "unknown query parameter `{}` (this route takes none)",
                    truncate(&k, 64)
                )
            } else {
                format!(
                    "unknown query parameter `{}` (known: {})",
                    truncate(&k, 64),
                    known.join(", ")
                )
            }));
        };
        if percent_decode(&v.replace('+', " ")).is_none() {
            return Err(invalid(
                name,
                "broken percent-encoding or a control character",
            ));
        }
        if seen.contains(&name) {
            return Err(invalid(name, "given more than once"));
        }
        seen.push(name);
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(text.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let name = e.path().to_string();
        if name == "." {
            Error::bad_request(format!("invalid query: {}", e.into_inner()))
        } else {
            invalid(&name, e.into_inner())
        }
    })
}

/// The field names a struct's `Deserialize` asks for (what serde's derive passes to
/// `deserialize_struct`), read by a deserializer that only records them.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut p = Probe(None);
    let _ = T::deserialize(&mut p);
    p.0.unwrap_or(&[])
}

/// A route that takes no query parameters.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// An integer within `MIN..=MAX` read from its text (query values are text); the refusal says
/// the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Bounded<const MIN: i64, const MAX: i64>(pub i64);

/// A scalar as text, whether it came as text (a query string) or as a JSON number or boolean
/// (an MCP tool's arguments), for types that parse their own text.
pub fn scalar_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("text or a number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Text)
}

/// Reads an MCP tool's JSON arguments into `T` (the same type the REST route reads its query
/// into), each refusal naming the argument.
pub fn arguments<T: DeserializeOwned>(
    args: serde_json::Map<String, serde_json::Value>,
) -> Result<T> {
    serde_path_to_error::deserialize(serde_json::Value::Object(args)).map_err(|e| {
        let name = e.path().to_string();
        let inner = e.into_inner();
        if name == "." {
            Error::bad_request(format!("invalid arguments: {inner}"))
        } else {
            Error::bad_request(format!(
                "invalid argument `{}`: {inner}",
                truncate(&name, 64)
            ))
        }
    })
}

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = scalar_text(d)?;
        s.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (MIN..=MAX).contains(n))
            .map(Bounded)
            .ok_or_else(|| {
                de::Error::custom(if MAX == i64::MAX {
                    format!("an integer of at least {MIN}")
                } else {
                    format!("an integer from {MIN} to {MAX}")
                })
            })
    }
}

impl<const MIN: i64, const MAX: i64> schemars::JsonSchema for Bounded<MIN, MAX> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Bounded_{MIN}_{MAX}").into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "minimum": MIN, "maximum": MAX})
    }
}

/// A page size (`limit=`) of the list routes: 1 to 200.
pub type Limit = Bounded<1, 200>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Q {
        limit: Option<Limit>,
        name: Option<String>,
        on: Option<bool>,
    }

    #[test]
    fn queries_are_read_into_types_and_every_refusal_names_the_parameter() {
        let q: Q = query(Some("limit=7&name=a%20b+c&on=true")).unwrap();
        assert_eq!(
            q,
            Q {
                limit: Some(Bounded(7)),
                name: Some("a b c".into()),
                on: Some(true)
            }
        );
        let q: Q = query(None).unwrap();
        assert_eq!(q.limit, None);
        for (bad, says) in [
            ("limit=0", "`limit`: an integer from 1 to 200"),
            ("limit=x", "`limit`"),
            ("limit=1&limit=2", "`limit`: given more than once"),
            ("name=%zz", "`name`: broken percent-encoding"),
            ("name=%00", "`name`"),
            ("on=maybe", "`on`"),
            (
                "other=1",
                "unknown query parameter `other` (known: limit, name, on)",
            ),
        ] {
            let e = query::<Q>(Some(bad)).unwrap_err();
            assert_eq!(e.kind.status(), hyper::StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Required {
            #[allow(dead_code)]
            ms: Bounded<0, 10>,
        }
        let e = query::<Required>(None).unwrap_err();
        assert!(e.to_string().contains("missing field `ms`"), "{e}");
        let e = query::<NoQuery>(Some("x=1")).unwrap_err();
        assert!(e.to_string().contains("this route takes none"), "{e}");
        assert!(query::<NoQuery>(Some("")).is_ok());
    }
}
