//! Short text helpers shared by every layer: cutting echoed input, percent-encoding.

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

#[cfg(test)]
mod tests {
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
