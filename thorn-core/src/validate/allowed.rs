//! [`Allowed`]: recipients let past the port and address rules.

use std::fmt;
use std::str::FromStr;

use super::{Cidr, InvalidCidr};

/// A recipient let past the address and port rules, while the others
/// (scheme, custom rules) still apply: for a worker that must reach one
/// internal receiver. See [`Validators::allowing`](super::Validators::allowing).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Allowed {
    /// This host (a name or an address, as the URL writes it) on this
    /// port: neither its port nor the addresses it resolves to are checked.
    HostPort {
        /// The host as a URL writes it (lowercase, IDNA, canonical
        /// addresses); IPv6 addresses without brackets.
        host: String,
        /// The port.
        port: u16,
    },
    /// Addresses in this network pass the internal-address and network
    /// rules; ports are still checked.
    Network(Cidr),
}

impl FromStr for Allowed {
    type Err = String;

    /// `host:port` (`[::1]:8787` for IPv6) or a CIDR network (`10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains('/') {
            return s
                .parse()
                .map(Allowed::Network)
                .map_err(|e: InvalidCidr| e.to_string());
        }
        let (host, port) = match s.strip_prefix('[') {
            Some(rest) => {
                let (address, after) = rest
                    .split_once(']')
                    .ok_or_else(|| format!("`{s}`: no `]` after the IPv6 address"))?;
                let port = after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("`{s}` names no port"))?;
                (format!("[{address}]"), port)
            }
            None => {
                let (host, port) = s
                    .rsplit_once(':')
                    .ok_or_else(|| format!("`{s}` is neither host:port nor a CIDR network"))?;
                if host.contains(':') {
                    return Err(format!(
                        "`{s}`: write an IPv6 address in brackets, as in [::1]:8787"
                    ));
                }
                (host.to_owned(), port)
            }
        };
        let port = port
            .parse()
            .map_err(|_| format!("`{s}`: `{port}` is not a port"))?;
        if host.is_empty() {
            return Err(format!("`{s}` names no host"));
        }
        // Written as URLs write hosts (IDNA, canonical addresses), so it
        // compares with what a recipient URL's host becomes.
        let host = match url::Host::parse(&host).map_err(|e| format!("`{s}`: {e}"))? {
            url::Host::Domain(name) => name,
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        Ok(Allowed::HostPort { host, port })
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::HostPort { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Allowed::HostPort { host, port } => write!(f, "{host}:{port}"),
            Allowed::Network(net) => write!(f, "{net}"),
        }
    }
}
