//! Small pure helpers: address ranges, URLs, limits, /proc readings, histograms.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Adds the named counter fields of `$src` to those of `$dst`: the merge of figures
/// that add up.
macro_rules! add_fields {
    ($dst:expr, $src:expr, [$($field:ident),+ $(,)?]) => {
        $($dst.$field += $src.$field;)+
    };
}
pub(crate) use add_fields;

/// At most this many source addresses in one `--source-ips` list.
pub const MAX_SOURCE_IPS: usize = 65_536;

/// Parses `127.0.0.2-127.0.0.9`, `10.0.0.1,10.0.0.5`, `::1` or a mix, comma separated.
/// Ranges are IPv4 only and inclusive.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("bad IPv4 address {a:?} in {part:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| format!("bad IPv4 address {b:?} in {part:?}"))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if lo > hi {
                return Err(format!("range {part:?} is reversed"));
            }
            if (hi - lo) as usize + out.len() >= MAX_SOURCE_IPS {
                return Err(format!("more than {MAX_SOURCE_IPS} source addresses"));
            }
            out.extend((lo..=hi).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            let ip: IpAddr = part
                .parse()
                .map_err(|_| format!("bad IP address {part:?}"))?;
            out.push(ip);
            if out.len() > MAX_SOURCE_IPS {
                return Err(format!("more than {MAX_SOURCE_IPS} source addresses"));
            }
        }
    }
    if out.is_empty() {
        return Err("empty source address list".into());
    }
    Ok(out)
}

/// A parsed `ws://`, `wss://` or `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` as written, for the Host header.
    pub authority: String,
    /// The host alone (no port, no IPv6 brackets): the TLS server name of a `wss://` URL.
    pub host: String,
    pub addr: SocketAddr,
    /// Path and query, starting with `/`.
    pub path: String,
    /// A `wss://` URL: the connection speaks TLS.
    pub tls: bool,
}

/// Parses `<scheme>://host[:port][/path]`, `default_port` when none is given.
pub fn parse_url(s: &str, scheme: &str, default_port: u16) -> Result<Url, String> {
    let prefix = format!("{scheme}://");
    let rest = s
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("{s:?}: expected a {prefix} URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{s:?}: no host"));
    }
    // A port of digits that does not fit (99999) or is 0: say so, not "failed to lookup
    // address" (it would be taken as part of the host).
    if let Some((h, p)) = authority.rsplit_once(':') {
        let bracketed_or_plain = h.ends_with(']') || !h.contains(':');
        let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if bracketed_or_plain && digits && !p.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("{s:?}: port {p} is out of range (1 to 65535)"));
        }
    }
    let port_given = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']');
    let (with_port, host) = if port_given {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        (authority.to_string(), host)
    } else {
        (format!("{authority}:{default_port}"), authority)
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?}: host has no address"))?;
    Ok(Url {
        authority: authority.to_string(),
        host: host.to_string(),
        addr,
        path: path.to_string(),
        tls: false,
    })
}

/// Parses a push API URL: `http://` (port 80 by default) or `https://` (TLS, port 443).
pub fn parse_api_url(s: &str) -> Result<Url, String> {
    if s.starts_with("https://") {
        let mut u = parse_url(s, "https", 443)?;
        u.tls = true;
        return Ok(u);
    }
    if !s.starts_with("http://") {
        return Err(format!("{s:?}: expected an http:// or https:// URL"));
    }
    parse_url(s, "http", 80)
}

/// Parses a WebSocket URL: `ws://` (port 80 by default) or `wss://` (TLS, port 443).
pub fn parse_ws_url(s: &str) -> Result<Url, String> {
    if s.starts_with("wss://") {
        let mut u = parse_url(s, "wss", 443)?;
        u.tls = true;
        return Ok(u);
    }
    if !s.starts_with("ws://") {
        return Err(format!("{s:?}: expected a ws:// or wss:// URL"));
    }
    parse_url(s, "ws", 80)
}

/// Parses a comma-separated list of WebSocket URLs (`--url ws://a/ws,wss://b/ws`):
/// connection number i goes to the (i mod n)th. At least one; blanks between commas are
/// refused.
pub fn parse_ws_urls(s: &str) -> Result<Vec<Url>, String> {
    let urls = s
        .split(',')
        .map(|u| {
            let u = u.trim();
            if u.is_empty() {
                return Err(format!("{s:?}: an empty URL in the comma-separated list"));
            }
            parse_ws_url(u)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if urls.len() > MAX_URLS {
        return Err(format!("{s:?}: more than {MAX_URLS} URLs"));
    }
    Ok(urls)
}

/// At most this many URLs in one `--url` list.
pub const MAX_URLS: usize = 1024;

/// The comma-separated list `s` rotated left by `k`, so that a worker whose first
/// connection is global number k still sends connection i to URL (i mod n) of the parent.
pub fn rotate_url_list(s: &str, k: u64) -> String {
    let mut v: Vec<&str> = s.split(',').map(str::trim).collect();
    let n = v.len() as u64;
    v.rotate_left((k % n.max(1)) as usize);
    v.join(",")
}

/// Raises the soft open-files limit to the hard limit; returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        let cur = rl.rlim_cur as u64;
        cur
    }
}

/// Now in µs on `CLOCK_MONOTONIC`, the clock the pushes' and publishes' `t` stamps and
/// their receipts are read on. Every process on a host shares it (the senders and
/// receivers of a run, workers included, are on one host), and unlike the wall clock an
/// NTP step cannot move it during a run.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Latency samples whose stamp was later than their receipt, in this process.
static STAMPS_AHEAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// µs from stamp `t` ([`now_us`]'s clock) to now. A stamp later than now (from another
/// host, or not ours) counts 0 and is counted in [`stamps_ahead`], not clamped silently.
pub fn since_us(t: u64) -> u64 {
    let now = now_us();
    if t > now {
        STAMPS_AHEAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    now.saturating_sub(t)
}

/// How many latency samples of this process had a stamp later than their receipt.
pub fn stamps_ahead() -> u64 {
    STAMPS_AHEAD.load(std::sync::atomic::Ordering::Relaxed)
}

/// VmRSS of a process in bytes.
pub fn read_rss_bytes(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&s)
}

pub fn parse_vmrss(status: &str) -> Option<u64> {
    parse_status_kb(status, "VmRSS:")
}

/// Anonymous resident memory of a process (RssAnon: heap, stacks, anonymous maps), in
/// bytes: RSS without the pages of its executable and libraries.
pub fn read_rss_anon_bytes(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&s, "RssAnon:")
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Kernel TCP memory in bytes (the `mem` pages of the `TCP:` line of /proc/net/sockstat).
pub fn read_kernel_tcp_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let pages = parse_sockstat_tcp_mem(&s)?;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * if page > 0 { page as u64 } else { 4096 })
}

/// Kernel slab memory in bytes (`Slab:` of /proc/meminfo; system-wide).
pub fn read_kernel_slab_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_kb(&s, "Slab:")
}

pub fn parse_meminfo_kb(s: &str, key: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn parse_sockstat_tcp_mem(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// A latency histogram in microseconds, 1 us to 1 hour, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, v: u64) {
    h.saturating_record(v.max(1));
}

/// Histogram as (value, count) pairs, for passing between processes.
pub fn hist_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn hist_add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, c) in pairs {
        let _ = h.record_n(v.clamp(1, 3_600_000_000), c);
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: (h.mean() * 10.0).round() / 10.0,
    }
}

/// Formats microseconds for humans.
pub fn fmt_us(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_read_the_monotonic_clock_and_count_stamps_ahead() {
        // The receipt clock is CLOCK_MONOTONIC, as the stamps are (review s23 N3): a
        // stamp taken now is a few µs old, never in the future.
        let t = now_us();
        let before = stamps_ahead();
        assert!(since_us(t) < 10_000_000);
        assert!(now_us() >= t);
        // A stamp from the future (another host's clock, say) counts 0, and is counted.
        assert_eq!(since_us(now_us() + 60_000_000), 0);
        assert!(stamps_ahead() > before);
    }

    #[test]
    fn a_port_out_of_range_is_named() {
        for (url, port) in [
            ("ws://127.0.0.1:99999/ws", "99999"),
            ("ws://127.0.0.1:0/ws", "0"),
            ("http://[::1]:65536", "65536"),
            (
                "wss://localhost:123456789012345678901234/ws",
                "123456789012345678901234",
            ),
        ] {
            let e = if url.starts_with("http") {
                parse_api_url(url).unwrap_err()
            } else {
                parse_ws_url(url).unwrap_err()
            };
            assert!(
                e.contains(&format!("port {port} is out of range (1 to 65535)")),
                "{url}: {e}"
            );
        }
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:65535/ws").unwrap().addr.port(),
            65535
        );
        assert_eq!(
            parse_api_url("http://[::1]:8701").unwrap().addr.port(),
            8701
        );
    }

    #[test]
    fn source_ip_ranges() {
        let v = parse_source_ips("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(
            v,
            vec![
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.3".parse().unwrap(),
                "127.0.0.4".parse().unwrap()
            ]
        );
        let v = parse_source_ips("127.0.0.9, 10.0.0.255-10.0.1.1,::1").unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[2], "10.0.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(v[4], "::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_source_ips("127.0.0.1").unwrap().len(), 1);
        assert!(parse_source_ips("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_source_ips("127.0.0.x").is_err());
        assert!(parse_source_ips("::1-::2").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("10.0.0.0-10.255.255.255").is_err());
    }

    #[test]
    fn urls() {
        let u = parse_url("ws://127.0.0.1:8700/ws?x=1", "ws", 80).unwrap();
        assert_eq!(u.addr, "127.0.0.1:8700".parse().unwrap());
        assert_eq!(u.path, "/ws?x=1");
        assert_eq!(u.authority, "127.0.0.1:8700");
        assert_eq!(u.host, "127.0.0.1");
        assert!(!u.tls);
        let u = parse_api_url("https://localhost/x").unwrap();
        assert!(
            u.tls && u.authority == "localhost" && u.addr.port() == 443,
            "{u:?}"
        );
        assert!(!parse_api_url("http://127.0.0.1:9").unwrap().tls);
        assert!(parse_api_url("ws://127.0.0.1:9").is_err());
        let u = parse_url("http://127.0.0.1", "http", 80).unwrap();
        assert_eq!(u.addr.port(), 80);
        assert_eq!(u.path, "/");
        assert!(parse_url("http://127.0.0.1:1/", "ws", 80).is_err());
        let v = parse_ws_urls("ws://127.0.0.1:1/ws, ws://127.0.0.1:2/a").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].addr.port(), v[1].path.as_str()), (1, "/a"));
        assert!(parse_ws_urls("ws://127.0.0.1:1/ws,,ws://127.0.0.1:2/ws")
            .unwrap_err()
            .contains("empty URL"));
        assert!(parse_ws_urls("ws://127.0.0.1:1/ws,http://x/").is_err());
        assert_eq!(rotate_url_list("a,b,c", 4), "b,c,a");
        assert_eq!(rotate_url_list("a", 7), "a");
    }

    #[test]
    fn wss_urls() {
        let u = parse_ws_url("wss://127.0.0.1/ws").unwrap();
        assert!(u.tls);
        assert_eq!(u.addr.port(), 443, "wss defaults to 443");
        assert_eq!(
            (u.host.as_str(), u.authority.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        let u = parse_ws_url("wss://localhost:8443/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.addr.port(), u.path.as_str()),
            ("localhost", 8443, "/x")
        );
        let u = parse_ws_url("wss://[::1]:9/ws").unwrap();
        assert_eq!((u.host.as_str(), u.authority.as_str()), ("::1", "[::1]:9"));
        let u = parse_ws_url("ws://[::1]/ws").unwrap();
        assert_eq!((u.host.as_str(), u.addr.port(), u.tls), ("::1", 80, false));
        let v = parse_ws_urls("ws://127.0.0.1:1/ws,wss://127.0.0.1:2/ws").unwrap();
        assert_eq!((v[0].tls, v[1].tls), (false, true));
        let e = parse_ws_url("https://127.0.0.1/ws").unwrap_err();
        assert!(e.contains("ws:// or wss://"), "{e}");
    }

    #[test]
    fn proc_parsers() {
        let st = "Name:\tthrong\nVmPeak:\t  9999 kB\nVmRSS:\t   12345 kB\nRssAnon:\t    9000 kB\nThreads: 3\n";
        assert_eq!(parse_vmrss(st), Some(12345 * 1024));
        assert_eq!(parse_status_kb(st, "RssAnon:"), Some(9000 * 1024));
        let ss =
            "sockets: used 300\nTCP: inuse 20 orphan 0 tw 3 alloc 25 mem 42\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat_tcp_mem(ss), Some(42));
        let mi = "MemTotal:  100 kB\nSlab:             229876 kB\nSReclaimable: 1 kB\n";
        assert_eq!(parse_meminfo_kb(mi, "Slab:"), Some(229876 * 1024));
    }

    #[test]
    fn histogram_pairs_merge() {
        let mut a = new_hist();
        for v in [10, 20, 30, 1000, 50_000] {
            record(&mut a, v);
        }
        let mut b = new_hist();
        hist_add_pairs(&mut b, &hist_to_pairs(&a));
        assert_eq!(b.len(), 5);
        assert_eq!(percentiles(&a).p50, percentiles(&b).p50);
        assert_eq!(b.max(), a.max());
    }
}
