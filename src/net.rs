//! Network addresses: CIDR blocks, and the real client address of a request that came through
//! trusted proxies (`server.trusted_proxies`).
//!
//! A request from a trusted peer names its client in `X-Forwarded-For` (or RFC 7239
//! `Forwarded`); the client is the rightmost address there that is not itself a trusted proxy,
//! since every hop appends the address it saw and only the hops we trust are honest. A request
//! from any other peer is its own client, whatever it claims.
//!
//! [`Resolving`] keeps a `host:port` (`upstream.address`) resolved while the gateway runs: a
//! SaaS IdP's addresses change, and a proxy that resolved its name once would keep sending
//! traffic to an address the IdP has given up.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// An address as a header value (`X-Forwarded-For`): IPv4 written digit by digit, without the
/// formatting machinery a `Display` goes through (this runs for every relayed request).
pub fn header_value(ip: IpAddr) -> http::HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            http::HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| unreachable_value())
        }
        IpAddr::V6(_) => {
            http::HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| unreachable_value())
        }
    }
}

/// Digits, dots and colons are always a valid header value; this is only the type's answer.
fn unreachable_value() -> http::HeaderValue {
    http::HeaderValue::from_static("unknown")
}

/// A `host:port` and the address it resolved to. A host name is resolved again in the
/// background once its last answer is `ttl` old; requests meanwhile use the address they have
/// (they never wait for DNS). A failed resolution keeps the last address, says so in the log,
/// and is tried again after another `ttl`. An IP address is never resolved.
pub struct Resolving {
    address: String,
    name: bool,
    ttl: Duration,
    timeout: Duration,
    state: RwLock<(SocketAddr, Instant)>,
    busy: AtomicBool,
}

impl Resolving {
    /// `address` resolved to `first` at `at`.
    pub fn new(
        address: &str,
        first: SocketAddr,
        at: Instant,
        ttl: Duration,
        timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            address: address.to_string(),
            name: address.parse::<SocketAddr>().is_err(),
            ttl,
            timeout,
            state: RwLock::new((first, at)),
            busy: AtomicBool::new(false),
        })
    }

    /// The address to connect to at `now`; starts resolving the name again when it is due.
    pub fn current(self: &Arc<Self>, now: Instant) -> SocketAddr {
        let (addr, at) = *self.state.read().unwrap_or_else(PoisonError::into_inner);
        let due = self.name && now.saturating_duration_since(at) >= self.ttl;
        if due && !self.busy.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move { me.refresh().await });
        }
        addr
    }

    async fn refresh(&self) {
        let lookup = tokio::net::lookup_host(self.address.as_str());
        let found = match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => None,
        };
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            match found {
                Some(addr) => {
                    if addr != state.0 {
                        tracing::info!(address = %self.address, from = %state.0, to = %addr, "upstream.address resolves to a new address");
                    }
                    *state = (addr, Instant::now());
                }
                None => {
                    tracing::warn!(address = %self.address, keeping = %state.0, "upstream.address cannot be resolved; the last address is kept");
                    state.1 = Instant::now();
                }
            }
        }
        self.busy.store(false, Ordering::Release);
    }
}

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`, or a bare address (a block of one). The address must be the
    /// block's first (`10.1.2.3/8` is refused: it usually means a typo).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR block (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        let cidr = Self { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "'{s}' has bits set past its /{prefix}: write {}/{prefix}",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn network(self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a) & mask32(self.prefix);
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a) & mask128(self.prefix);
                IpAddr::V6(bits.into())
            }
        }
    }

    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// Whether two addresses share their first `v4_bits` (IPv4) or `v6_bits` (IPv6) bits; an
/// IPv4-mapped IPv6 address counts as IPv4, and addresses of two families never do.
pub fn same_prefix(a: IpAddr, b: IpAddr, v4_bits: u8, v6_bits: u8) -> bool {
    match (canonical(a), canonical(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = mask32(v4_bits.min(32));
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = mask128(v6_bits.min(128));
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// The authority (`host[:port]`) of a URL, as a `Host` header names it.
pub fn authority(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The client of a request from `peer`: `peer` itself unless it is a trusted proxy; then the
/// rightmost address of `X-Forwarded-For` (all its lines, in order) that is not a trusted
/// proxy, or, without that header, of `Forwarded`'s `for=`. A list that ends in something
/// that is not an address stops the walk at the last trusted hop.
pub fn client_address<'a>(
    peer: IpAddr,
    trusted: &[Cidr],
    x_forwarded_for: impl Iterator<Item = &'a str>,
    forwarded: impl Iterator<Item = &'a str>,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<Option<IpAddr>> = x_forwarded_for
        .flat_map(|line| line.split(','))
        .map(|hop| parse_hop(hop.trim()))
        .collect();
    if hops.is_empty() {
        hops = forwarded
            .flat_map(|line| line.split(','))
            .filter_map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .map(|(_, v)| parse_hop(v.trim().trim_matches('"')))
            })
            .collect();
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical(*ip);
                if !is_trusted(client) {
                    break;
                }
            }
            // Garbage where an address should be: trust nothing further left.
            None => break,
        }
    }
    client
}

/// One hop of a forwarding header: `192.0.2.1`, `192.0.2.1:443`, `[2001:db8::1]:443`,
/// `2001:db8::1`. `unknown` and obfuscated names are not addresses.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    hop.rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .and_then(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().ok())
        .map(IpAddr::V4)
}

#[cfg(test)]
mod resolving_tests {
    use super::*;

    #[tokio::test]
    async fn a_host_name_is_resolved_again_once_due_and_an_address_never() {
        let stale = "10.255.255.1:4321".parse().unwrap();
        let ttl = Duration::from_secs(60);
        let long_ago = Instant::now() - 2 * ttl;
        let name = Resolving::new("localhost:4321", stale, long_ago, ttl, ttl);
        // Not waited for: this request still gets the address it had.
        assert_eq!(name.current(Instant::now()), stale);
        let mut now = stale;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            now = name.current(Instant::now());
            if now != stale {
                break;
            }
        }
        assert!(now.ip().is_loopback() && now.port() == 4321, "{now}");
        // Fresh again: no new resolution until another ttl has passed.
        assert!(!name.busy.load(Ordering::Acquire));
        assert_eq!(name.current(Instant::now()), now);
        assert!(!name.busy.load(Ordering::Acquire));

        let ip = Resolving::new("10.255.255.1:4321", stale, long_ago, ttl, ttl);
        assert_eq!(ip.current(Instant::now()), stale);
        assert!(!ip.busy.load(Ordering::Acquire));

        // A name that does not resolve keeps the last address.
        let gone = Resolving::new("no-such-host.invalid:4321", stale, long_ago, ttl, ttl);
        gone.current(Instant::now());
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if !gone.busy.load(Ordering::Acquire) {
                break;
            }
        }
        assert_eq!(gone.current(Instant::now()), stale);
        assert!(!gone.busy.load(Ordering::Acquire), "not due again yet");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_header_values_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(header_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn same_prefix_compares_the_first_bits_of_one_family() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let same = |a: &str, b: &str| same_prefix(ip(a), ip(b), 24, 64);
        assert!(same("192.0.2.1", "192.0.2.200"));
        assert!(!same("192.0.2.1", "192.0.3.1"));
        assert!(same("::ffff:192.0.2.1", "192.0.2.9"));
        assert!(same("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"));
        assert!(!same("2001:db8:1:2::1", "2001:db8:1:3::1"));
        assert!(!same("2001:db8::1", "192.0.2.1"));
        assert!(same_prefix(ip("10.1.0.1"), ip("10.1.255.9"), 16, 64));
        assert!(!same_prefix(ip("10.1.0.1"), ip("10.2.0.1"), 16, 64));
        assert!(same_prefix(
            ip("2001:db8:1::1"),
            ip("2001:db8:1:ff::1"),
            24,
            48
        ));
        assert!(same_prefix(ip("10.0.0.1"), ip("10.0.0.1"), 32, 128));
        assert!(!same_prefix(ip("10.0.0.1"), ip("10.0.0.2"), 32, 128));
    }

    #[test]
    fn blocks() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.200.1.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.1.2.3/8", "10.0.0.0/33", "nope", "10.0.0.0/x", "::1/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_of_a_trusted_peer() {
        let trusted = [
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let lb = ip("127.0.0.1");
        let xff = |lines: &'static [&'static str]| lines.iter().copied();
        let none = || std::iter::empty::<&str>();
        // An untrusted peer is its own client, whatever it sends.
        assert_eq!(
            client_address(ip("203.0.113.9"), &trusted, xff(&["1.2.3.4"]), none()),
            ip("203.0.113.9")
        );
        // The client spoofs a leftmost entry; the balancer appends what it saw.
        assert_eq!(
            client_address(lb, &trusted, xff(&["1.2.3.4, 198.51.100.7"]), none()),
            ip("198.51.100.7")
        );
        // Trusted hops are skipped; several header lines read as one list.
        assert_eq!(
            client_address(lb, &trusted, xff(&["198.51.100.7", "10.1.1.1"]), none()),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(
                lb,
                &trusted,
                xff(&["[2001:db8::5]:443, 10.0.0.1:80"]),
                none()
            ),
            ip("2001:db8::5")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_address(
                lb,
                &trusted,
                xff(&["198.51.100.7, garbage, 10.0.0.2"]),
                none()
            ),
            ip("10.0.0.2")
        );
        // No forwarding header: the proxy itself.
        assert_eq!(client_address(lb, &trusted, none(), none()), lb);
        // RFC 7239 Forwarded when there is no X-Forwarded-For.
        let fwd = ["for=192.0.2.60;proto=https, for=\"[2001:db8::7]:4711\""];
        assert_eq!(
            client_address(lb, &trusted, none(), fwd.iter().copied()),
            ip("2001:db8::7")
        );
        // No trusted proxies configured: every peer is its own client.
        assert_eq!(client_address(lb, &[], xff(&["1.2.3.4"]), none()), lb);
    }
}
