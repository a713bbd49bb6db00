//! Recipient validation: keeps webhooks from being pointed at internal
//! networks (SSRF).
//!
//! The default set ([`Validators::default`]) is Thorn's: only `http`/`https`,
//! only ports 80 and 443, and no internal address. Addresses are checked on
//! the URL (IP literals in any spelling the URL standard accepts, such as
//! `http://2130706433/` or `http://0x7f.1/`) and again on every address a
//! hostname resolves to, inside the HTTP client's resolver, so a DNS answer
//! that changes between check and connect cannot slip through.
//!
//! ```
//! use thorn_core::validate::{Validators, ensure_protocol};
//! use thorn_core::Blocked;
//! use url::Url;
//!
//! let strict = Validators::default();
//! assert!(strict.check_url(&Url::parse("https://hooks.example.com/in").unwrap()).is_ok());
//! let err = strict.check_url(&Url::parse("http://127.0.0.1/").unwrap()).unwrap_err();
//! assert!(matches!(err.rule, Blocked::InternalAddress { kind: "loopback", .. }));
//!
//! // Tests and local development opt out visibly:
//! let local = Validators::new([ensure_protocol(["http"])]);
//! assert!(local.check_url(&Url::parse("http://127.0.0.1:8000/").unwrap()).is_ok());
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use url::{Host, Url};

use crate::error::{Blocked, SecurityError};

mod allowed;

pub use allowed::Allowed;

/// A network in CIDR notation, for [`block_cidr_network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` lies in this network. IPv4-mapped IPv6 addresses are
    /// compared as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A network that does not parse as `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR network `{0}`: expected e.g. 10.0.0.0/8 or fd00::/8")]
pub struct InvalidCidr(pub String);

impl FromStr for Cidr {
    type Err = InvalidCidr;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidCidr(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

type CustomCheck = Arc<dyn Fn(&Url) -> Result<(), String> + Send + Sync>;

/// One rule a recipient URL must pass.
#[derive(Clone)]
#[non_exhaustive]
pub enum Validator {
    /// Only these URL schemes.
    EnsureProtocol(Vec<String>),
    /// Only these ports (the scheme's default port when none is written).
    EnsurePort(Vec<u16>),
    /// No loopback, private, link-local, shared, multicast, reserved,
    /// documentation or unspecified address, in IPv4 or IPv6 form.
    BlockInternalIps,
    /// No address in this network.
    BlockCidr(Cidr),
    /// A rule of the application's: `Err(reason)` blocks.
    Custom {
        /// Name used in error messages.
        name: String,
        /// The check.
        check: CustomCheck,
    },
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validator::EnsureProtocol(p) => f.debug_tuple("EnsureProtocol").field(p).finish(),
            Validator::EnsurePort(p) => f.debug_tuple("EnsurePort").field(p).finish(),
            Validator::BlockInternalIps => f.write_str("BlockInternalIps"),
            Validator::BlockCidr(c) => f.debug_tuple("BlockCidr").field(c).finish(),
            Validator::Custom { name, .. } => f.debug_struct("Custom").field("name", name).finish(),
        }
    }
}

/// Only allow these URL schemes (Thorn's `ensure_protocol`).
pub fn ensure_protocol<I, S>(allowed: I) -> Validator
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Validator::EnsureProtocol(
        allowed
            .into_iter()
            .map(|s| s.into().to_ascii_lowercase())
            .collect(),
    )
}

/// Only allow these ports (Thorn's `ensure_port`).
pub fn ensure_port(allowed: impl IntoIterator<Item = u16>) -> Validator {
    Validator::EnsurePort(allowed.into_iter().collect())
}

/// Block internal addresses (Thorn's `block_internal_ips`).
pub fn block_internal_ips() -> Validator {
    Validator::BlockInternalIps
}

/// Block a network (Thorn's `block_cidr_network`).
pub fn block_cidr_network(network: &str) -> Result<Validator, InvalidCidr> {
    Ok(Validator::BlockCidr(network.parse()?))
}

/// A custom rule: return `Err(reason)` to block a URL.
pub fn custom<F>(name: impl Into<String>, check: F) -> Validator
where
    F: Fn(&Url) -> Result<(), String> + Send + Sync + 'static,
{
    Validator::Custom {
        name: name.into(),
        check: Arc::new(check),
    }
}

/// An ordered set of validators (what Python Thorn's
/// `THORN_RECIPIENT_VALIDATORS` setting held; [`crate::Config::recipient_validators`]).
#[derive(Debug, Clone)]
pub struct Validators {
    rules: Arc<[Validator]>,
    allowed: Arc<[Allowed]>,
}

impl Default for Validators {
    /// `block_internal_ips`, `ensure_protocol(http, https)`,
    /// `ensure_port(80, 443)`.
    fn default() -> Self {
        Validators::new([
            block_internal_ips(),
            ensure_protocol(["http", "https"]),
            ensure_port([80, 443]),
        ])
    }
}

impl Validators {
    /// Exactly these validators, in order.
    pub fn new(validators: impl IntoIterator<Item = Validator>) -> Self {
        Validators {
            rules: validators.into_iter().collect(),
            allowed: Arc::new([]),
        }
    }

    /// These validators, with `allowed` recipients let past the port and
    /// address rules (the scheme and custom rules still apply to them).
    ///
    /// ```
    /// use thorn_core::validate::Validators;
    ///
    /// let validators = Validators::default().allowing(["127.0.0.1:8787".parse().unwrap()]);
    /// assert!(validators.check_url(&"http://127.0.0.1:8787/hook".parse().unwrap()).is_ok());
    /// assert!(validators.check_url(&"http://127.0.0.1:8788/hook".parse().unwrap()).is_err());
    /// assert!(validators.check_url(&"ftp://127.0.0.1:8787/".parse().unwrap()).is_err());
    /// ```
    pub fn allowing(&self, allowed: impl IntoIterator<Item = Allowed>) -> Self {
        let mut all = self.allowed.to_vec();
        all.extend(allowed);
        Validators {
            rules: self.rules.clone(),
            allowed: all.into(),
        }
    }

    /// The recipients let past the port and address rules.
    pub fn allowed(&self) -> &[Allowed] {
        &self.allowed
    }

    /// The ports `host` is listed with (empty when it is not listed).
    fn listed_ports(&self, host: &str) -> Vec<u16> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed
            .iter()
            .filter_map(|a| match a {
                Allowed::HostPort { host: h, port } if h.eq_ignore_ascii_case(host) => Some(*port),
                _ => None,
            })
            .collect()
    }

    fn allows_address(&self, ip: IpAddr) -> bool {
        self.allowed
            .iter()
            .any(|a| matches!(a, Allowed::Network(net) if net.contains(ip)))
    }

    /// No validation at all. Only for tests against local receivers.
    pub fn none() -> Self {
        Validators::new([])
    }

    /// True when both are the same set (clones of one `Validators`).
    pub fn same_as(&self, other: &Validators) -> bool {
        Arc::ptr_eq(&self.rules, &other.rules) && Arc::ptr_eq(&self.allowed, &other.allowed)
    }

    /// The validators, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Validator> {
        self.rules.iter()
    }

    /// True when some validator looks at resolved addresses, so the HTTP
    /// client must check what names resolve to.
    pub fn checks_addresses(&self) -> bool {
        self.rules
            .iter()
            .any(|v| matches!(v, Validator::BlockInternalIps | Validator::BlockCidr(_)))
    }

    /// Checks a URL before anything is sent: scheme, port, custom rules, and
    /// the address itself when the host is an IP literal.
    pub fn check_url(&self, url: &Url) -> Result<(), SecurityError> {
        let blocked = |rule: Blocked| SecurityError {
            url: crate::subscriber::SafeUrl(url).to_string(),
            rule,
        };
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(Host::Domain(_)) => None,
            None => return Err(blocked(Blocked::NoHost)),
        };
        let host = url.host_str().unwrap_or_default();
        let listed = self.listed_ports(host);
        let host_port_allowed = url
            .port_or_known_default()
            .is_some_and(|port| listed.contains(&port));
        if !listed.is_empty() && !host_port_allowed {
            // A listed host is reached on its listed ports only: the
            // addresses it resolves to are let through on any.
            return Err(blocked(Blocked::Port {
                port: url.port_or_known_default(),
                allowed: listed,
            }));
        }
        let address_allowed =
            host_port_allowed || literal.is_some_and(|ip| self.allows_address(ip));
        for v in self.rules.iter() {
            match v {
                Validator::EnsureProtocol(allowed) => {
                    if !allowed.iter().any(|p| p == url.scheme()) {
                        return Err(blocked(Blocked::Protocol {
                            scheme: url.scheme().to_owned(),
                            allowed: allowed.to_vec(),
                        }));
                    }
                }
                Validator::EnsurePort(_) if host_port_allowed => {}
                Validator::BlockInternalIps | Validator::BlockCidr(_) if address_allowed => {}
                Validator::EnsurePort(allowed) => match url.port_or_known_default() {
                    Some(port) if allowed.contains(&port) => {}
                    port => {
                        return Err(blocked(Blocked::Port {
                            port,
                            allowed: allowed.to_vec(),
                        }));
                    }
                },
                Validator::BlockInternalIps | Validator::BlockCidr(_) => {
                    if let Some(ip) = literal {
                        if let Some(rule) = address_rule(v, ip) {
                            return Err(blocked(rule));
                        }
                    } else if url.host_str().is_some_and(is_localhost_name) {
                        if let Validator::BlockInternalIps = v {
                            return Err(blocked(Blocked::InternalAddress {
                                address: "localhost".into(),
                                kind: "loopback",
                                resolved_from: None,
                            }));
                        }
                    }
                }
                Validator::Custom { name, check } => {
                    if let Err(reason) = check(url) {
                        return Err(blocked(Blocked::Custom {
                            name: name.clone(),
                            reason,
                        }));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks one address a hostname resolved to. A host on the allow-list
    /// ([`Validators::allowing`]) passes: [`Validators::check_url`] holds
    /// it to its listed ports.
    pub fn check_addr(&self, host: &str, addr: SocketAddr) -> Result<(), SecurityError> {
        // `check_url` has held a listed host to its listed ports.
        if !self.listed_ports(host).is_empty() || self.allows_address(addr.ip()) {
            return Ok(());
        }
        for v in self.rules.iter() {
            if let Some(rule) = address_rule(v, addr.ip()) {
                return Err(SecurityError {
                    url: host.to_owned(),
                    rule: rule.resolved_from(host),
                });
            }
        }
        Ok(())
    }
}

fn is_localhost_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

fn address_rule(v: &Validator, ip: IpAddr) -> Option<Blocked> {
    match v {
        Validator::BlockInternalIps => internal_reason(ip).map(|kind| Blocked::InternalAddress {
            address: ip.to_string(),
            kind,
            resolved_from: None,
        }),
        Validator::BlockCidr(net) if net.contains(ip) => Some(Blocked::Network {
            address: ip,
            network: net.to_string(),
            resolved_from: None,
        }),
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) become the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why `ip` is internal, or `None` for a public address.
///
/// Covers IPv4 loopback, private, shared (CGNAT 100.64/10), link-local
/// (including the 169.254.169.254 cloud metadata address), "this network"
/// (0/8), IETF protocol assignments, documentation, benchmarking,
/// multicast, reserved and broadcast ranges; IPv6 unspecified, loopback,
/// unique-local, link-local, site-local, multicast, documentation and
/// discard ranges; and every IPv4 range again when carried inside IPv6
/// (mapped, compatible, NAT64 and 6to4 forms).
pub(crate) fn internal_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "in 0.0.0.0/8 (this network)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignment (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation range",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking range (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4).map(|_| "an IPv4-mapped internal address");
    }
    let seg = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // IPv4-compatible ::a.b.c.d (deprecated) and NAT64 64:ff9b::a.b.c.d.
    if seg[..6] == [0; 6] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return internal_v4(embedded(seg[6], seg[7]))
            .map(|_| "an IPv6 form of an internal IPv4 address");
    }
    // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if seg[0] == 0x2002 {
        return internal_v4(embedded(seg[1], seg[2]))
            .map(|_| "a 6to4 form of an internal IPv4 address");
    }
    Some(match seg[0] {
        s if s & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        s if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        s if s & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        0x2001 if seg[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(url: &str) -> bool {
        Validators::default()
            .check_url(&Url::parse(url).unwrap())
            .is_err()
    }

    #[test]
    fn literal_internal_addresses_are_blocked_in_every_spelling() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:c0a8:0101::1]/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://192.0.2.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "http://[::]/",
            "http://localhost/",
            "http://api.localhost/",
        ] {
            assert!(blocked(url), "{url} should be blocked");
        }
    }

    #[test]
    fn public_addresses_and_names_pass() {
        for url in [
            "https://hooks.example.com/in",
            "http://93.184.216.34/",
            "https://[2606:2800:220:1:248:1893:25c7:1946]/",
            "http://100.128.0.1/",
            "http://172.32.0.1/",
        ] {
            assert!(!blocked(url), "{url} should pass");
        }
    }

    #[test]
    fn scheme_and_port_rules_name_themselves() {
        let v = Validators::default();
        let err = v
            .check_url(&Url::parse("ftp://example.com/").unwrap())
            .unwrap_err();
        assert!(matches!(err.rule, Blocked::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("ensure_protocol"), "{err}");
        let err = v
            .check_url(&Url::parse("https://example.com:8443/").unwrap())
            .unwrap_err();
        assert_eq!(
            err.rule,
            Blocked::Port {
                port: Some(8443),
                allowed: vec![80, 443]
            }
        );
        assert!(
            err.to_string().contains("https://example.com:8443/"),
            "{err}"
        );
    }

    #[test]
    fn cidr_and_custom_rules() {
        let v = Validators::new([
            block_cidr_network("93.184.0.0/16").unwrap(),
            custom("no-admin", |u| {
                if u.path().starts_with("/admin") {
                    Err("admin path".into())
                } else {
                    Ok(())
                }
            }),
        ]);
        assert!(
            v.check_url(&Url::parse("http://93.184.216.34/").unwrap())
                .is_err()
        );
        assert!(
            v.check_url(&Url::parse("http://[::ffff:93.184.216.34]/").unwrap())
                .is_err()
        );
        assert!(
            v.check_url(&Url::parse("http://example.com/admin").unwrap())
                .is_err()
        );
        assert!(
            v.check_url(&Url::parse("http://example.com/hook").unwrap())
                .is_ok()
        );
        assert!(block_cidr_network("10.0.0.0/33").is_err());
        assert!(block_cidr_network("nonsense").is_err());
    }

    #[test]
    fn resolved_addresses_are_checked() {
        let v = Validators::default();
        assert!(
            v.check_addr("evil.example", "127.0.0.1:80".parse().unwrap())
                .is_err()
        );
        assert!(
            v.check_addr("good.example", "93.184.216.34:443".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn an_allowed_host_port_passes_the_port_and_address_rules_and_nothing_else() {
        let v = Validators::default().allowing(["127.0.0.1:8787".parse().unwrap()]);
        let url = |u: &str| u.parse::<Url>().unwrap();
        assert!(v.check_url(&url("http://127.0.0.1:8787/hook")).is_ok());
        // The same host on another port, another loopback address, another scheme.
        assert!(matches!(
            v.check_url(&url("http://127.0.0.1:8788/"))
                .unwrap_err()
                .rule,
            Blocked::Port { .. }
        ));
        assert!(v.check_url(&url("http://127.0.0.2:8787/")).is_err());
        assert!(matches!(
            v.check_url(&url("ftp://127.0.0.1:8787/")).unwrap_err().rule,
            Blocked::Protocol { .. }
        ));
        // A listed name: its resolved addresses pass, on its listed port only.
        let v = Validators::default().allowing(["Hooks.Internal:8443".parse().unwrap()]);
        assert!(v.check_url(&url("https://hooks.internal:8443/")).is_ok());
        assert!(
            v.check_addr("hooks.internal", "10.0.0.5:0".parse().unwrap())
                .is_ok()
        );
        assert!(v.check_url(&url("https://hooks.internal/")).is_err());
        assert!(
            v.check_addr("other.internal", "10.0.0.5:0".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn an_allowed_network_passes_the_address_rules_but_not_the_port_rule() {
        let v = Validators::default().allowing(["10.1.0.0/16".parse().unwrap()]);
        let url = |u: &str| u.parse::<Url>().unwrap();
        assert!(v.check_url(&url("https://10.1.2.3/")).is_ok());
        assert!(
            v.check_addr("svc.internal", "10.1.2.3:0".parse().unwrap())
                .is_ok()
        );
        assert!(v.check_url(&url("https://10.2.0.1/")).is_err());
        assert!(
            v.check_url(&url("http://10.1.2.3:8080/")).is_err(),
            "ports are still checked"
        );
        assert!(
            v.check_addr("svc.internal", "127.0.0.1:0".parse().unwrap())
                .is_err()
        );
        for bad in [
            "127.0.0.1",
            "host:port",
            ":80",
            "10.0.0.0/99",
            "::1:8787",
            "[::1]x:80",
            "[::1]",
        ] {
            assert!(bad.parse::<Allowed>().is_err(), "{bad}");
        }
        assert_eq!(
            "[::1]:8787".parse::<Allowed>().unwrap().to_string(),
            "[::1]:8787"
        );
    }
}
