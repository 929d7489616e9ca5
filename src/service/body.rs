//! JSON bodies into their types: whatever carried them (an HTTP body, an MCP tool's arguments),
//! with errors that name the field at fault.

use serde::de::DeserializeOwned;

use crate::error::Error;

/// `bytes` as `T`; empty (or blank) is `None`. Errors name the field at fault.
///
/// JSON has one number type: `8.0` is the integer 8 to JSON Schema (and to the OpenAPI document
/// clients generate requests from), so integral numbers written with a fraction are read as
/// integers before the typed fields see them. `null` is refused (leave the field out) except in
/// the [`NULLABLE`] fields, where it means "none": an optional field would otherwise take `null`
/// silently as "absent", which the OpenAPI document does not say. Strings may not hold NUL
/// (PostgreSQL's text cannot).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))?;
    normalize(&mut value, &mut String::new())?;
    serde_path_to_error::deserialize(value)
        .map(Some)
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                Error::bad_request(format!("invalid JSON body: {inner}"))
            } else {
                Error::bad_request(format!("invalid JSON body at `{path}`: {inner}"))
            }
        })
}

pub use crate::types::schema::NULLABLE;

/// Rewrites every number with a zero fraction that an `i64` holds exactly (|n| < 2^53) as an
/// integer, and refuses `null` outside [`NULLABLE`] (`path` names the member, for the error).
fn normalize(v: &mut serde_json::Value, path: &mut String) -> Result<(), Error> {
    use serde_json::Value;
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Null if !NULLABLE.contains(&path.as_str()) => {
            let at = if path.is_empty() { "." } else { path.as_str() };
            return Err(Error::bad_request(format!(
                "invalid JSON body at `{at}`: null (leave the field out instead)"
            )));
        }
        Value::String(t) if t.contains('\0') => {
            return Err(Error::bad_request(format!(
                "invalid JSON body at `{path}`: a NUL character (\\u0000) is not allowed"
            )));
        }
        Value::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                normalize(item, path)?;
                path.truncate(len);
            }
        }
        Value::Object(o) => {
            for (k, item) in o.iter_mut() {
                if k.contains('\0') {
                    return Err(Error::bad_request(
                        "invalid JSON body: a NUL character (\\u0000) in a member name",
                    ));
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                normalize(item, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Hours {
        hours: u32,
        price: Option<f64>,
    }

    #[test]
    fn integral_numbers_with_a_fraction_are_integers() {
        let h: Hours = parse(br#"{"hours": 220.0, "price": 2.0}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Hours {
                hours: 220,
                price: Some(2.0)
            }
        );
        let e = parse::<Hours>(br#"{"hours": 2.5}"#).unwrap_err();
        assert!(e.to_string().contains("`hours`"), "{e}");
        let e = parse::<Hours>(br#"{"hours": 1e300}"#).unwrap_err();
        assert!(e.to_string().contains("`hours`"), "{e}");
        let e = parse::<Hours>(br#"{"hours": "#).unwrap_err();
        assert!(e.to_string().contains("invalid JSON body"), "{e}");
        assert_eq!(parse::<Hours>(b"  ").unwrap(), None);
    }

    #[test]
    fn null_is_refused_except_where_it_means_none() {
        let e = parse::<Hours>(br#"{"hours": 2, "price": null}"#).unwrap_err();
        assert!(e.to_string().contains("`price`: null"), "{e}");
        #[derive(serde::Deserialize, Debug)]
        struct Cap {
            #[allow(dead_code)]
            spend_limit_usd: Option<f64>,
            #[allow(dead_code)]
            #[serde(default)]
            tags: Vec<Option<String>>,
        }
        assert!(parse::<Cap>(br#"{"spend_limit_usd": null}"#).is_ok());
        let e = parse::<Cap>(br#"{"tags": ["a", null]}"#).unwrap_err();
        assert!(e.to_string().contains("`tags[1]`: null"), "{e}");
        let e = parse::<Cap>(br#"{"tags": ["a\u0000b"]}"#).unwrap_err();
        assert!(e.to_string().contains("`tags[0]`: a NUL"), "{e}");
        assert!(parse::<Cap>(br#"{"x\u0000": 1}"#).is_err());
    }
}
