//! The brake on guessing credentials: failed enrolment codes and failed
//! device tokens are counted per client address, and an address that fails
//! too often in a window is refused every authentication attempt (right or
//! wrong: otherwise the lockout would still say which guess was right) for a
//! lockout period, with 429 and `Retry-After`.
//!
//! A successful authentication is not counted, and does not reset the count
//! either (a device with one good token could otherwise interleave guesses
//! with successes). IPv6 clients are keyed by their /64, the block one client
//! usually holds. The table is capped: when full, entries whose window and
//! lockout are over go first, then the oldest.
//!
//! Hand-written, not `governor`: governor meters every request (a token
//! bucket), while this counts only failures and locks out after them; the
//! brake is about 100 lines with its tests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures, in what window, lock an address out for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failures within `window` that lock an address out (at least 1).
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
    /// Addresses remembered at most (memory bound).
    pub max_addresses: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            max_failures: 20,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            max_addresses: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Entry {
    /// Nothing left to remember: window over, no lockout running.
    fn expired(&self, now: Instant, window: Duration) -> bool {
        now.duration_since(self.window_start) >= window
            && self.locked_until.is_none_or(|t| now >= t)
    }
}

/// Failed authentications per client address.
#[derive(Debug)]
pub struct AuthLimiter {
    limits: AuthLimits,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

/// The key an address is counted under.
pub(crate) fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl AuthLimiter {
    pub fn new(limits: AuthLimits) -> Self {
        AuthLimiter {
            limits,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> AuthLimits {
        self.limits
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // A panic elsewhere while holding it leaves counters, nothing unsafe.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(retry_after)` while `addr` is locked out.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.table().get(&key(addr)).and_then(|e| e.locked_until) {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt; `Some(lockout)` when this one locked `addr` out.
    pub fn failure(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let limits = self.limits;
        let mut table = self.table();
        let k = key(addr);
        if !table.contains_key(&k) && table.len() >= limits.max_addresses {
            table.retain(|_, e| !e.expired(now, limits.window));
            if table.len() >= limits.max_addresses {
                let oldest = table
                    .iter()
                    .filter(|(_, e)| e.locked_until.is_none_or(|t| now >= t))
                    .min_by_key(|(_, e)| e.window_start)
                    .or_else(|| table.iter().min_by_key(|(_, e)| e.window_start))
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    table.remove(&oldest);
                }
            }
        }
        let e = table.entry(k).or_insert(Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
        });
        if e.expired(now, limits.window) {
            *e = Entry {
                window_start: now,
                failures: 0,
                locked_until: None,
            };
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= limits.max_failures.max(1) && e.locked_until.is_none_or(|t| now >= t) {
            e.locked_until = Some(now + limits.lockout);
            // The lockout's end starts a fresh window.
            e.window_start = now + limits.lockout;
            e.failures = 0;
            return Some(limits.lockout);
        }
        None
    }

    /// Failures counted against `addr` in its current window (1 right
    /// after the first: what the audit records, once per window).
    pub fn failures(&self, addr: IpAddr) -> u32 {
        self.table().get(&key(addr)).map_or(0, |e| e.failures)
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_failures: u32, max_addresses: usize) -> AuthLimiter {
        AuthLimiter::new(AuthLimits {
            max_failures,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            max_addresses,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn locks_out_after_the_limit_until_the_lockout_ends() {
        let l = limiter(3, 10);
        let (a, t0) = (ip("192.0.2.1"), Instant::now());
        for i in 0..2 {
            assert_eq!(l.failure(a, t0), None, "failure {i} is within the limit");
            assert_eq!(l.check(a, t0), Ok(()));
        }
        assert_eq!(l.failure(a, t0), Some(Duration::from_secs(300)));
        assert_eq!(l.check(a, t0), Err(Duration::from_secs(300)));
        let later = t0 + Duration::from_secs(200);
        assert_eq!(l.check(a, later), Err(Duration::from_secs(100)));
        // Other addresses are not affected.
        assert_eq!(l.check(ip("192.0.2.2"), t0), Ok(()));
        let after = t0 + Duration::from_secs(300);
        assert_eq!(l.check(a, after), Ok(()));
        // A fresh count after the lockout.
        for _ in 0..2 {
            assert_eq!(l.failure(a, after), None);
        }
        assert!(l.failure(a, after).is_some());
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_add_up() {
        let l = limiter(3, 10);
        let (a, t0) = (ip("192.0.2.1"), Instant::now());
        for minute in 0..10u64 {
            let t = t0 + Duration::from_secs(61 * minute);
            assert_eq!(l.failure(a, t), None);
            assert_eq!(l.failure(a, t), None);
            assert_eq!(l.check(a, t), Ok(()));
        }
    }

    #[test]
    fn an_ipv6_client_is_one_address_per_64() {
        let l = limiter(2, 10);
        let t0 = Instant::now();
        assert_eq!(l.failure(ip("2001:db8:1:2::1"), t0), None);
        assert!(l.failure(ip("2001:db8:1:2::ffff"), t0).is_some());
        assert!(l.check(ip("2001:db8:1:2:abcd::9"), t0).is_err());
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        // An IPv4 client seen through an IPv6 socket is the IPv4 address.
        assert_eq!(l.failure(ip("::ffff:192.0.2.7"), t0), None);
        assert!(l.failure(ip("192.0.2.7"), t0).is_some());
    }

    #[test]
    fn the_table_is_bounded_and_keeps_lockouts_first() {
        let l = limiter(2, 100);
        let t0 = Instant::now();
        let attacker = ip("198.51.100.1");
        assert_eq!(l.failure(attacker, t0), None);
        assert!(l.failure(attacker, t0).is_some());
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.failure(a, t0 + Duration::from_millis(u64::from(i)));
            assert!(l.len() <= 100);
        }
        assert!(
            l.check(attacker, t0 + Duration::from_secs(10)).is_err(),
            "a running lockout outlives ordinary entries"
        );
    }
}
