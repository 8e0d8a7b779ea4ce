//! The store test suite, run against both stores: SQLite in a temporary
//! directory, and real PostgreSQL (Debian's `postgresql`, started here on
//! a free loopback port, a database per test). Each case gets two handles
//! on one store, as two authority replicas (or an admin command beside a
//! server) would have: what one writes, the other must see, and what both
//! do at once must add up.

use std::sync::Barrier;

use leasegate::authority::config::{PostgresConfig, StoreTls};
use leasegate::authority::store::postgres::PostgresStore;
use leasegate::authority::store::sqlite::SqliteStore;
use leasegate::authority::store::{
    Call, IdentityRow, Inserted, NewLease, RoleFor, Store, StoreError, TicketRow,
};
use leasegate::secret::Secret;
use leasegate::wire::api::{ErrorCode, InfluxApi, LeaseStatus, Target};
use support::postgres::{PASSWORD, Postgres};

/// Two handles on one SQLite file, and what keeps the file.
fn sqlite_pair() -> (tempfile::TempDir, Box<dyn Store>, Box<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authority.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    (dir, Box::new(a), Box::new(b))
}

fn pg_config(pg: &Postgres, database: &str) -> PostgresConfig {
    PostgresConfig {
        url: pg.url(database),
        password: Some(Secret::new(PASSWORD)),
        tls: StoreTls::Off,
        ca_file: None,
        max_connections: 8,
    }
}

/// Two handles (two pools, as two replicas) on one PostgreSQL database,
/// and the server.
fn postgres_pair() -> (Postgres, Box<dyn Store>, Box<dyn Store>) {
    let pg = Postgres::start();
    let config = pg_config(&pg, &pg.database());
    let a = PostgresStore::open(&config).unwrap();
    let b = PostgresStore::open(&config).unwrap();
    (pg, Box::new(a), Box::new(b))
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $case() {
                    let (_dir, a, b) = super::sqlite_pair();
                    super::$case(&*a, &*b);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $case() {
                    let (_pg, a, b) = super::postgres_pair();
                    super::$case(&*a, &*b);
                }
            )*
        }
    };
}

suite!(
    migrated_to_the_same_version_as_every_store,
    enroll_refuses_each_way_and_counts_uses,
    fifty_concurrent_redemptions_of_a_single_use_ticket_give_one_identity,
    concurrent_lease_requests_of_one_identity_stop_at_its_limit,
    leases_fall_due_in_expiry_order_and_end_once,
    audit_records_past_their_age_are_pruned,
    the_deployment_id_is_stored_once_and_cannot_change,
    what_one_handle_writes_the_other_reads,
    two_replicas_claiming_at_once_take_every_due_lease_exactly_once,
    a_lapsed_claim_is_taken_over_and_a_live_one_is_not,
    only_a_silent_replicas_pending_leases_are_failed,
    lease_calls_keep_the_last_good_report_and_a_thinned_history,
    the_newest_lease_of_each_identity_is_found_among_many,
    admins_and_their_sessions_are_shared_and_end_together,
    the_audit_trail_pages_newest_first_and_finds_a_gateways_rows,
);

/// Enrolls identity `identity` (role "r") with a single-use ticket of
/// its own.
fn enrolled(s: &dyn Store, identity: &str) {
    let hash = format!("h-{identity}");
    s.insert_ticket(&ticket(&format!("t-{identity}"), 1, i64::MAX), &hash)
        .unwrap();
    s.enroll(
        &hash,
        1,
        &|_| Ok("r".into()),
        (identity, "gw", &format!("c-{identity}")),
    )
    .unwrap()
    .unwrap();
}

/// A lease of `identity` on backend "main", made by replica "r0".
fn new_lease<'a>(
    id: &'a str,
    identity: &'a str,
    target: &'a Target,
    expires_ms: i64,
) -> NewLease<'a> {
    NewLease {
        id,
        replica: "r0",
        identity_id: identity,
        role: "r",
        backend: "main",
        target,
        created_ms: 0,
        expires_ms,
    }
}

fn ticket(id: &str, usage: u32, expires_ms: i64) -> TicketRow {
    TicketRow {
        id: id.into(),
        attributes: [("service".to_owned(), "s".to_owned())].into(),
        role: None,
        usage_count: usage,
        used: 0,
        created_ms: 0,
        expires_ms,
        revoked_ms: None,
        identity_name: None,
    }
}

fn target() -> Target {
    Target {
        api: InfluxApi::V1,
        url: "http://127.0.0.1:1".into(),
        org: None,
        bucket: None,
        database: Some("db".into()),
    }
}

fn migrated_to_the_same_version_as_every_store(s: &dyn Store, other: &dyn Store) {
    assert_eq!(
        SqliteStore::known_version(),
        PostgresStore::known_version(),
        "a migration added to one store only"
    );
    assert_eq!(s.schema_version().unwrap(), SqliteStore::known_version());
    assert_eq!(other.schema_version().unwrap(), s.schema_version().unwrap());
}

fn fifty_concurrent_redemptions_of_a_single_use_ticket_give_one_identity(
    s: &dyn Store,
    other: &dyn Store,
) {
    s.insert_ticket(&ticket("t1", 1, i64::MAX), "h1").unwrap();
    let barrier = Barrier::new(50);
    let outcomes: Vec<Result<IdentityRow, (ErrorCode, Option<String>)>> =
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..50)
                .map(|i| {
                    let store = if i % 2 == 0 { s } else { other };
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        let (id, cred) = (format!("i{i}"), format!("c{i}"));
                        let role: RoleFor<'_> = &|_| Ok("r".to_owned());
                        store.enroll("h1", 5, role, (&id, "gw", &cred)).unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
    let enrolled = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(enrolled, 1, "exactly one redemption of a single-use ticket");
    for o in &outcomes {
        if let Err((code, ticket)) = o {
            assert_eq!(*code, ErrorCode::TicketUsedUp);
            assert_eq!(ticket.as_deref(), Some("t1"));
        }
    }
    assert_eq!(s.identities().unwrap().len(), 1);
    assert_eq!(other.ticket("t1").unwrap().unwrap().used, 1);
}

fn concurrent_lease_requests_of_one_identity_stop_at_its_limit(s: &dyn Store, other: &dyn Store) {
    let t = target();
    // Rounds, each a fresh identity with 24 requests at once for at most
    // 3 live leases: a check-then-insert race shows within a few.
    for round in 0..10 {
        let identity = format!("i{round}");
        enrolled(s, &identity);
        let barrier = Barrier::new(24);
        let inserted: Vec<Inserted> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..24)
                .map(|i| {
                    let store = if i % 2 == 0 { s } else { other };
                    let (barrier, t, identity) = (&barrier, &t, &identity);
                    scope.spawn(move || {
                        let id = format!("{identity}-l{i}");
                        let lease = new_lease(&id, identity, t, 1000);
                        barrier.wait();
                        store.insert_lease(&lease, 3).unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let yes = inserted.iter().filter(|i| **i == Inserted::Yes).count();
        assert_eq!(
            yes, 3,
            "round {round}: three live leases at most: {inserted:?}"
        );
        assert!(
            inserted
                .iter()
                .all(|i| matches!(i, Inserted::Yes | Inserted::AtLimit))
        );
        assert_eq!(s.leases(Some(&identity)).unwrap().len(), 3);
    }
}

fn the_deployment_id_is_stored_once_and_cannot_change(s: &dyn Store, other: &dyn Store) {
    let first = s.deployment_id(None).unwrap();
    assert_eq!(first.len(), 12, "six random bytes in hex: {first:?}");
    assert_eq!(other.deployment_id(None).unwrap(), first);
    assert_eq!(other.deployment_id(Some(&first)).unwrap(), first);
    match s.deployment_id(Some("another")) {
        Err(StoreError::DeploymentChanged { configured, stored }) => {
            assert_eq!(
                (configured.as_str(), stored.as_str()),
                ("another", first.as_str())
            );
        }
        other => panic!("a changed deployment_id must be refused, got {other:?}"),
    }
}

fn what_one_handle_writes_the_other_reads(s: &dyn Store, other: &dyn Store) {
    let mut t = ticket("t1", 3, 5000);
    t.identity_name = Some("gw-7".into());
    t.role = Some("writer".into());
    s.insert_ticket(&t, "h1").unwrap();
    let seen = other.ticket("t1").unwrap().unwrap();
    assert_eq!(
        (
            seen.identity_name.as_deref(),
            seen.role.as_deref(),
            seen.usage_count
        ),
        (Some("gw-7"), Some("writer"), 3)
    );
    assert_eq!(seen.attributes, t.attributes);
    other
        .enroll(
            "h1",
            10,
            &|t| Ok(t.role.clone().unwrap()),
            ("i1", "gw-7", "c1"),
        )
        .unwrap()
        .unwrap();
    let identity = s.identity_by_credential("c1").unwrap().unwrap();
    assert_eq!(
        (identity.name.as_str(), identity.role.as_str()),
        ("gw-7", "writer")
    );
    let lease = NewLease {
        id: "l1",
        replica: "r0",
        identity_id: "i1",
        role: "writer",
        backend: "main",
        target: &target(),
        created_ms: 20,
        expires_ms: 900,
    };
    assert_eq!(s.insert_lease(&lease, 5).unwrap(), Inserted::Yes);
    assert_eq!(
        other.activate_lease("l1", "user-l1", 21).unwrap(),
        Some(LeaseStatus::Active)
    );
    let l = s.lease("l1").unwrap().unwrap();
    assert_eq!(
        (
            l.identity_name.as_str(),
            l.handle.as_deref(),
            l.target.database.as_deref()
        ),
        ("gw-7", Some("user-l1"), Some("db"))
    );
    assert_eq!(
        s.fail_pending("r1", 30, 0).unwrap(),
        0,
        "an active lease is not pending"
    );
    assert!(other.lease_ids().unwrap().contains("l1"));
    let events: Vec<String> = s.audit_trail().unwrap().into_iter().map(|a| a.1).collect();
    assert_eq!(events, ["enroll", "lease issue"]);
}

fn enroll_refuses_each_way_and_counts_uses(s: &dyn Store, _other: &dyn Store) {
    s.insert_ticket(&ticket("t1", 2, 1000), "h1").unwrap();
    s.insert_ticket(&ticket("t2", 1, 10), "h2").unwrap();
    let role: RoleFor<'_> = &|_| Ok("r".to_owned());
    let code = |r: Result<IdentityRow, (ErrorCode, Option<String>)>| r.err().map(|e| e.0);
    assert_eq!(
        code(s.enroll("nope", 5, role, ("i0", "n", "c0")).unwrap()),
        Some(ErrorCode::TicketUnknown)
    );
    assert_eq!(
        code(s.enroll("h2", 10, role, ("i0", "n", "c0")).unwrap()),
        Some(ErrorCode::TicketExpired)
    );
    assert_eq!(
        code(
            s.enroll(
                "h1",
                5,
                &|_| Err(ErrorCode::NoRoleMatches),
                ("i0", "n", "c0")
            )
            .unwrap()
        ),
        Some(ErrorCode::NoRoleMatches)
    );
    assert!(s.enroll("h1", 5, role, ("i1", "n", "c1")).unwrap().is_ok());
    assert!(s.enroll("h1", 5, role, ("i2", "n", "c2")).unwrap().is_ok());
    assert_eq!(
        code(s.enroll("h1", 5, role, ("i3", "n", "c3")).unwrap()),
        Some(ErrorCode::TicketUsedUp)
    );
    s.insert_ticket(&ticket("t3", 5, 1000), "h3").unwrap();
    assert!(s.revoke_ticket("t3", 6).unwrap());
    assert_eq!(
        code(s.enroll("h3", 7, role, ("i4", "n", "c4")).unwrap()),
        Some(ErrorCode::TicketRevoked)
    );
    assert_eq!(s.identity_by_credential("c1").unwrap().unwrap().id, "i1");
}
fn leases_fall_due_in_expiry_order_and_end_once(s: &dyn Store, _other: &dyn Store) {
    s.insert_ticket(&ticket("t1", 1, 1000), "h1").unwrap();
    s.enroll("h1", 1, &|_| Ok("r".into()), ("i1", "gw", "c1"))
        .unwrap()
        .unwrap();
    let t = target();
    for (id, exp) in [("a", 300), ("b", 100), ("c", 200), ("d", 900)] {
        let inserted = s
            .insert_lease(
                &NewLease {
                    id,
                    replica: "r0",
                    identity_id: "i1",
                    role: "r",
                    backend: "main",
                    target: &t,
                    created_ms: 0,
                    expires_ms: exp,
                },
                10,
            )
            .unwrap();
        assert_eq!(inserted, Inserted::Yes);
        assert_eq!(
            s.activate_lease(id, &format!("h-{id}"), 0).unwrap(),
            Some(LeaseStatus::Active)
        );
    }
    assert_eq!(s.next_due_ms("main").unwrap(), Some(100));
    let due: Vec<String> = s
        .due_leases("main", 300, 10)
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(due, ["b", "c", "a"]);
    s.deletion_failed("b", "connection refused", 1300).unwrap();
    let b = s.lease("b").unwrap().unwrap();
    assert_eq!(b.status, LeaseStatus::Revoking);
    assert_eq!(b.last_error.as_deref(), Some("connection refused"));
    assert_eq!(
        s.deleted("c", 310).unwrap().unwrap().status,
        LeaseStatus::Expired
    );
    assert!(s.deleted("c", 311).unwrap().is_none());
    let revoked = s
        .begin_revoke("d", "revoke", "admin a", 320)
        .unwrap()
        .unwrap();
    assert_eq!(revoked.status, LeaseStatus::Revoking);
    assert_eq!(
        s.deleted("d", 321).unwrap().unwrap().status,
        LeaseStatus::Revoked
    );
    let due: Vec<String> = s
        .due_leases("main", 1300, 10)
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(due, ["a", "b"]);
    assert_eq!(
        s.live_lease_ids().unwrap(),
        ["a", "b"].iter().map(|h| h.to_string()).collect()
    );
    let gone = s.revoke_identity("i1", "admin a", 400).unwrap().unwrap();
    assert_eq!(gone.len(), 2);
    let late = NewLease {
        id: "e",
        replica: "r0",
        identity_id: "i1",
        role: "r",
        backend: "main",
        target: &t,
        created_ms: 401,
        expires_ms: 900,
    };
    assert_eq!(
        s.insert_lease(&late, 10).unwrap(),
        Inserted::IdentityRevoked,
        "no lease for a revoked identity"
    );
    assert_eq!(
        s.deleted("a", 500).unwrap().unwrap().status,
        LeaseStatus::Revoked
    );
    assert_eq!(s.prune_ended(400).unwrap(), 2, "c and d ended before 400");
    assert!(s.lease("c").unwrap().is_none() && s.lease("a").unwrap().is_some());
    assert_eq!(
        s.leases_of_unknown_backends(&["other"]).unwrap(),
        [("main".to_owned(), 1)]
    );
    assert!(
        s.audit_trail()
            .unwrap()
            .iter()
            .any(|a| a.1 == "identity revoke")
    );
}
fn audit_records_past_their_age_are_pruned(s: &dyn Store, _other: &dyn Store) {
    for at in [10, 20, 30, 40] {
        s.audit(at, "e", "s", "d").unwrap();
    }
    assert_eq!(s.prune_audit(25).unwrap(), 2);
    let left: Vec<i64> = s.audit_trail().unwrap().iter().map(|r| r.0).collect();
    assert_eq!(left, [30, 40]);
}

fn the_audit_trail_pages_newest_first_and_finds_a_gateways_rows(s: &dyn Store, other: &dyn Store) {
    enrolled(s, "i1");
    enrolled(s, "i2");
    let t = target();
    s.insert_lease(&new_lease("lease-of-i1", "i1", &t, 1_000), 10)
        .unwrap();
    s.insert_lease(&new_lease("lease-of-i2", "i2", &t, 1_000), 10)
        .unwrap();
    for n in 0..7 {
        s.audit(100 + n, "e", "other", &format!("row {n}")).unwrap();
    }
    s.audit(200, "lease revoke requested", "lease-of-i1", "by admin a")
        .unwrap();
    s.audit(201, "lease revoke requested", "lease-of-i2", "by admin a")
        .unwrap();
    s.audit(202, "identity revoke", "i1", "identity revoked")
        .unwrap();
    // Pages of 4 from the newest, each starting before the last one's end,
    // read through the other handle: every row once, newest first.
    let total = s.audit_trail().unwrap().len();
    let (mut seen, mut before, mut pages) = (Vec::new(), i64::MAX, 0);
    while pages < 100 {
        let page = other.audit_page(before, 4).unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        before = last.seq;
        seen.extend(page.into_iter().map(|r| (r.seq, r.at_ms)));
        pages += 1;
    }
    assert_eq!(seen.len(), total, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 > w[1].0), "{seen:?}");
    assert_eq!(seen[0].1, 202, "newest first");
    assert_eq!(pages, total.div_ceil(4));
    let mine = other.audit_of_identity("i1", 50).unwrap();
    let subjects: Vec<&str> = mine.iter().map(|r| r.subject.as_str()).collect();
    assert!(
        subjects.starts_with(&["i1", "lease-of-i1"]) && !subjects.contains(&"lease-of-i2"),
        "{subjects:?}"
    );
    assert!(!subjects.contains(&"other"), "{subjects:?}");
    assert_eq!(other.audit_of_identity("i1", 1).unwrap().len(), 1);
}

/// An identity with `n` active leases `l0`.. of backend "main", expiring
/// at 100 ms, 110 ms, ...
fn due_leases(s: &dyn Store, n: usize) {
    enrolled(s, "i1");
    let t = target();
    for i in 0..n {
        let id = format!("l{i}");
        let lease = new_lease(&id, "i1", &t, 100 + 10 * i as i64);
        assert_eq!(s.insert_lease(&lease, 1000).unwrap(), Inserted::Yes);
        s.activate_lease(&id, &format!("user-{id}"), 1).unwrap();
    }
}

fn two_replicas_claiming_at_once_take_every_due_lease_exactly_once(
    s: &dyn Store,
    other: &dyn Store,
) {
    due_leases(s, 60);
    let barrier = Barrier::new(2);
    let taken: Vec<Vec<String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = [("a", s), ("b", other)]
            .into_iter()
            .map(|(replica, store)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    // Bounded: 60 leases, at least one a pass while any is left.
                    for _ in 0..200 {
                        let claimed = store.claim_due("main", replica, 5000, 6000, 4).unwrap();
                        if claimed.is_empty() && store.next_due_ms("main").unwrap().is_none() {
                            break;
                        }
                        for l in claimed {
                            assert!(
                                store.deleted(&l.id, 5000).unwrap().is_some(),
                                "replica {replica}: lease {} ended by the other replica while claimed",
                                l.id
                            );
                            mine.push(l.id);
                        }
                    }
                    mine
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut all: Vec<String> = taken.concat();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a lease was claimed by both replicas");
    assert_eq!(all.len(), 60, "every due lease claimed once");
    assert!(s.due_leases("main", 5000, 100).unwrap().is_empty());
}

fn a_lapsed_claim_is_taken_over_and_a_live_one_is_not(s: &dyn Store, other: &dyn Store) {
    due_leases(s, 3);
    let a = s.claim_due("main", "a", 1000, 2000, 10).unwrap();
    assert_eq!(
        a.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["l0", "l1", "l2"],
        "claimed in expiry order"
    );
    assert!(
        other
            .claim_due("main", "b", 1500, 2500, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        other.next_due_ms("main").unwrap(),
        Some(2000),
        "claimed leases are due for the others when the claim ends"
    );
    assert_eq!(s.renew_claims("a", 1900, 2900).unwrap(), 3);
    assert!(
        other
            .claim_due("main", "b", 2500, 3500, 10)
            .unwrap()
            .is_empty()
    );
    // "a" dies: its claims lapse at 2900 and "b" takes them over.
    let b = other.claim_due("main", "b", 2900, 3900, 10).unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(
        s.renew_claims("a", 3000, 4000).unwrap(),
        0,
        "a lapsed claim stays lapsed"
    );
    // A failed deletion gives the claim up: the retry is anyone's.
    other
        .deletion_failed("l0", "connection refused", 3000)
        .unwrap();
    assert_eq!(
        s.claim_due("main", "a", 3000, 4000, 10)
            .unwrap()
            .iter()
            .map(|l| l.id.as_str())
            .collect::<Vec<_>>(),
        ["l0"]
    );
}

fn only_a_silent_replicas_pending_leases_are_failed(s: &dyn Store, other: &dyn Store) {
    enrolled(s, "i1");
    let t = target();
    for (id, replica) in [("mine", "me"), ("alive", "live"), ("dead", "gone")] {
        let lease = NewLease {
            replica,
            ..new_lease(id, "i1", &t, 100_000)
        };
        assert_eq!(s.insert_lease(&lease, 10).unwrap(), Inserted::Yes);
    }
    other.heartbeat("live", 10_000).unwrap();
    other.heartbeat("gone", 1_000).unwrap();
    s.heartbeat("me", 10_000).unwrap();
    // Replicas silent since before 5,000 are dead.
    assert_eq!(other.fail_pending("me", 10_500, 5_000).unwrap(), 1);
    let status = |id| s.lease(id).unwrap().unwrap().status;
    assert_eq!(status("dead"), LeaseStatus::Failed);
    assert_eq!(
        status("alive"),
        LeaseStatus::Pending,
        "a live replica's lease in the making"
    );
    assert_eq!(status("mine"), LeaseStatus::Pending, "the caller's own");
    // Once "live" is silent too, its lease goes; its credential is reconciled.
    assert_eq!(s.fail_pending("me", 40_000, 20_000).unwrap(), 1);
    assert_eq!(status("alive"), LeaseStatus::Failed);
    assert_eq!(status("mine"), LeaseStatus::Pending);
}

/// A lease call of `identity` at `at` with `report` or a refusal, the
/// history thinned to one report per 60 s.
fn call<'a>(
    identity: &'a str,
    at: i64,
    report: Option<&'a str>,
    refused: Option<&'a str>,
) -> Call<'a> {
    Call {
        identity_id: identity,
        at_ms: at,
        report,
        refused,
        failed: report.is_none() && refused.is_none(),
        address: (identity == "i1").then_some("127.0.0.9"),
        history_after_ms: at - 60_000,
    }
}

fn lease_calls_keep_the_last_good_report_and_a_thinned_history(s: &dyn Store, other: &dyn Store) {
    enrolled(s, "i1");
    enrolled(s, "i2");
    s.record_call(&call("i1", 1_000, Some(r#"{"a":1}"#), None))
        .unwrap();
    // Two replicas record calls of the same gateway.
    other
        .record_call(&call("i1", 31_000, Some(r#"{"a":2}"#), None))
        .unwrap();
    s.record_call(&call("i1", 61_000, None, Some("health.x: bad")))
        .unwrap();
    other
        .record_call(&call("i1", 91_000, Some(r#"{"a":4}"#), None))
        .unwrap();
    s.record_call(&call("i2", 5_000, None, None)).unwrap();
    let rows = other.health().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let i1 = &rows[0];
    assert_eq!((i1.called_ms, i1.previous_call_ms), (91_000, Some(61_000)));
    assert_eq!(
        (i1.report_ms, i1.report.as_deref()),
        (Some(91_000), Some(r#"{"a":4}"#))
    );
    assert_eq!(i1.refused, None);
    assert_eq!(i1.failed_calls, 0);
    let i2 = &rows[1];
    assert_eq!((i2.called_ms, i2.report.as_deref()), (5_000, None));
    // Failed calls are counted in a row (a call without a report fails
    // here), and a granted one starts the count again.
    assert_eq!(i2.failed_calls, 1);
    other.record_call(&call("i2", 6_000, None, None)).unwrap();
    assert_eq!(s.health().unwrap()[1].failed_calls, 2);
    s.record_call(&call("i2", 7_000, Some("{}"), None)).unwrap();
    assert_eq!(other.health().unwrap()[1].failed_calls, 0);
    // A refused report keeps the last good one and says why.
    s.record_call(&call("i1", 95_000, None, Some("health.y: bad")))
        .unwrap();
    let i1 = s.health().unwrap().remove(0);
    assert_eq!(i1.report.as_deref(), Some(r#"{"a":4}"#));
    assert_eq!(i1.report_ms, Some(91_000));
    assert_eq!(i1.refused.as_deref(), Some("health.y: bad"));
    // One report a minute in the history: 1 s and 91 s, not 31 s.
    let history = other.health_history("i1", 0).unwrap();
    let times: Vec<i64> = history.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [1_000, 91_000], "{history:?}");
    assert_eq!(s.health_history("i1", 2_000).unwrap().len(), 1);
    // Where gateways called from, for the connections kept for them: i1
    // last called at 95 s.
    assert_eq!(other.gateway_addresses(90_000).unwrap(), ["127.0.0.9"]);
    assert!(s.gateway_addresses(96_000).unwrap().is_empty());
    // i1's at 1 s and i2's at 7 s.
    assert_eq!(s.prune_health(50_000).unwrap(), 2);
    assert_eq!(other.health_history("i1", 0).unwrap().len(), 1);
}

fn the_newest_lease_of_each_identity_is_found_among_many(s: &dyn Store, other: &dyn Store) {
    let t = target();
    enrolled(s, "i1");
    enrolled(s, "i2");
    enrolled(s, "i3");
    for n in 0..30 {
        let id = format!("l{n:02}");
        let mut lease = new_lease(&id, if n % 2 == 0 { "i1" } else { "i2" }, &t, 10_000 + n);
        lease.created_ms = n;
        assert_eq!(s.insert_lease(&lease, 100).unwrap(), Inserted::Yes);
    }
    let latest = other.latest_leases().unwrap();
    let found: Vec<(&str, &str)> = latest
        .iter()
        .map(|l| (l.identity_id.as_str(), l.id.as_str()))
        .collect();
    assert_eq!(found, [("i1", "l28"), ("i2", "l29")]);
}

fn admins_and_their_sessions_are_shared_and_end_together(s: &dyn Store, other: &dyn Store) {
    assert!(s.set_admin("ops", "$argon2id$h1", 5, false).unwrap());
    assert!(
        !other.set_admin("ops", "$argon2id$h2", 6, false).unwrap(),
        "a name is taken once"
    );
    assert!(
        !s.set_admin("nobody", "$argon2id$h3", 6, true).unwrap(),
        "nothing to replace"
    );
    assert!(other.set_admin("ops", "$argon2id$h4", 7, true).unwrap());
    assert_eq!(
        s.admin_hash("ops").unwrap().as_deref(),
        Some("$argon2id$h4")
    );
    assert_eq!(other.admins().unwrap(), [("ops".to_owned(), 5)]);
    s.insert_session("t1", "ops", "c1", 10, 1_000).unwrap();
    s.insert_session("t2", "ops", "c2", 10, 50).unwrap();
    // Another replica knows the session, until it expires.
    assert_eq!(
        other.session("t1", 20).unwrap(),
        Some(("ops".into(), "c1".into()))
    );
    assert_eq!(other.session("t2", 50).unwrap(), None);
    assert_eq!(other.session("t3", 20).unwrap(), None);
    assert_eq!(s.prune_sessions(60).unwrap(), 1);
    other.delete_session("t1").unwrap();
    assert_eq!(s.session("t1", 20).unwrap(), None);
    // Removing an admin ends its sessions.
    s.insert_session("t4", "ops", "c4", 10, 1_000).unwrap();
    assert!(other.remove_admin("ops").unwrap());
    assert_eq!(s.session("t4", 20).unwrap(), None);
    assert!(!s.remove_admin("ops").unwrap());
    assert!(s.admins().unwrap().is_empty());
}
