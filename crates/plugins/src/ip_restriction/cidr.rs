//! IPv4 and IPv6 address ranges (`10.0.0.0/8`, `2001:db8::/32`, or a single address), and
//! the matching of client addresses against them. IPv4-mapped IPv6 addresses
//! (`::ffff:10.1.2.3`, as dual-stack sockets report IPv4 clients) match IPv4 ranges.

use std::fmt;
use std::net::IpAddr;

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    /// An IPv4 network: address bits and prefix length.
    V4(u32, u8),
    /// An IPv6 network: address bits and prefix length.
    V6(u128, u8),
}

impl Cidr {
    /// Parses `addr/len` or a single address. Host bits set below the prefix are an error
    /// (`10.0.0.1/8` is most likely a typo for a narrower range).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{text}`: prefix length must be 0..={max}")),
            },
        };
        let cidr = match ip {
            IpAddr::V4(v4) => Cidr::V4(u32::from(v4), len),
            IpAddr::V6(v6) => Cidr::V6(u128::from(v6), len),
        };
        let masked = match cidr {
            Cidr::V4(bits, len) => bits & mask32(len) == bits,
            Cidr::V6(bits, len) => bits & mask128(len) == bits,
        };
        if !masked {
            return Err(format!(
                "`{text}` has bits set after the prefix; did you mean `{}`?",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, canonical(ip)) {
            (Cidr::V4(net, len), IpAddr::V4(a)) => u32::from(a) & mask32(*len) == *net,
            (Cidr::V6(net, len), IpAddr::V6(a)) => u128::from(a) & mask128(*len) == *net,
            _ => false,
        }
    }

    fn network(&self) -> Cidr {
        match *self {
            Cidr::V4(bits, len) => Cidr::V4(bits & mask32(len), len),
            Cidr::V6(bits, len) => Cidr::V6(bits & mask128(len), len),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4(bits, len) => write!(f, "{}/{len}", std::net::Ipv4Addr::from(bits)),
            Cidr::V6(bits, len) => write!(f, "{}/{len}", std::net::Ipv6Addr::from(bits)),
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A set of ranges.
#[derive(Debug, Clone, Default)]
pub struct CidrSet(Vec<Cidr>);

impl CidrSet {
    /// A set of the given ranges.
    pub fn new(ranges: Vec<Cidr>) -> Self {
        CidrSet(ranges)
    }

    /// Whether any range contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses one address as found in `X-Forwarded-For`: a bare address, `[v6]`, or either
/// with a port (some proxies add it).
pub fn parse_forwarded(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    if let Ok(ip) = t.parse() {
        return Some(ip);
    }
    if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    t.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|v6| v6.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_ipv4_and_ipv6_ranges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        let single = Cidr::parse("192.168.1.7").unwrap();
        assert!(single.contains(ip("192.168.1.7")));
        assert!(!single.contains(ip("192.168.1.8")));
    }

    #[test]
    fn rejects_malformed_ranges() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("::/129").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("example.com").is_err());
        let e = Cidr::parse("10.1.2.3/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn reads_forwarded_addresses_with_ports_and_brackets() {
        assert_eq!(parse_forwarded(" 1.2.3.4 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_forwarded("1.2.3.4:5678"), Some(ip("1.2.3.4")));
        assert_eq!(
            parse_forwarded("[2001:db8::1]:443"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_forwarded("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_forwarded("unknown"), None);
    }
}
