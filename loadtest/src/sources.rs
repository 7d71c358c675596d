//! The up-front checks of `--source-ips` against the URLs and the run's connections:
//! each address parses, is of the URLs' family and can be bound here, and no (source,
//! destination) pair needs more connections than the kernel has local ports.

use crate::util::{self, Url};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Where the kernel's range of local ports is (two numbers, inclusive).
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Checks `--source-ips` (when given) for `connections` connections to `urls` (connection
/// g goes to `urls[g % u]` from source `g % n`): parse, family, bind, ports. `flag` names
/// the URL flag in errors.
pub fn check(spec: Option<&str>, flag: &str, urls: &[Url], connections: u64) -> Result<(), String> {
    let ips = match spec {
        Some(s) => util::parse_source_ips(s).map_err(|e| format!("--source-ips: {e}"))?,
        None => Vec::new(),
    };
    check_family(&ips, flag, urls)?;
    check_bindable(&ips)?;
    if let Some((lo, hi)) = read_port_range() {
        let addrs: Vec<SocketAddr> = urls.iter().map(|u| u.addr).collect();
        check_ports(ips.len(), flag, &addrs, connections, (lo, hi))?;
    }
    Ok(())
}

/// Every source address must be of the family of every URL's address.
fn check_family(ips: &[IpAddr], flag: &str, urls: &[Url]) -> Result<(), String> {
    for ip in ips {
        if let Some(u) = urls.iter().find(|u| u.addr.is_ipv4() != ip.is_ipv4()) {
            let fam = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
            return Err(format!(
                "--source-ips: {ip} is an {} address, but {flag} {}://{}{} goes to {} ({}); \
                 give source addresses of the same family",
                fam(ip.is_ipv4()),
                if u.tls { "wss" } else { "ws" },
                u.authority,
                u.path,
                u.addr,
                fam(u.addr.is_ipv4()),
            ));
        }
    }
    Ok(())
}

/// Binds a socket to each address once (port 0), so an address this host lacks is named
/// before the run rather than counted per connection.
#[cfg(target_os = "linux")]
fn check_bindable(ips: &[IpAddr]) -> Result<(), String> {
    use socket2::{Domain, Protocol, Socket, Type};
    for &ip in ips {
        let domain = if ip.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("--source-ips: a socket to test {ip}: {e}"))?;
        let _ = sock.set_reuse_address(true);
        if let Err(e) = sock.bind(&SocketAddr::new(ip, 0).into()) {
            let why = if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                " (this host has no such address; on Linux every 127.x.y.z is local, \
                 other addresses must be configured on an interface)"
            } else {
                ""
            };
            return Err(format!("--source-ips: cannot bind {ip}: {e}{why}"));
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn check_bindable(_: &[IpAddr]) -> Result<(), String> {
    Ok(())
}

/// The kernel's local port range, or `None` when it cannot be read.
fn read_port_range() -> Option<(u64, u64)> {
    parse_port_range(&std::fs::read_to_string(PORT_RANGE).ok()?)
}

/// `32768\t60999` as (32768, 60999).
fn parse_port_range(s: &str) -> Option<(u64, u64)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    (lo <= hi).then_some((lo, hi))
}

/// The most connections one (source, destination address) pair gets when connection g
/// of `connections` goes to `dst[g % u]` from source `g % n` (`n` at least 1), with that
/// destination.
fn max_per_pair(dst: &[SocketAddr], n: usize, connections: u64) -> (u64, SocketAddr) {
    let (u, n) = (dst.len().max(1) as u64, n.max(1) as u64);
    let l = lcm(u, n);
    // Connection g's pair depends on g mod L only: residue r has N/L connections, one
    // more below N mod L.
    let weight = |r: u64| connections / l + u64::from(r < connections % l);
    let distinct = {
        let mut v = dst.to_vec();
        v.sort();
        v.dedup();
        v.len() == dst.len()
    };
    if distinct {
        // Each pair has at most one residue in a period (Chinese remainder theorem), and
        // residue 0 weighs the most.
        return (weight(0), dst[0]);
    }
    let mut count: HashMap<(SocketAddr, u64), u64> = HashMap::new();
    for r in 0..l.min(connections) {
        *count.entry((dst[(r % u) as usize], r % n)).or_default() += weight(r);
    }
    count
        .into_iter()
        .map(|((d, _), c)| (c, d))
        .max()
        .unwrap_or((0, dst[0]))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

/// Refuses a run in which one (source, destination) pair needs more connections than
/// the `range` of local ports holds, naming how many source addresses it needs. `n` is
/// the number of `--source-ips` (0: none given, the kernel picks one).
fn check_ports(
    n: usize,
    flag: &str,
    dst: &[SocketAddr],
    connections: u64,
    range: (u64, u64),
) -> Result<(), String> {
    if dst.is_empty() {
        return Ok(());
    }
    let width = range.1 - range.0 + 1;
    let (most, to) = max_per_pair(dst, n, connections);
    if most <= width {
        return Ok(());
    }
    // The destination with the most connections needs this many sources, each carrying
    // at most `width` of them.
    let u = dst.len() as u64;
    let to_dst: u64 = (0..u)
        .filter(|&i| dst[i as usize] == to)
        .map(|i| connections / u + u64::from(i < connections % u))
        .sum();
    let need = to_dst.div_ceil(width);
    let (lo, hi) = range;
    let head = format!(
        "{most} connections would go from one source address to {to}, but one (source, \
         destination) pair has at most the {width} local ports of net.ipv4.ip_local_port_range \
         ({lo}-{hi})"
    );
    let example = |k: u64| {
        if to.ip().is_loopback() && to.is_ipv4() && k <= 250 {
            format!(
                " (for a loopback server: --source-ips 127.0.0.2-127.0.0.{})",
                k + 1
            )
        } else {
            String::new()
        }
    };
    if n == 0 {
        Err(format!(
            "--connections: {head}; give --source-ips with at least {need} addresses{}",
            example(need)
        ))
    } else if (n as u64) < need {
        Err(format!(
            "--source-ips: {head}; {to} gets {to_dst} connections, so give at least {need} \
             source addresses (got {n}){}, or widen the port range",
            example(need)
        ))
    } else {
        Err(format!(
            "--source-ips: {head}; {n} addresses would do, but {n} and the {u} {flag} \
             entries share a factor, so each address reaches only some destinations: give a \
             number of addresses with no factor in common with {u}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn pairs_share_the_connections_evenly() {
        let one = [a("127.0.0.1:8700")];
        assert_eq!(max_per_pair(&one, 0, 1000), (1000, one[0]));
        assert_eq!(max_per_pair(&one, 8, 200_000), (25_000, one[0]));
        assert_eq!(max_per_pair(&one, 8, 200_001), (25_001, one[0]));
        // Two nodes and two sources: connection g goes to node g%2 from source g%2, so
        // only two of the four pairs are used.
        let two = [a("127.0.0.1:8700"), a("127.0.0.1:8800")];
        assert_eq!(max_per_pair(&two, 2, 1000).0, 500);
        assert_eq!(max_per_pair(&two, 3, 1200).0, 200);
        // The same node twice (two paths) is one destination.
        let same = [a("127.0.0.1:8700"), a("127.0.0.1:8700")];
        assert_eq!(max_per_pair(&same, 3, 1200).0, 400);
        assert_eq!(max_per_pair(&same, 0, 1201).0, 1201);
    }

    #[test]
    fn too_many_connections_for_the_ports_name_the_addresses_needed() {
        let one = [a("127.0.0.1:8700")];
        let range = (32768, 60999); // 28,232 ports
        assert!(check_ports(0, "--url", &one, 28_232, range).is_ok());
        let e = check_ports(0, "--url", &one, 28_233, range).unwrap_err();
        assert!(e.contains("at least 2 addresses"), "{e}");
        assert!(e.contains("127.0.0.2-127.0.0.3"), "{e}");
        // The README's 200,000 on 8 addresses fits; on 7 it does not.
        assert!(check_ports(8, "--url", &one, 200_000, range).is_ok());
        let e = check_ports(7, "--url", &one, 200_000, range).unwrap_err();
        assert!(e.contains("at least 8 source addresses (got 7)"), "{e}");
        // Enough addresses, but paired with two nodes so that each reaches only one.
        let two = [a("127.0.0.1:8700"), a("127.0.0.1:8800")];
        let e = check_ports(2, "--url", &two, 60_000, (1, 20_000)).unwrap_err();
        assert!(e.contains("share a factor"), "{e}");
        assert!(check_ports(3, "--url", &two, 60_000, (1, 20_000)).is_ok());
    }

    #[test]
    fn a_source_of_the_other_family_is_named() {
        let urls = util::parse_ws_urls("ws://127.0.0.1:8700/ws").unwrap();
        let e = check(Some("::1"), "--url", &urls, 10).unwrap_err();
        assert!(e.contains("::1 is an IPv6 address"), "{e}");
        assert!(e.contains("127.0.0.1:8700"), "{e}");
        assert!(check(Some("127.0.0.2-127.0.0.3"), "--url", &urls, 10).is_ok());
        assert!(check(None, "--url", &urls, 10).is_ok());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_address_this_host_lacks_is_named() {
        // TEST-NET-1 (RFC 5737) is never configured on a test host.
        let e = check_bindable(&["192.0.2.77".parse().unwrap()]).unwrap_err();
        assert!(e.contains("cannot bind 192.0.2.77"), "{e}");
        assert!(e.contains("no such address"), "{e}");
        assert!(check_bindable(&["127.0.0.9".parse().unwrap()]).is_ok());
    }
}
