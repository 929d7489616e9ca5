//! PROXY protocol v1 (text) and v2 (binary), as sent by HAProxy (`send-proxy`, `send-proxy-v2`)
//! before anything else on the connection — before the TLS ClientHello too.
//!
//! On a listener that enables it, a connection from a trusted address must start with a header,
//! whose source address becomes the client address; a connection from any other address is served
//! as a direct client, unless it starts with a header, which is refused (someone forging their
//! address). [`parse`] is a pure function over the bytes received so far; [`read_header`] feeds
//! it from the socket and hands back whatever it read past the header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// v1 lines are at most 107 bytes including CRLF (the spec's limit).
pub const V1_MAX: usize = 107;
/// Largest v2 header accepted (16-byte preamble + addresses + TLVs). HAProxy's are far smaller;
/// the protocol allows 64 KiB, which would let a peer make us buffer that much per socket.
pub const V2_MAX: usize = 16 + 2048;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client; `None` for v2 LOCAL (a health check by the proxy itself), v1 UNKNOWN,
    /// or an address family we do not route (UNSPEC, UNIX): the peer address is used.
    pub source: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    Complete {
        header: ProxyHeader,
        consumed: usize,
    },
    /// A prefix of a valid header: more bytes are needed.
    Incomplete,
    /// Does not start like a PROXY header at all.
    NotProxy,
    Invalid(&'static str),
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    if buf.is_empty() {
        return Parse::Incomplete;
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if buf.len() < 16 {
            Parse::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return if buf.len() < V1_PREFIX.len() {
            Parse::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    Parse::NotProxy
}

fn parse_v1(buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parse::Invalid("v1 header longer than 107 bytes")
        } else if window.contains(&b'\n') {
            Parse::Invalid("v1 header has a bare LF")
        } else {
            Parse::Incomplete
        };
    };
    let consumed = cr + 2;
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..cr]) else {
        return Parse::Invalid("v1 header is not ASCII");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.first().copied() {
        Some("UNKNOWN") => Parse::Complete {
            header: ProxyHeader { source: None },
            consumed,
        },
        Some(proto @ ("TCP4" | "TCP6")) => {
            if parts.len() != 5 {
                return Parse::Invalid("v1 header needs 4 fields after the protocol");
            }
            let src: Option<IpAddr> = match proto {
                "TCP4" => parts[1].parse::<Ipv4Addr>().ok().map(IpAddr::V4),
                _ => parts[1].parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            };
            let dst_ok = match proto {
                "TCP4" => parts[2].parse::<Ipv4Addr>().is_ok(),
                _ => parts[2].parse::<Ipv6Addr>().is_ok(),
            };
            let port = |s: &str| {
                // the spec forbids leading zeros and signs
                (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<u16>().ok())
                    .flatten()
            };
            match (src, dst_ok, port(parts[3]), port(parts[4])) {
                (Some(ip), true, Some(sport), Some(_)) => Parse::Complete {
                    header: ProxyHeader {
                        source: Some(SocketAddr::new(ip, sport)),
                    },
                    consumed,
                },
                _ => Parse::Invalid("v1 header has a bad address or port"),
            }
        }
        _ => Parse::Invalid("v1 header has an unknown protocol"),
    }
}

fn parse_v2(buf: &[u8]) -> Parse {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Parse::Invalid("v2 header has a wrong version");
    }
    let cmd = ver_cmd & 0x0f;
    if cmd > 1 {
        return Parse::Invalid("v2 header has an unknown command");
    }
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + len > V2_MAX {
        return Parse::Invalid("v2 header is oversized");
    }
    if buf.len() < 16 + len {
        return Parse::Incomplete;
    }
    let body = &buf[16..16 + len];
    let consumed = 16 + len;
    let (source, addr_len) = match fam >> 4 {
        0 => (None, 0),
        1 => {
            if len < 12 {
                return Parse::Invalid("v2 INET addresses truncated");
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            (Some(SocketAddr::new(IpAddr::V4(ip), port)), 12)
        }
        2 => {
            if len < 36 {
                return Parse::Invalid("v2 INET6 addresses truncated");
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            (
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)),
                36,
            )
        }
        3 => {
            if len < 216 {
                return Parse::Invalid("v2 UNIX addresses truncated");
            }
            (None, 216)
        }
        _ => return Parse::Invalid("v2 header has an unknown address family"),
    };
    if fam & 0x0f > 2 {
        return Parse::Invalid("v2 header has an unknown transport");
    }
    // TLVs: each must fit exactly; their contents are not used.
    let mut tlvs = &body[addr_len..];
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Parse::Invalid("v2 TLV truncated");
        }
        let l = u16::from_be_bytes([tlvs[1], tlvs[2]]) as usize;
        if tlvs.len() < 3 + l {
            return Parse::Invalid("v2 TLV longer than the header");
        }
        tlvs = &tlvs[3 + l..];
    }
    let source = if cmd == 0 { None } else { source };
    Parse::Complete {
        header: ProxyHeader { source },
        consumed,
    }
}

/// Why reading a header failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// A trusted peer sent no valid header (or closed early).
    Invalid(&'static str),
    /// An untrusted peer sent a header.
    Untrusted,
    Io(String),
}

/// Reads from a fresh connection until it is clear whether it starts with a PROXY header.
/// Returns the client address to use and the bytes read past the header (to be replayed).
/// The caller bounds it with a timeout.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: bool,
) -> Result<(SocketAddr, Bytes), HeaderError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match parse(&buf) {
            Parse::Incomplete => {}
            Parse::NotProxy if !trusted => return Ok((peer, buf.freeze())),
            Parse::NotProxy => return Err(HeaderError::Invalid("no PROXY header")),
            _ if !trusted => return Err(HeaderError::Untrusted),
            Parse::Invalid(why) => return Err(HeaderError::Invalid(why)),
            Parse::Complete { header, consumed } => {
                let rest = buf.split_off(consumed).freeze();
                return Ok((header.source.unwrap_or(peer), rest));
            }
        }
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(256);
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| HeaderError::Io(e.to_string()))?;
        if n == 0 {
            return Err(if trusted {
                HeaderError::Invalid("closed before the PROXY header ended")
            } else {
                HeaderError::Untrusted
            });
        }
    }
}

/// Builds a v2 header (used by the load tool and tests).
pub fn encode_v2(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Parse::Complete { header, consumed } => (header, consumed),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let (h, n) = complete(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET /");
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(n, 45);
        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n");
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let (h, _) = complete(b"PROXY UNKNOWN ffff::1 whatever\r\n");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_rejects() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert!(
                matches!(parse(bad), Parse::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long), Parse::Invalid(_)));
    }

    #[test]
    fn v2_inet_inet6_local_and_tlvs() {
        let src: SocketAddr = "203.0.113.7:4000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let mut h = encode_v2(src, dst);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(complete(&h), (ProxyHeader { source: Some(src) }, len));

        let src6: SocketAddr = "[2001:db8::5]:1234".parse().unwrap();
        let h = encode_v2(src6, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(complete(&h).0.source, Some(src6));

        // LOCAL command: use the peer address
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(complete(&local), (ProxyHeader { source: None }, 16));

        // with TLVs (unknown types are skipped)
        let mut t = encode_v2(src, dst);
        let tlvs = [0x01u8, 0, 2, b'h', b'2', 0xEE, 0, 0];
        let new_len = 12 + tlvs.len() as u16;
        t[14..16].copy_from_slice(&new_len.to_be_bytes());
        t.extend_from_slice(&tlvs);
        assert_eq!(complete(&t).0.source, Some(src));
    }

    #[test]
    fn v2_rejects() {
        let src: SocketAddr = "203.0.113.7:4000".parse().unwrap();
        let good = encode_v2(src, "10.0.0.1:443".parse().unwrap());
        let mut bad_ver = good.clone();
        bad_ver[12] = 0x31;
        assert!(matches!(parse(&bad_ver), Parse::Invalid(_)));
        let mut bad_cmd = good.clone();
        bad_cmd[12] = 0x2F;
        assert!(matches!(parse(&bad_cmd), Parse::Invalid(_)));
        let mut bad_fam = good.clone();
        bad_fam[13] = 0x51;
        assert!(matches!(parse(&bad_fam), Parse::Invalid(_)));
        let mut short = good.clone();
        short[15] = 4; // INET with only 4 bytes of addresses
        assert!(matches!(parse(&short), Parse::Invalid(_)));
        let mut huge = good.clone();
        huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert!(matches!(parse(&huge), Parse::Invalid(_)), "oversized");
        let mut bad_tlv = good.clone();
        bad_tlv[14..16].copy_from_slice(&16u16.to_be_bytes());
        bad_tlv.extend_from_slice(&[0x01, 0, 9, 0]); // claims 9 bytes, has 1
        assert!(matches!(parse(&bad_tlv), Parse::Invalid(_)));
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete() {
        let v2 = encode_v2("1.2.3.4:5".parse().unwrap(), "6.7.8.9:10".parse().unwrap());
        let v1 = b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n".to_vec();
        for h in [v2, v1] {
            for i in 0..h.len() {
                assert_eq!(parse(&h[..i]), Parse::Incomplete, "prefix of {i} bytes");
            }
            assert!(matches!(parse(&h), Parse::Complete { .. }));
        }
    }

    #[test]
    fn other_protocols_are_not_proxy() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotProxy);
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Parse::NotProxy);
        assert_eq!(parse(b"PRI * HTTP/2.0"), Parse::NotProxy);
        assert_eq!(parse(b"\r\n\r\nX"), Parse::NotProxy);
    }

    /// A small deterministic generator, so the fuzz-style test needs no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn fuzz_never_panics_and_never_overreads() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let seeds: Vec<Vec<u8>> = vec![
            encode_v2("1.2.3.4:5".parse().unwrap(), "6.7.8.9:10".parse().unwrap()),
            encode_v2("[::1]:5".parse().unwrap(), "[::2]:10".parse().unwrap()),
            b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ];
        for i in 0..200_000 {
            let mut buf = seeds[i % seeds.len()].clone();
            // mutate: flip bytes, truncate, extend with junk
            for _ in 0..(rng.next() % 4) {
                let pos = (rng.next() as usize) % buf.len().max(1);
                if !buf.is_empty() {
                    buf[pos] = rng.next() as u8;
                }
            }
            match rng.next() % 3 {
                0 => buf.truncate((rng.next() as usize) % (buf.len() + 1)),
                1 => buf.extend((0..rng.next() % 64).map(|_| rng.next() as u8)),
                _ => {}
            }
            if let Parse::Complete { consumed, .. } = parse(&buf) {
                assert!(consumed <= buf.len());
                assert!(consumed <= V2_MAX.max(V1_MAX));
            }
        }
    }
}
