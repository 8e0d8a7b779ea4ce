//! The keeper's decisions, on synthetic time against a fake authority and
//! an in-memory store: each test runs in milliseconds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::shutdown::Shutdown;
use crate::wire::api::{ApiError, ErrorCode, InfluxApi, LeaseInfo, Target};

/// What the fake authority answers and what it was asked.
#[derive(Default)]
struct Calls {
    created: Vec<String>,
    revoked: Vec<String>,
    listed: usize,
    /// Answers to the next creations, in order; a lease of 600 s when
    /// empty.
    answers: VecDeque<Answer>,
    /// Active leases, by identity, for a replaced identity's revocation.
    active: Vec<(String, String)>,
}

enum Answer {
    Lease(u64),
    Down,
    IdentityRevoked,
    /// A 1.x grant whose secret is not `user:password`.
    Unusable,
    /// A lease of 600 s from an authority telling of its CA.
    WithCa(crate::wire::api::DeploymentCa),
    /// A lease of 600 s with the authority's time and the round trip.
    Timed(i64, crate::clock::RoundTrip),
}

#[derive(Clone, Default)]
struct FakeAuthority(Arc<Mutex<Calls>>);

impl FakeAuthority {
    fn calls<T>(&self, f: impl FnOnce(&mut Calls) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    fn created(&self) -> usize {
        self.calls(|c| c.created.len())
    }
    fn revoked(&self) -> Vec<String> {
        self.calls(|c| c.revoked.clone())
    }
    fn answer(&self, a: Answer) {
        self.calls(|c| c.answers.push_back(a));
    }
}

fn grant(id: &str, ttl_secs: u64, api: InfluxApi, secret: &str) -> LeaseGrant {
    LeaseGrant {
        lease: LeaseInfo {
            id: id.into(),
            identity_id: "i".into(),
            issued_for: "gw".into(),
            role: "r".into(),
            status: LeaseStatus::Active,
            ttl_secs,
            created_ms: 0,
            expires_ms: 0,
            target: Target {
                api,
                url: "http://127.0.0.1:8086/".into(),
                org: Some("o".into()),
                bucket: Some("b".into()),
                database: Some("db".into()),
            },
            last_error: None,
        },
        secret: Secret::new(secret),
        deployment_ca: None,
        authority_time_ms: None,
        round_trip: None,
    }
}

impl Authority for FakeAuthority {
    fn create_lease(&mut self, identity: &Identity, _: &Ask) -> Result<LeaseGrant, ClientError> {
        let mut c = self.0.lock().unwrap();
        let id = format!("l{}", c.created.len() + 1);
        let answer = c.answers.pop_front().unwrap_or(Answer::Lease(600));
        let down = || ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            source: ureq::Error::Io(std::io::Error::other("connection refused")),
        };
        match answer {
            Answer::Down => return Err(down()),
            Answer::IdentityRevoked => {
                return Err(ClientError::Refused(ApiError::new(
                    ErrorCode::IdentityRevoked,
                    "revoked",
                )));
            }
            _ => {}
        }
        c.created.push(id.clone());
        c.active.push((identity.identity_id.clone(), id.clone()));
        Ok(match answer {
            Answer::Lease(ttl) => grant(&id, ttl, InfluxApi::V2, "tok"),
            Answer::WithCa(ca) => LeaseGrant {
                deployment_ca: Some(ca),
                ..grant(&id, 600, InfluxApi::V2, "tok")
            },
            Answer::Timed(ms, trip) => LeaseGrant {
                authority_time_ms: Some(ms),
                round_trip: Some(trip),
                ..grant(&id, 600, InfluxApi::V2, "tok")
            },
            _ => grant(&id, 600, InfluxApi::V1, "no-colon"),
        })
    }

    fn revoke(&mut self, _: &Identity, lease_id: &str) -> Result<(), ClientError> {
        let mut c = self.0.lock().unwrap();
        c.revoked.push(lease_id.into());
        c.active.retain(|(_, l)| l != lease_id);
        Ok(())
    }

    fn active_leases(&mut self, identity: &Identity) -> Result<Vec<String>, ClientError> {
        let mut c = self.0.lock().unwrap();
        c.listed += 1;
        Ok(c.active
            .iter()
            .filter(|(i, _)| *i == identity.identity_id)
            .map(|(_, l)| l.clone())
            .collect())
    }
}

#[derive(Clone, Default)]
struct MemoryStore(Arc<Mutex<Vec<String>>>);

impl MemoryStore {
    fn log(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl LeaseStore for MemoryStore {
    fn save_lease(&mut self, lease: &StoredLease) {
        self.0
            .lock()
            .unwrap()
            .push(format!("save {}", lease.grant.lease.id));
    }
    fn remove_lease(&mut self) {
        self.0.lock().unwrap().push("remove lease".into());
    }
    fn forget_identity(&mut self) {
        self.0.lock().unwrap().push("forget".into());
    }
    fn save_retired(&mut self, old: &Identity) {
        self.0
            .lock()
            .unwrap()
            .push(format!("retire {}", old.identity_id));
    }
    fn clear_retired(&mut self, identity_id: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("cleared {identity_id}"));
    }
    fn save_identity(&mut self, identity: &Identity) {
        self.0.lock().unwrap().push(format!(
            "identity ca={:?} cert={:?}",
            identity.ca_sha256.as_deref().map(|p| &p[..4]),
            identity.cert_sha256.as_deref().map(|p| &p[..4])
        ));
    }
}

fn identity(id: &str) -> Identity {
    Identity {
        identity_id: id.into(),
        identity_name: "gw".into(),
        role: "r".into(),
        attributes: Default::default(),
        credential: Secret::new("cred"),
        authority_url: "http://127.0.0.1:1".into(),
        authority_urls: Vec::new(),
        cert_sha256: None,
        ca_sha256: None,
        system_trust: false,
        enrolled_ms: 0,
    }
}

fn settings() -> LeaseSettings {
    LeaseSettings {
        state_dir: "/nonexistent/state".into(),
        ticket_dir: "/nonexistent/tickets".into(),
        lease: LeaseConfig {
            identity_name: "gw".into(),
            ttl: None,
            system_trust: false,
            url_override: None,
            gzip: true,
            timeout: Duration::from_secs(1),
        },
    }
}

struct Rig {
    keeper: Keeper<FakeAuthority, MemoryStore>,
    authority: FakeAuthority,
    store: MemoryStore,
    slot: Arc<Slot>,
    t0: Instant,
}

impl Rig {
    /// An enrolled keeper (its first lease not yet asked for) whose
    /// renewals fall at exactly 60% of the lifetime.
    fn enrolled() -> Rig {
        Rig::start(Some(identity("i1")), None, Vec::new())
    }

    fn start(id: Option<Identity>, stored: Option<StoredLease>, replaced: Vec<Identity>) -> Rig {
        let (authority, store) = (FakeAuthority::default(), MemoryStore::default());
        let slot = Slot::new(&Shutdown::new());
        let t0 = Instant::now();
        let keeper = Keeper::new(
            settings(),
            id,
            stored,
            replaced,
            authority.clone(),
            store.clone(),
            slot.clone(),
            t0,
            crate::now_ms(),
        )
        .with_jitter(|| 0.0);
        Rig {
            keeper,
            authority,
            store,
            slot,
            t0,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn event(&mut self, e: Event, secs: f64) {
        let at = self.at(secs);
        self.keeper.on_event(e, at);
    }

    fn tick(&mut self, secs: f64) {
        self.event(Event::Tick, secs);
    }

    /// The lease in force.
    fn lease(&self) -> Option<String> {
        self.slot
            .current()
            .1
            .and_then(|c| c.lease_id().map(str::to_owned))
    }

    /// Ticks at exactly the keeper's next wake; returns when that was.
    fn tick_at_wake(&mut self) -> f64 {
        let at = self.keeper.next_wake().expect("something is due");
        self.keeper.on_event(Event::Tick, at);
        at.saturating_duration_since(self.t0).as_secs_f64()
    }

    fn wakes_in(&self) -> Option<f64> {
        self.keeper
            .next_wake()
            .map(|t| t.saturating_duration_since(self.t0).as_secs_f64())
    }
}

#[test]
fn a_lease_is_renewed_at_the_share_of_its_lifetime_and_the_old_one_revoked_after_the_grace() {
    let mut r = Rig::enrolled();
    r.tick(0.0);
    assert_eq!(r.lease().as_deref(), Some("l1"));
    assert_eq!(r.store.log(), ["save l1"]);
    // 2/3 of 600 s less 10%: 360 s (jitter 0; up to 20% less with 1).
    assert_eq!(r.wakes_in(), Some(360.0));
    r.tick(359.9);
    assert_eq!(r.authority.created(), 1, "not before the renewal is due");
    r.tick(360.0);
    assert_eq!(r.lease().as_deref(), Some("l2"));
    assert!(
        r.authority.revoked().is_empty(),
        "writes in flight finish with l1"
    );
    assert_eq!(r.wakes_in(), Some(363.0), "the revocation is next");
    r.tick(362.9);
    assert!(r.authority.revoked().is_empty());
    r.tick(363.0);
    assert_eq!(r.authority.revoked(), ["l1"]);
    assert_eq!(r.wakes_in(), Some(720.0));
    let view = r.keeper.view(r.at(363.0), 0);
    assert_eq!((view.leases_obtained, view.renewals), (2, 1));
    assert_eq!(view.lease_id.as_deref(), Some("l2"));

    // With the most jitter the renewal comes at 53.3% of the lifetime.
    let mut r = Rig::enrolled();
    r.keeper = r.keeper.with_jitter(|| 1.0);
    r.tick(0.0);
    let share = r.wakes_in().unwrap() / 600.0;
    assert!((share - 0.5333).abs() < 0.001, "{share}");
}

#[test]
fn each_lease_that_tells_the_authoritys_time_gives_the_clock_offset() {
    let mut r = Rig::enrolled();
    // An authority before the time field: the lease is in force as ever,
    // and no offset is claimed.
    r.tick(0.0);
    assert_eq!(r.lease().as_deref(), Some("l1"));
    let view = r.keeper.view(r.at(0.0), 0);
    assert_eq!(view.clock_offset_ms, None);
    // Sent at 1,000 ms by a gateway clock 2 h behind, answered in 20 ms.
    let two_hours = 2 * 3_600_000;
    let trip = crate::clock::RoundTrip {
        sent_ns: 1_000_000_000,
        sent_boot_ns: 40_000_000_000,
        took: Duration::from_millis(20),
    };
    r.authority.answer(Answer::Timed(1_010 + two_hours, trip));
    r.tick(360.0);
    assert_eq!(r.lease().as_deref(), Some("l2"));
    let view = r.keeper.view(r.at(360.0), 0);
    let offset = view.clock_offset_ms.unwrap();
    assert!((offset - two_hours as f64).abs() < 1.0, "{offset}");
    assert_eq!(view.clock_offset_error_ms, Some(10.5));
    assert!(view.clock_measured_ms.is_some());
    // A later lease without it keeps the last estimate.
    r.tick(720.0);
    assert_eq!(r.lease().as_deref(), Some("l3"));
    let view = r.keeper.view(r.at(720.0), 0);
    assert_eq!(view.clock_offset_ms, Some(offset));
}

#[test]
fn a_grant_without_the_authoritys_time_reads_as_before() {
    let json = serde_json::json!({
        "id": "l1", "identity_id": "i", "issued_for": "gw", "role": "r",
        "status": "active", "ttl_secs": 600, "created_ms": 0, "expires_ms": 0,
        "target": {"api": "influxdb-v1", "url": "http://127.0.0.1:8086/", "database": "db"},
        "secret": "u:p"
    });
    let grant: LeaseGrant = serde_json::from_value(json).unwrap();
    assert_eq!(grant.authority_time_ms, None);
    assert_eq!(grant.round_trip, None);
    let json = serde_json::to_value(&grant).unwrap();
    assert!(
        json.get("round_trip").is_none(),
        "never on the wire: {json}"
    );
}

#[test]
fn a_refused_lease_that_wrote_is_replaced_at_once() {
    let mut r = Rig::enrolled();
    r.tick(0.0);
    r.event(Event::Wrote("l1".into()), 1.0);
    r.event(Event::Refused("l1".into()), 2.0);
    assert_eq!(r.authority.created(), 2, "one request, at once");
    assert_eq!(r.lease().as_deref(), Some("l2"));
    // A late report about the lease already replaced changes nothing.
    r.event(Event::Refused("l1".into()), 2.5);
    assert_eq!(r.authority.created(), 2);
}

#[test]
fn leases_refused_before_they_ever_wrote_back_off_instead_of_churning() {
    let mut r = Rig::enrolled();
    r.tick(0.0);
    // Every lease is refused each time the writer tries it, as with a role
    // that may not write: 15 s of it, a refusal every 10 ms.
    let mut t = 0.0;
    while t < 15.0 {
        if let Some(lease) = r.lease() {
            r.event(Event::Refused(lease), t);
        }
        t += 0.01;
        r.tick(t);
    }
    let created = r.authority.created();
    // 1 s, 2 s, 4 s, 8 s of backoff (less up to 25%): about five.
    assert!((4..=6).contains(&created), "{created} leases in 15 s");
    let view = r.keeper.view(r.at(t), 0);
    assert!(
        view.last_error
            .unwrap_or_default()
            .contains("before it wrote anything")
    );
    // A lease that writes ends the backoff: its refusal is answered at once.
    let before = r.authority.created();
    let mut next = t;
    for _ in 0..10 {
        if r.authority.created() > before {
            break;
        }
        next = r.tick_at_wake();
    }
    let lease = r.lease().unwrap();
    let created = r.authority.created();
    assert_eq!(created, before + 1, "the next lease came");
    r.event(Event::Wrote(lease.clone()), next + 0.01);
    r.event(Event::Refused(lease), next + 0.02);
    assert_eq!(r.authority.created(), created + 1);
}

#[test]
fn a_revoked_identity_goes_back_to_waiting_for_a_ticket() {
    let mut r = Rig::enrolled();
    r.tick(0.0);
    r.authority.answer(Answer::IdentityRevoked);
    r.tick(360.0);
    assert_eq!(r.lease(), None, "writes wait");
    assert!(r.store.log().contains(&"forget".to_owned()));
    let view = r.keeper.view(r.at(360.0), 0);
    assert_eq!(view.state, "waiting for a ticket");
    assert_eq!(view.identity_id, None);
    assert!(r.keeper.next_wake().is_none_or(|t| t <= r.at(363.0)));
    // Nothing more is asked until a new ticket comes.
    r.tick(1000.0);
    assert_eq!(r.authority.created(), 1);
    r.event(Event::Enrolled(Box::new(identity("i2"))), 1001.0);
    assert_eq!(r.lease().as_deref(), Some("l2"));
    assert_eq!(r.keeper.view(r.at(1001.0), 0).state, "enrolled");
}

#[test]
fn an_authority_away_past_the_ttl_stops_writes_then_a_lease_comes_when_it_is_back() {
    let mut r = Rig::enrolled();
    r.authority.answer(Answer::Lease(10));
    r.tick(0.0);
    assert_eq!(r.wakes_in(), Some(6.0));
    for _ in 0..20 {
        r.authority.answer(Answer::Down);
    }
    // Retries back off while the lease holds; at its end it is out of force.
    let mut attempts = Vec::new();
    let mut t = 6.0;
    while t < 30.0 {
        let before = r.authority.calls(|c| c.answers.len());
        r.tick(t);
        if r.authority.calls(|c| c.answers.len()) < before {
            attempts.push(t);
        }
        if t < 10.0 {
            assert_eq!(r.lease().as_deref(), Some("l1"), "at {t}");
        } else {
            assert_eq!(r.lease(), None, "expired at {t}");
        }
        t = r.wakes_in().unwrap().max(t + 0.001);
    }
    assert!(attempts.len() >= 4, "{attempts:?}");
    let gaps: Vec<f64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0] * 1.4), "{gaps:?}");
    assert!(r.store.log().contains(&"remove lease".to_owned()));
    let error = r.keeper.view(r.at(t), 0).last_error.unwrap();
    assert!(error.contains("cannot reach the authority"), "{error}");
    // Back: the next attempt gets a lease, and the error is gone.
    r.authority.calls(|c| c.answers.clear());
    let next = r.tick_at_wake();
    assert_eq!(r.lease().as_deref(), Some("l2"));
    assert_eq!(r.keeper.view(r.at(next), 0).last_error, None);
}

#[test]
fn a_replaced_identity_s_leases_go_only_once_the_new_identity_has_its_lease() {
    let mut r = Rig::enrolled();
    r.tick(0.0);
    r.authority.answer(Answer::Down);
    r.event(Event::Enrolled(Box::new(identity("i2"))), 10.0);
    // The new identity has no lease yet: the old one's stays in force.
    assert_eq!(r.lease().as_deref(), Some("l1"));
    assert!(r.store.log().contains(&"retire i1".to_owned()));
    r.tick(10.5);
    assert!(
        r.authority.revoked().is_empty(),
        "nothing before i2's lease"
    );
    let next = r.tick_at_wake();
    assert!((10.75..=11.0).contains(&next), "the backoff: {next}");
    assert_eq!(r.lease().as_deref(), Some("l2"));
    assert!(r.authority.revoked().is_empty(), "the grace first");
    r.tick(next + 3.0);
    assert_eq!(r.authority.revoked(), ["l1"], "every active lease of i1");
    assert_eq!(r.authority.calls(|c| c.listed), 1);
    assert!(r.store.log().contains(&"cleared i1".to_owned()));
}

#[test]
fn a_grant_the_gateway_cannot_use_is_given_back_with_its_own_error() {
    let mut r = Rig::enrolled();
    r.authority.answer(Answer::Unusable);
    r.tick(0.0);
    assert_eq!(r.lease(), None);
    assert_eq!(r.authority.revoked(), ["l1"], "it exists: given back");
    let error = r.keeper.view(r.at(0.0), 0).last_error.unwrap();
    assert!(
        error.contains("granted lease l1, but this gateway cannot use it")
            && error.contains("not user:password"),
        "{error}"
    );
    assert!(
        !error.contains("bad answer") && !error.contains("201"),
        "{error}"
    );
    // It is retried through the backoff, not at once.
    let next = r.tick_at_wake();
    assert!((0.75..=1.0).contains(&next), "{next}");
    assert_eq!(r.lease().as_deref(), Some("l2"));
}

#[test]
fn a_stored_lease_is_reused_while_its_renewal_is_not_due() {
    let id = identity("i1");
    let stored = |received_ms: i64| StoredLease {
        identity_id: "i1".into(),
        grant: grant("l9", 600, InfluxApi::V3, "tok"),
        received_ms,
        received_boot: None,
    };
    // 100 s of 600 used: reused, renewed when 360 s of it are used.
    let r = Rig::start(
        Some(id.clone()),
        Some(stored(crate::now_ms() - 100_000)),
        Vec::new(),
    );
    assert_eq!(r.lease().as_deref(), Some("l9"));
    // At 53 to 60% of the lifetime (random), less the 100 s used.
    let renew = r.wakes_in().unwrap();
    assert!((219.0..=261.0).contains(&renew), "{renew}");
    // 500 s used: too far gone; a new lease is asked for and l9 given back
    // once it is there.
    let mut r = Rig::start(
        Some(id),
        Some(stored(crate::now_ms() - 500_000)),
        Vec::new(),
    );
    assert_eq!(r.lease(), None);
    r.tick(0.0);
    assert_eq!(r.lease().as_deref(), Some("l1"));
    r.tick(3.0);
    assert_eq!(r.authority.revoked(), ["l9"]);
}

#[test]
fn an_idle_waiting_keeper_has_nothing_to_wake_for() {
    let r = Rig::start(None, None, Vec::new());
    assert_eq!(r.keeper.next_wake(), None);
    assert_eq!(r.keeper.view(r.t0, 0).state, "waiting for a ticket");
}

#[test]
fn a_lease_gives_every_write_setting() {
    let mut s = settings().lease;
    let g = grant("l", 60, InfluxApi::V1, "lg_l:pw");
    let i = influx_for(&g, &s).unwrap();
    assert_eq!((i.api, i.url.as_str()), (Api::V1, "http://127.0.0.1:8086"));
    assert_eq!(i.username.as_deref(), Some("lg_l"));
    assert_eq!(i.password.unwrap().expose(), "pw");
    assert_eq!(i.database.as_deref(), Some("db"));
    s.url_override = Some("http://127.0.0.1:9999".into());
    assert_eq!(influx_for(&g, &s).unwrap().url, "http://127.0.0.1:9999");
    let bad = grant("l", 60, InfluxApi::V1, "no-colon");
    assert!(influx_for(&bad, &s).is_err());
    let v3 = influx_for(&grant("l", 60, InfluxApi::V3, "apiv3_x"), &s).unwrap();
    assert_eq!(v3.token.unwrap().expose(), "apiv3_x");
}

#[test]
fn a_lifetime_from_a_broken_answer_cannot_overflow_the_clock() {
    let mut r = Rig::enrolled();
    r.authority.answer(Answer::Lease(u64::MAX));
    r.tick(0.0);
    assert_eq!(r.lease().as_deref(), Some("l1"));
    // Taken as a year, renewed at 60% of it.
    let renew = r.wakes_in().unwrap();
    assert!((renew - MAX_TTL_SECS as f64 * 0.6).abs() < 1.0, "{renew}");
}

#[test]
fn a_refused_lease_that_wrote_is_replaced_at_once_even_during_a_backoff() {
    let mut r = Rig::enrolled();
    r.tick(0.0);
    r.event(Event::Wrote("l1".into()), 1.0);
    // A new identity whose first lease fails: its next try is in a second.
    r.authority.answer(Answer::Down);
    r.event(Event::Enrolled(Box::new(identity("i2"))), 10.0);
    assert_eq!(r.lease().as_deref(), Some("l1"));
    // InfluxDB refuses the old lease meanwhile: that is answered at once.
    r.event(Event::Refused("l1".into()), 10.1);
    assert_eq!(r.lease().as_deref(), Some("l2"));
}

#[test]
fn a_certificate_pinned_identity_moves_to_the_ca_its_authority_names() {
    let mut id = identity("i1");
    id.authority_url = "https://127.0.0.1:7443".into();
    id.cert_sha256 = Some("ab".repeat(32));
    let mut r = Rig::start(Some(id), None, Vec::new());
    let ca = |signs| crate::wire::api::DeploymentCa {
        sha256: "CD".repeat(32),
        signs_served_certificate: signs,
    };
    // The authority still serves the old certificate: both are pinned.
    r.authority.answer(Answer::WithCa(ca(false)));
    r.tick(0.0);
    assert_eq!(
        r.store.log(),
        ["save l1", "identity ca=Some(\"cdcd\") cert=Some(\"abab\")"]
    );
    // Told again: nothing changes.
    r.authority.answer(Answer::WithCa(ca(false)));
    r.tick(360.0);
    assert_eq!(r.store.log().len(), 3, "{:?}", r.store.log());
    // It serves one the CA signed: the old pin goes.
    r.authority.answer(Answer::WithCa(ca(true)));
    r.tick(720.0);
    assert_eq!(
        r.store.log().last().unwrap(),
        "identity ca=Some(\"cdcd\") cert=None"
    );
    // Another CA named later does not replace the one pinned.
    r.authority
        .answer(Answer::WithCa(crate::wire::api::DeploymentCa {
            sha256: "ef".repeat(32),
            signs_served_certificate: true,
        }));
    r.tick(1080.0);
    assert!(
        r.store.log().last().unwrap().starts_with("save"),
        "{:?}",
        r.store.log()
    );
}

#[test]
fn adopting_a_ca_ignores_what_it_cannot_use() {
    let ca = crate::wire::api::DeploymentCa {
        sha256: "cd".repeat(32),
        signs_served_certificate: true,
    };
    // Plain HTTP and system trust pin nothing.
    let mut plain = identity("i");
    plain.cert_sha256 = Some("ab".repeat(32));
    assert!(!plain.adopt_ca(&ca));
    let mut pinned = identity("i");
    pinned.authority_url = "https://127.0.0.1:7443".into();
    pinned.cert_sha256 = Some("ab".repeat(32));
    let mut system = pinned.clone();
    system.system_trust = true;
    assert!(!system.adopt_ca(&ca));
    // A malformed fingerprint from the answer is not stored.
    let bad = crate::wire::api::DeploymentCa {
        sha256: "not hex".into(),
        signs_served_certificate: true,
    };
    assert!(!pinned.clone().adopt_ca(&bad));
    // In one step when the CA signs the served certificate already.
    assert!(pinned.adopt_ca(&ca));
    assert_eq!(
        (pinned.ca_sha256.as_deref(), pinned.cert_sha256.as_deref()),
        (Some("cd".repeat(32).as_str()), None)
    );
}

#[test]
fn a_stored_lease_is_aged_by_the_boots_clock_whatever_the_wall_clock_did() {
    use super::super::identity::BootStamp;
    let at = |boot: &str, ms: i64| BootStamp {
        boot_id: boot.into(),
        boottime_ms: ms,
    };
    let lease = StoredLease {
        identity_id: "i1".into(),
        grant: grant("l9", 3600, InfluxApi::V1, "tok"),
        // Received at wall 1,000,000 ms, 50 s into the boot.
        received_ms: 1_000_000,
        received_boot: Some(at("b1", 50_000)),
    };
    let two_hours = 7_200_000;
    // Restarted 60 s later in the same boot, after the clock stepped 2 h
    // forward: 60 s old, not 2 h.
    let wall = 1_000_000 + 60_000 + two_hours;
    assert_eq!(
        lease.received_by_the_clock_now(&at("b1", 110_000), wall),
        wall - 60_000
    );
    // Or back: still 60 s old, not from the future.
    let wall = 1_000_000 + 60_000 - two_hours;
    assert_eq!(
        lease.received_by_the_clock_now(&at("b1", 110_000), wall),
        wall - 60_000
    );
    // Another boot, or a file from before: the wall clock's record.
    assert_eq!(
        lease.received_by_the_clock_now(&at("b2", 110_000), wall),
        1_000_000
    );
    let old = StoredLease {
        received_boot: None,
        ..lease.clone()
    };
    assert_eq!(
        old.received_by_the_clock_now(&at("b1", 110_000), wall),
        1_000_000
    );
    // A file without the field still reads.
    let json = serde_json::to_value(&old).unwrap();
    assert!(json.get("received_boot").is_none());
    let back: StoredLease = serde_json::from_value(json).unwrap();
    assert_eq!(back.received_boot, None);
}
