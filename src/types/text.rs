//! Short text helpers shared by every layer: cutting echoed input, percent-encoding, RFC 3339
//! times.

/// Cuts client-supplied text echoed in a message, on a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What `percent_encode` leaves as is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Encodes everything but unreserved characters (RFC 3986) as `%XX`, for query values.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Decodes `%XX` escapes of a path parameter or query value; `None` when they are broken (the
/// crate would pass a stray `%` through; a value with one is refused instead), not UTF-8, or
/// decode to a control character (a NUL reaches PostgreSQL as an encoding error otherwise; no
/// id, name or filter has one).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let broken = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if broken {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .filter(|c| !c.chars().any(char::is_control))
        .map(|c| c.into_owned())
}

/// An ISO 3166-1 alpha-2 country code, upper-cased (`us` → `US`), or `None` when `c` is not two
/// letters.
pub fn iso_country(c: &str) -> Option<String> {
    (c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic())).then(|| c.to_ascii_uppercase())
}

/// A time as the API shows it: RFC 3339 in UTC with milliseconds, `None` when unknown.
pub fn rfc3339_of(epoch: Option<f64>) -> Option<String> {
    epoch.filter(|e| e.is_finite() && *e >= 0.0).map(|e| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(e),
        )
        .to_string()
    })
}

/// Seconds since the epoch of an RFC 3339 time: `2026-12-24T18:00:00Z` or with an offset
/// (`…T20:00:00+02:00`), fractions of a second allowed. A time without a zone is refused: whose
/// clock it means is not known.
pub fn rfc3339(s: &str) -> Option<f64> {
    let (local, offset) = match s.strip_suffix(['Z', 'z']) {
        Some(l) => (l, 0i64),
        None => {
            let at = s.len().checked_sub(6)?;
            let (l, z) = (s.get(..at)?, s.get(at..)?.as_bytes());
            let sign = match z[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from((a - b'0') * 10 + b - b'0'))
            };
            let (h, m) = (digits(z[1], z[2])?, digits(z[4], z[5])?);
            if z[3] != b':' || h > 23 || m > 59 {
                return None;
            }
            (l, sign * (h * 3600 + m * 60))
        }
    };
    // the date, `T`, the time: nothing else before the zone
    if local.len() < 19 || !matches!(local.as_bytes()[10], b'T' | b't') {
        return None;
    }
    let t = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    Some(secs - offset as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_times_need_a_zone_and_take_offsets() {
        let utc = rfc3339("2026-12-24T18:00:00Z").unwrap();
        assert_eq!(rfc3339("2026-12-24T20:00:00+02:00"), Some(utc));
        assert_eq!(rfc3339("2026-12-24T13:30:00-04:30"), Some(utc));
        assert_eq!(rfc3339("2026-12-24T18:00:00.500Z"), Some(utc + 0.5));
        for bad in [
            "2026-12-24T18:00:00",
            "2026-12-24 18:00:00Z",
            "2026-12-24",
            "2026-12-24T18:00:00+2:00",
            "2026-12-24T18:00:00+24:00",
            "2026-12-24T18:00:00+02-00",
            "2026-13-24T18:00:00Z",
            "",
            "Z",
            "é2026-12-24T18:00:00+02:00",
        ] {
            assert_eq!(rfc3339(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn percent_round_trips_and_refuses_broken_escapes() {
        assert_eq!(percent_encode("a b/é~"), "a%20b%2F%C3%A9~");
        assert_eq!(percent_decode("a%20b%2F%C3%A9~").as_deref(), Some("a b/é~"));
        for control in ["%00", "a%00b", "%0A", "%7F", "%C2%85"] {
            assert_eq!(percent_decode(control), None, "{control}");
        }
        for bad in ["bad%2", "%zz", "%", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
        assert_eq!(truncate("héllo", 2), "h");
    }
}
