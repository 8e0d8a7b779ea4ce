//! Who the authority serves when many ask at once: connection counts per
//! client address and in all, a share kept for addresses gateways call
//! from, and enrollment token buckets. Nobody holds the capacity by being
//! slow (the server bounds every phase in time); memory stays bounded
//! however many addresses come.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::authority::config::EnrollmentLimits;

/// Connections served at once, all addresses together.
pub(super) const MAX_CONNECTIONS: usize = 1024;
/// Of those, connections only addresses that authenticated an identity
/// within [`ESTABLISHED_FOR`] may use: gateways are served while strangers
/// crowd the rest.
pub(super) const RESERVED: usize = 256;
/// Connections one client address may hold at once. A site's NAT with
/// hundreds of gateways still needs only a few at a time.
pub const MAX_PER_ADDRESS: usize = 32;
/// How long an address counts as a gateway's after an identity
/// authenticated from it.
pub(super) const ESTABLISHED_FOR: Duration = Duration::from_secs(24 * 3600);
/// Addresses remembered as established, at most (the oldest go first).
pub(super) const ESTABLISHED_MAX: usize = 100_000;
/// Who may use the server's capacity: connection counts per address and
/// in all, addresses known for a gateway, and enrollment buckets. Nobody
/// holds it by being slow: a connection's handshake, headers, body and
/// lifetime are each bounded in time.
pub struct Gate {
    state: Mutex<GateState>,
    limits: EnrollmentLimits,
    pub(super) enrolling: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new(EnrollmentLimits::default())
    }
}

#[derive(Default)]
struct GateState {
    open: usize,
    per_address: HashMap<IpAddr, usize>,
    established: HashMap<IpAddr, Instant>,
    buckets: HashMap<IpAddr, Bucket>,
    last_refusal_log: Option<Instant>,
}

/// A token bucket: `tokens` left as of `at`.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A connection admitted by the [`Gate`]; gives its place back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.open = s.open.saturating_sub(1);
        if let Some(n) = s.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_address.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    pub fn new(limits: EnrollmentLimits) -> Gate {
        Gate {
            state: Mutex::default(),
            limits,
            enrolling: tokio::sync::Semaphore::new(limits.concurrency),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, &'static str> {
        let ip = client_key(ip);
        let mut s = self.lock();
        if s.per_address.get(&ip).copied().unwrap_or(0) >= MAX_PER_ADDRESS {
            return Err("it holds the most connections one address may");
        }
        let established = s
            .established
            .get(&ip)
            .is_some_and(|at| at.elapsed() < ESTABLISHED_FOR);
        let room = if established {
            MAX_CONNECTIONS
        } else {
            MAX_CONNECTIONS - RESERVED
        };
        if s.open >= room {
            return Err("the server is full");
        }
        s.open += 1;
        *s.per_address.entry(ip).or_default() += 1;
        Ok(Admitted {
            gate: self.clone(),
            ip,
        })
    }

    /// Addresses gateways called from, as the store tells (from every
    /// replica, and from before a restart): they may use the reserved
    /// share too. What this process saw itself stays as it is.
    pub fn learn(&self, addresses: &[IpAddr]) {
        let mut s = self.lock();
        for ip in addresses {
            if s.established.len() >= ESTABLISHED_MAX {
                break;
            }
            s.established
                .entry(client_key(*ip))
                .or_insert_with(Instant::now);
        }
    }

    /// An identity authenticated from `ip`: it may use the reserved share.
    pub(super) fn established(&self, ip: IpAddr) {
        let ip = client_key(ip);
        let mut s = self.lock();
        if s.established.len() >= ESTABLISHED_MAX && !s.established.contains_key(&ip) {
            // Forget the older half rather than grow: bounded memory wins
            // over perfect recall of every gateway.
            let mut ages: Vec<Instant> = s.established.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            s.established.retain(|_, at| *at > cut);
        }
        s.established.insert(ip, Instant::now());
    }

    /// Takes one enrollment token of `ip`'s bucket, or says how long until
    /// one is there.
    pub(super) fn enroll_allowed(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = client_key(ip);
        let burst = f64::from(self.limits.per_address_burst);
        let every = self.limits.per_address_every.as_secs_f64();
        let mut s = self.lock();
        let now = Instant::now();
        if s.buckets.len() >= ESTABLISHED_MAX {
            // A bucket that has filled up again carries no information:
            // forget those; if an attack from very many addresses keeps
            // them all fresh, forget all (memory stays bounded, and the
            // worst an attacker wins is a fresh burst per address).
            s.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() / every < burst);
            if s.buckets.len() >= ESTABLISHED_MAX / 2 {
                s.buckets.clear();
            }
        }
        let b = s.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() / every;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.limits.per_address_every.mul_f64(1.0 - b.tokens))
        }
    }

    /// Whether a refused connection should be logged: once a minute at
    /// most, an attack must not fill the journal.
    pub(super) fn log_refusal(&self) -> bool {
        let mut s = self.lock();
        let due = s
            .last_refusal_log
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if due {
            s.last_refusal_log = Some(Instant::now());
        }
        due
    }
}

/// What counts as one client: an IPv4 address, or an IPv6 /64 (one
/// subscriber's or site's network: a single host can take as many
/// addresses in it as it likes).
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_caps_each_address_and_keeps_a_share_for_gateways() {
        let gate = Arc::new(Gate::default());
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<Admitted> = (0..MAX_PER_ADDRESS)
            .map(|_| gate.admit(stranger).unwrap())
            .collect();
        assert!(gate.admit(stranger).is_err(), "one address is capped");
        drop(held);
        // Strangers from many addresses fill the general share...
        let mut crowd = Vec::new();
        for i in 0..(MAX_CONNECTIONS - RESERVED) {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            crowd.push(gate.admit(ip).unwrap());
        }
        assert!(gate.admit("10.9.9.9".parse().unwrap()).is_err());
        // ...and a gateway's address still gets in, up to the whole.
        let gateway: IpAddr = "198.51.100.7".parse().unwrap();
        gate.established(gateway);
        let mine: Vec<Admitted> = (0..MAX_PER_ADDRESS)
            .map(|_| gate.admit(gateway).unwrap())
            .collect();
        assert_eq!(
            gate.lock().open,
            MAX_CONNECTIONS - RESERVED + MAX_PER_ADDRESS
        );
        drop(mine);
        drop(crowd);
        assert_eq!(gate.lock().open, 0);
        assert!(gate.lock().per_address.is_empty());
    }

    #[test]
    fn an_ipv6_network_counts_as_one_client() {
        let gate = Arc::new(Gate::default());
        let held: Vec<Admitted> = (0..MAX_PER_ADDRESS)
            .map(|i| {
                gate.admit(format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap())
                    .unwrap()
            })
            .collect();
        assert!(gate.admit("2001:db8:1:2:ffff::1".parse().unwrap()).is_err());
        assert!(gate.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        drop(held);
    }

    #[test]
    fn enrollment_buckets_stay_bounded_under_a_spread_out_flood() {
        let gate = Gate::default();
        for i in 0..(ESTABLISHED_MAX as u32 + 10) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = gate.enroll_allowed(ip);
            let _ = gate.enroll_allowed(ip);
        }
        assert!(gate.lock().buckets.len() <= ESTABLISHED_MAX);
    }

    #[test]
    fn enrollment_is_a_burst_then_one_a_second_per_address() {
        let gate = Gate::default();
        let limits = EnrollmentLimits::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..limits.per_address_burst {
            assert!(gate.enroll_allowed(ip).is_ok());
        }
        let wait = gate.enroll_allowed(ip).unwrap_err();
        assert!(wait <= limits.per_address_every, "{wait:?}");
        assert!(gate.enroll_allowed("192.0.2.10".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_enrollment_limits_are_the_configured_ones() {
        let gate = Gate::new(EnrollmentLimits {
            per_address_burst: 50,
            per_address_every: Duration::from_secs(10),
            concurrency: 2,
        });
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..50 {
            assert!(gate.enroll_allowed(ip).is_ok());
        }
        let wait = gate.enroll_allowed(ip).unwrap_err();
        assert!(wait > Duration::from_secs(9), "{wait:?}");
        assert_eq!(gate.enrolling.available_permits(), 2);
    }
}
