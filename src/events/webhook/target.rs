//! Where a webhook may send: the URL's form, and the addresses its host may reach.
//!
//! The defence against SSRF: a target is sent to only on an address that is public (not
//! private, loopback, link-local, CGNAT, multicast, documentation or otherwise reserved, in
//! IPv4, IPv6 and IPv4 carried in IPv6), unless `webhooks.allow_private_targets` is set. A name is
//! resolved at every delivery and the connection goes to the very address that was checked, so a
//! name that later resolves elsewhere (DNS rebinding) is checked again; redirects are not
//! followed (the sender treats a 3xx as a failure).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hyper::Uri;

/// The longest URL a webhook may have.
pub const MAX_URL: usize = 2048;

/// A checked target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without brackets for IPv6 literals (what TLS names and the resolver take).
    pub host: String,
    pub port: u16,
    /// `Host` header value (as written, with the port if one was).
    pub authority: String,
    pub path_and_query: String,
}

impl Target {
    /// The host as an address, when the URL names one directly.
    pub fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Checks a webhook URL's form: `http`/`https`, a host, no user information or fragment.
pub fn parse(url: &str) -> Result<Target, String> {
    if url.len() > MAX_URL || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "at most {MAX_URL} characters, without spaces or control characters"
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| "not a valid absolute URL".to_owned())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the scheme must be https or http".into()),
    };
    let authority = uri
        .authority()
        .ok_or("the URL has no host")?
        .as_str()
        .to_owned();
    if authority.contains('@') {
        return Err("credentials in the URL are not allowed (the signature authenticates)".into());
    }
    if url.contains('#') {
        return Err("a fragment is not allowed".into());
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    if port == 0 {
        return Err("port 0 is not a port".into());
    }
    let path_and_query = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok(Target {
        https,
        host,
        port,
        authority,
        path_and_query,
    })
}

/// A target whose host is an address not allowed: refused when the webhook is created. A name
/// is checked when it is resolved, at every delivery ([`check`]).
pub fn check_literal(t: &Target, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    if t.literal().is_some_and(|ip| !is_public(ip)) {
        return Err(format!(
            "{} is not a public address (webhooks.allow_private_targets is off)",
            t.host
        ));
    }
    Ok(())
}

/// The target's addresses: its host resolved (or the address it names). A failure here may
/// pass (DNS), so the delivery is retried.
pub async fn lookup(t: &Target) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = match t.literal() {
        Some(ip) => vec![SocketAddr::new(ip, t.port)],
        None => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|_| format!("cannot resolve {}", crate::error::truncate(&t.host, 64)))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{} has no address", t.host));
    }
    Ok(addrs)
}

/// Checks every address [`lookup`] found: one that is not allowed refuses the whole target (a
/// name with a private address among its public ones is not a target to trust).
pub fn check(t: &Target, addrs: &[SocketAddr], allow_private: bool) -> Result<(), String> {
    // which address, and what the daemon's resolver says of a name, is not the tenant's to
    // learn: the delivery log is theirs to read
    if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(format!(
            "{} is not a public address (webhooks.allow_private_targets is off)",
            crate::error::truncate(&t.host, 64)
        ));
    }
    Ok(())
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    !(o[0] == 0                                      // "this network"
        || o[0] == 10                                // private
        || o[0] == 127                               // loopback
        || (o[0] == 100 && o[1] & 0xc0 == 64)        // CGNAT 100.64/10
        || (o[0] == 169 && o[1] == 254)              // link-local (cloud metadata)
        || (o[0] == 172 && o[1] & 0xf0 == 16)        // private
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)   // IETF protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 2)   // documentation
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
        || (o[0] == 192 && o[1] == 168)              // private
        || (o[0] == 198 && o[1] & 0xfe == 18)        // benchmarking
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)
        || o[0] >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = a.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address it carries
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        let [h, l] = [s[6], s[7]];
        return is_public_v4(Ipv4Addr::new(
            (h >> 8) as u8,
            h as u8,
            (l >> 8) as u8,
            l as u8,
        ));
    }
    !(a.is_unspecified()
        || a.is_loopback()
        || s[0..6] == [0; 6]                // IPv4-compatible (deprecated)
        || s[0] & 0xfe00 == 0xfc00          // unique local
        || s[0] & 0xffc0 == 0xfe80          // link-local
        || s[0] & 0xff00 == 0xff00          // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, ORCHID, ...)
        || s[0] == 0x2002) // 6to4: carries an IPv4 address we do not check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn public_and_not() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert!(is_public(ip(s)), "{s}");
        }
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(s)), "{s}");
        }
        assert!(is_public(ip("::ffff:8.8.8.8")));
        assert!(is_public(ip("64:ff9b::808:808")));
    }

    #[test]
    fn urls() {
        let t = parse("https://hooks.example.com/in?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path_and_query.as_str()),
            (true, "hooks.example.com", 443, "/in?x=1")
        );
        let t = parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(t.authority, "[::1]:8080");
        for bad in [
            "ftp://x.example/",
            "/relative",
            "https://user:pw@x.example/",
            "https://x.example/#frag",
            "https://x.example/a b",
            "http://x.example:0/",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(&format!("https://x.example/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn literals_are_checked_at_once() {
        let t = |u| parse(u).unwrap();
        assert!(check_literal(&t("http://127.0.0.1:9/"), false).is_err());
        assert!(check_literal(&t("http://[::ffff:10.0.0.1]/"), false).is_err());
        assert!(check_literal(&t("http://127.0.0.1:9/"), true).is_ok());
        assert!(check_literal(&t("https://8.8.8.8/"), false).is_ok());
        // a name waits for delivery, where what it resolves to is checked
        assert!(check_literal(&t("https://hooks.example.com/"), false).is_ok());
        assert!(check_literal(&t("http://localhost/"), false).is_ok());
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let t = Target {
            host: "localhost".into(),
            ..parse("http://x.invalid:8080/").unwrap()
        };
        let addrs = lookup(&t).await.unwrap();
        assert!(addrs[0].ip().is_loopback());
        let e = check(&t, &addrs, false).unwrap_err();
        assert!(e.contains("not a public address"), "{e}");
        assert!(check(&t, &addrs, true).is_ok());
    }
}
