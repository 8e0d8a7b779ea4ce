//! Wrong passwords per client address: after [`MAX_FAILURES`] within
//! [`WINDOW`], logins from that address are refused for [`LOCK`]. Memory
//! stays bounded however many addresses try.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
pub const LOCK: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most; past it the oldest half goes.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct Limiter(Mutex<HashMap<IpAddr, Tries>>);

#[derive(Clone, Copy)]
struct Tries {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Tries>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long logins from `ip` stay refused, if they are.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .get(&ip)
            .and_then(|t| t.locked_until)
            .map(|until| until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Counts a wrong password from `ip`; says why when it locks the
    /// address (once per lock).
    pub fn failed(&self, ip: IpAddr) -> Option<String> {
        let now = Instant::now();
        let mut all = self.lock();
        if all.len() >= MAX_ADDRESSES && !all.contains_key(&ip) {
            let mut ages: Vec<Instant> = all.values().map(|t| t.since).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            all.retain(|_, t| t.since > cut);
        }
        let t = all.entry(ip).or_insert(Tries {
            failures: 0,
            since: now,
            locked_until: None,
        });
        if now.duration_since(t.since) > WINDOW {
            *t = Tries {
                failures: 0,
                since: now,
                locked_until: None,
            };
        }
        t.failures += 1;
        if t.failures >= MAX_FAILURES && t.locked_until.is_none_or(|u| u <= now) {
            t.locked_until = Some(now + LOCK);
            t.failures = 0;
            t.since = now;
            return Some(format!(
                "{MAX_FAILURES} wrong passwords within {}; logins from this address refused for {}",
                humantime::format_duration(WINDOW),
                humantime::format_duration(LOCK)
            ));
        }
        None
    }

    /// A good login clears the count.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_wrong_passwords_lock_one_address_once() {
        let l = Limiter::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(l.failed(a), None);
        }
        assert!(l.locked(a).is_none());
        let why = l.failed(a).expect("the 20th locks");
        assert!(why.starts_with("20 wrong passwords within 15m"), "{why}");
        assert!(
            l.locked(a)
                .is_some_and(|left| left > Duration::from_secs(800))
        );
        assert!(l.locked(b).is_none(), "another address is not locked");
        assert_eq!(l.failed(a), None, "a lock is told once");
        l.succeeded(b);
        assert!(l.locked(a).is_some());
    }
}
