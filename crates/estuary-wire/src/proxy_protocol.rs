//! The PROXY protocol header a TCP load balancer (HAProxy `send-proxy` / `send-proxy-v2`)
//! puts in front of a connection to say whose connection it is
//! (<https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>). Versions 1 (one text line)
//! and 2 (binary). Without I/O: the server reads the bytes, this says what they mean.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::WireError;

/// The version 2 signature: the first 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The version 1 prefix.
pub const V1_PREFIX: &[u8] = b"PROXY ";

/// Version 1: the longest line, CRLF included (the specification's 107 bytes).
pub const V1_MAX_LEN: usize = 107;

/// Version 2: the longest header accepted (16 bytes, then addresses and TLVs). HAProxy sends
/// 28 (IPv4) or 52 (IPv6) bytes plus any TLVs it was told to add.
pub const V2_MAX_LEN: usize = 16 + 1024;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedSource {
    /// The client's address and port.
    Client(SocketAddr),
    /// The load balancer's own connection (a health check: v2 LOCAL), or a family it does not
    /// name (v1 UNKNOWN, v2 UNSPEC/UNIX): the connection's own address stands.
    Unknown,
}

/// How many bytes the header at the start of a version 2 connection has in all, from its first
/// 16 bytes; an error if they are not a version 2 header.
pub fn v2_length(first16: &[u8; 16]) -> Result<usize, WireError> {
    if first16[..12] != V2_SIGNATURE {
        return Err(malformed("not a PROXY protocol version 2 signature"));
    }
    if first16[12] >> 4 != 2 {
        return Err(malformed("not version 2"));
    }
    let length = 16 + usize::from(u16::from_be_bytes([first16[14], first16[15]]));
    if length > V2_MAX_LEN {
        return Err(malformed("version 2 header longer than 1,040 bytes"));
    }
    Ok(length)
}

/// Parses a whole version 2 header (its length from [`v2_length`]).
pub fn parse_v2(header: &[u8]) -> Result<ProxiedSource, WireError> {
    let first16: &[u8; 16] = header
        .get(..16)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| malformed("version 2 header shorter than 16 bytes"))?;
    let length = v2_length(first16)?;
    if header.len() != length {
        return Err(malformed("version 2 header length does not match"));
    }
    let addresses = &header[16..];
    match first16[12] & 0x0f {
        // LOCAL: the load balancer's own connection (health checks).
        0x0 => return Ok(ProxiedSource::Unknown),
        0x1 => {}
        _ => return Err(malformed("version 2 command neither LOCAL nor PROXY")),
    }
    let port = |bytes: &[u8]| u16::from_be_bytes([bytes[0], bytes[1]]);
    match first16[13] {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = addresses
                .get(..12)
                .ok_or_else(|| malformed("version 2 IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            client(SocketAddr::new(IpAddr::V4(ip), port(&a[8..10])))
        }
        // TCP over IPv6.
        0x21 => {
            let a = addresses
                .get(..36)
                .ok_or_else(|| malformed("version 2 IPv6 addresses cut short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(&a[32..34]),
            ))
        }
        // UNSPEC, UDP, UNIX: nothing usable as a client address.
        _ => Ok(ProxiedSource::Unknown),
    }
}

/// Parses a version 1 line, `PROXY TCP4 SRC DST SPORT DPORT\r\n` (or `TCP6`, or `UNKNOWN ...`),
/// CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<ProxiedSource, WireError> {
    if line.len() > V1_MAX_LEN {
        return Err(malformed("version 1 line longer than 107 bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|_| malformed("version 1 line is not text"))?;
    let text = text
        .strip_suffix("\r\n")
        .ok_or_else(|| malformed("version 1 line does not end in CRLF"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(malformed("version 1 line does not begin with PROXY"));
    }
    let family = fields.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Ok(ProxiedSource::Unknown);
    }
    let (source, destination, source_port, destination_port) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(s), Some(d), Some(sp), Some(dp), None) => (s, d, sp, dp),
        _ => {
            return Err(malformed(
                "version 1 line needs four fields after the family",
            ))
        }
    };
    let address = |text: &str| -> Result<IpAddr, WireError> {
        match family {
            "TCP4" => text
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| malformed("version 1 TCP4 address")),
            "TCP6" => text
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| malformed("version 1 TCP6 address")),
            _ => Err(malformed("version 1 family neither TCP4, TCP6 nor UNKNOWN")),
        }
    };
    // Ports are decimal without leading zeros or signs.
    let port = |text: &str| -> Result<u16, WireError> {
        if text.is_empty()
            || text.len() > 5
            || !text.bytes().all(|b| b.is_ascii_digit())
            || (text.len() > 1 && text.starts_with('0'))
        {
            return Err(malformed("version 1 port"));
        }
        text.parse().map_err(|_| malformed("version 1 port"))
    };
    let ip = address(source)?;
    address(destination)?;
    port(destination_port)?;
    client(SocketAddr::new(ip, port(source_port)?))
}

/// The client's address as the server keys it: an IPv4-mapped IPv6 address as IPv4; no
/// unspecified address or port 0 (nothing could have connected from there).
fn client(address: SocketAddr) -> Result<ProxiedSource, WireError> {
    let ip = address.ip().to_canonical();
    if ip.is_unspecified() || address.port() == 0 {
        return Err(malformed("client address unspecified or port 0"));
    }
    Ok(ProxiedSource::Client(SocketAddr::new(ip, address.port())))
}

fn malformed(detail: &'static str) -> WireError {
    WireError::malformed("PROXY protocol header", detail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn version_2_gives_the_client_address() {
        let mut a = vec![192, 0, 2, 7, 10, 0, 0, 1];
        a.extend_from_slice(&40000u16.to_be_bytes());
        a.extend_from_slice(&8085u16.to_be_bytes());
        a.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a TLV after the addresses
        let h = v2(1, 0x11, &a);
        assert_eq!(v2_length(h[..16].try_into().unwrap()).unwrap(), h.len());
        assert_eq!(
            parse_v2(&h).unwrap(),
            ProxiedSource::Client("192.0.2.7:40000".parse().unwrap())
        );
        let mut a6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        a6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        a6.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x95]);
        assert_eq!(
            parse_v2(&v2(1, 0x21, &a6)).unwrap(),
            ProxiedSource::Client("[2001:db8::7]:40000".parse().unwrap())
        );
        // A health check (LOCAL) and an unspecified family keep the connection's address.
        assert_eq!(parse_v2(&v2(0, 0x00, &[])).unwrap(), ProxiedSource::Unknown);
        assert_eq!(parse_v2(&v2(1, 0x00, &[])).unwrap(), ProxiedSource::Unknown);
    }

    #[test]
    fn bad_version_2_headers_are_refused() {
        let mut wrong = v2(1, 0x11, &[0; 12]);
        wrong[3] = b'X';
        assert!(v2_length(wrong[..16].try_into().unwrap()).is_err());
        let mut version1 = v2(1, 0x11, &[0; 12]);
        version1[12] = 0x11;
        assert!(v2_length(version1[..16].try_into().unwrap()).is_err());
        assert!(
            parse_v2(&v2(1, 0x11, &[0; 6])).is_err(),
            "addresses cut short"
        );
        assert!(parse_v2(&v2(2, 0x11, &[0; 12])).is_err(), "unknown command");
        let mut long = v2(1, 0x11, &[0; 12]);
        long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(v2_length(long[..16].try_into().unwrap()).is_err());
        assert!(parse_v2(&long).is_err());
        assert!(parse_v2(&[0; 3]).is_err());
    }

    #[test]
    fn version_1_gives_the_client_address() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8085\r\n").unwrap(),
            ProxiedSource::Client("192.0.2.7:40000".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::7 ::1 40000 8085\r\n").unwrap(),
            ProxiedSource::Client("[2001:db8::7]:40000".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN\r\n").unwrap(),
            ProxiedSource::Unknown
        );
        // An IPv4-mapped address is the IPv4 address (one key for rate limits and the audit).
        assert_eq!(
            parse_v1(b"PROXY TCP6 ::ffff:203.0.113.8 ::1 40000 8085\r\n").unwrap(),
            ProxiedSource::Client("203.0.113.8:40000".parse().unwrap())
        );
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8085\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 8085\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 040000 8085\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 70000 8085\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 8085\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 40000 8085\r\n",
            b"PROXY TCP4 203.0.113.11 garbage 1 8085\r\n",
            b"PROXY TCP4 203.0.113.11 10.0.0.1 1 99999\r\n",
            b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 0 8085\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_v1(&[b'P'; 200]).is_err());
    }
}
