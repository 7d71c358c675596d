//! Admission control: connections in all and per IP (shared by the acceptor, which admits,
//! and the shards, which release), and the per-IP connect rate (the acceptor's alone).
//!
//! "Per IP" is per client network for IPv6: a /64, the least a host is given (it may use
//! a new address for every connection within it); an IPv4-mapped address counts as its
//! IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::handshake::Refusal;

/// Open-connection accounting. Touched once when a connection is admitted and once when
/// it ends, never per message.
pub struct Admission {
    max: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

impl Admission {
    /// Limits: `max` in all, `max_per_ip` per IP (0 = unlimited).
    pub fn new(max: usize, max_per_ip: usize) -> Admission {
        Admission {
            max,
            max_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Connections admitted and not yet released.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a new connection from `ip`, or says why it cannot be had: `reserve_ip` and
    /// `admit_reserved` in one step.
    pub fn try_admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.reserve_ip(ip)?;
        self.admit_reserved().inspect_err(|_| self.release_ip(ip))
    }

    /// Counts a handshake from `ip` toward `max_per_ip` from the moment it is accepted, so
    /// one address cannot hold more sockets than its limit while their heads are pending.
    /// Released by `release_ip`, or carried over to the connection by `admit_reserved`.
    pub fn reserve_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.max_per_ip == 0 {
            return Ok(());
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(client_key(ip)).or_insert(0);
        if *n as usize >= self.max_per_ip {
            return Err(Refusal::RateLimited(
                "too many connections from this IP address",
            ));
        }
        *n += 1;
        Ok(())
    }

    /// Turns a handshake reserved by `reserve_ip` into an open connection (its per-IP
    /// count carries over), or says why it cannot be had; the caller then releases the IP.
    pub fn admit_reserved(&self) -> Result<(), Refusal> {
        // Several acceptors may admit at once: the count only rises below the bound.
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| Refusal::OverCapacity("server is at max_connections"))
    }

    /// Forgets a per-IP count taken by `reserve_ip` that did not become a connection.
    pub fn release_ip(&self, ip: IpAddr) {
        if self.max_per_ip == 0 {
            return;
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let key = client_key(ip);
        if let Some(n) = map.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&key);
            }
        }
    }

    /// Forgets a connection admitted by `try_admit` or `admit_reserved`.
    pub fn release(&self, ip: IpAddr) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.release_ip(ip);
    }

    /// Pending handshakes plus open connections counted for `ip` (0 when unlimited).
    pub fn per_ip_count(&self, ip: IpAddr) -> usize {
        let map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&client_key(ip)).map_or(0, |n| *n as usize)
    }
}

/// The NAT64 well-known prefix, 64:ff9b::/96 (RFC 6052): the client behind it is the
/// IPv4 address in its last 32 bits.
const NAT64: u128 = 0x0064_ff9b << 96;

/// What the per-IP limits count `ip` under: itself for IPv4, its /64 for IPv6; an
/// IPv4-mapped or NAT64 address counts as the IPv4 address it carries.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None if bits >> 32 == NAT64 >> 32 => IpAddr::V4((bits as u32).into()),
                None => IpAddr::V6(Ipv6Addr::from_bits(bits & !u128::from(u64::MAX))),
            }
        }
    }
}

/// Token bucket per client IP: `rate` new connections per second, bursts of `rate`.
pub(crate) struct ConnectRate {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    last_prune: Instant,
}

impl ConnectRate {
    /// `rate` per second per IP; 0 disables the limit.
    pub(crate) fn new(rate: u32) -> ConnectRate {
        ConnectRate {
            rate: f64::from(rate),
            buckets: HashMap::new(),
            last_prune: Instant::now(),
        }
    }

    /// Takes one token for `ip`; false when the IP is over its rate.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if now.duration_since(self.last_prune).as_secs() >= 10 {
            // Full buckets carry no information; dropping them bounds the map.
            let rate = self.rate;
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
            self.last_prune = now;
        }
        let (tokens, at) = self
            .buckets
            .entry(client_key(ip))
            .or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_ipv6_client_network_counts_as_one_address() {
        let a = Admission::new(100, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        a.try_admit(ip("2001:db8:1:2::1")).unwrap();
        a.try_admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        // A third address of the same /64 is the same client.
        assert!(a.try_admit(ip("2001:db8:1:2::3")).is_err());
        // Another /64 is another client; an IPv4-mapped address is its IPv4 address.
        a.try_admit(ip("2001:db8:1:3::1")).unwrap();
        a.try_admit(ip("::ffff:192.0.2.1")).unwrap();
        a.try_admit(ip("192.0.2.1")).unwrap();
        assert!(a.try_admit(ip("192.0.2.1")).is_err());
        // Clients behind a NAT64 are the IPv4 addresses they carry, not one /64.
        a.try_admit(ip("64:ff9b::198.51.100.1")).unwrap();
        a.try_admit(ip("64:ff9b::198.51.100.2")).unwrap();
        a.try_admit(ip("64:ff9b::198.51.100.3")).unwrap();
        assert_eq!(a.per_ip_count(ip("198.51.100.1")), 1);
        a.release(ip("2001:db8:1:2::1"));
        assert_eq!(a.per_ip_count(ip("2001:db8:1:2::77")), 1);
        a.try_admit(ip("2001:db8:1:2::3")).unwrap();
        let mut r = ConnectRate::new(1);
        let now = Instant::now();
        assert!(r.allow(ip("2001:db8:1:2::1"), now));
        assert!(
            !r.allow(ip("2001:db8:1:2::2"), now),
            "same /64, same bucket"
        );
        assert!(r.allow(ip("2001:db8:1:4::2"), now));
    }

    #[test]
    fn counts_in_all_and_per_ip() {
        let a = Admission::new(3, 2);
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(a.try_admit(ip1).is_ok());
        assert!(a.try_admit(ip1).is_ok());
        assert!(matches!(a.try_admit(ip1), Err(Refusal::RateLimited(_))));
        assert!(a.try_admit(ip2).is_ok());
        assert!(matches!(a.try_admit(ip2), Err(Refusal::OverCapacity(_))));
        a.release(ip1);
        assert_eq!(a.open(), 2);
        assert!(a.try_admit(ip1).is_ok());
    }

    #[test]
    fn reserved_handshakes_count_per_ip_once() {
        let a = Admission::new(10, 2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(a.reserve_ip(ip).is_ok());
        assert!(a.reserve_ip(ip).is_ok());
        // Two handshakes pending: the third socket from the address is refused at once.
        assert!(matches!(a.reserve_ip(ip), Err(Refusal::RateLimited(_))));
        // One becomes a connection (no second count), the other is refused and released.
        assert!(a.admit_reserved().is_ok());
        a.release_ip(ip);
        assert_eq!((a.open(), a.per_ip_count(ip)), (1, 1));
        assert!(a.reserve_ip(ip).is_ok());
        assert!(matches!(a.reserve_ip(ip), Err(Refusal::RateLimited(_))));
        a.release_ip(ip);
        a.release(ip);
        assert_eq!((a.open(), a.per_ip_count(ip)), (0, 0));
        // Unlimited per IP: nothing is kept per address.
        let u = Admission::new(10, 0);
        assert!(u.reserve_ip(ip).is_ok());
        assert_eq!(u.per_ip_count(ip), 0);
    }

    #[test]
    fn rate_refills() {
        let mut r = ConnectRate::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(r.allow(ip, t0));
        assert!(r.allow(ip, t0));
        assert!(!r.allow(ip, t0));
        assert!(r.allow(ip, t0 + Duration::from_millis(600)));
        assert!(ConnectRate::new(0).allow(ip, t0));
    }
}
