//! The fleet's states, derived from rows made here, the time as input.

use super::*;
use crate::wire::api::{InfluxApi, Target};
use crate::wire::health::LastWrite;

const NOW: i64 = 1_800_000_000_000;

fn identity() -> IdentityRow {
    IdentityRow {
        id: "id-1".into(),
        name: "gw-1".into(),
        ticket_id: "t".into(),
        role: "sensor".into(),
        attributes: BTreeMap::new(),
        created_ms: NOW - 3_600_000,
        revoked_ms: None,
    }
}

/// A 4 s lease granted at `created`.
fn lease(created: i64) -> LeaseRow {
    LeaseRow {
        id: "l".into(),
        identity_id: "id-1".into(),
        identity_name: "gw-1".into(),
        role: "sensor".into(),
        backend: "main".into(),
        target: Target {
            api: InfluxApi::V1,
            url: "http://127.0.0.1:1".into(),
            org: None,
            bucket: None,
            database: Some("db".into()),
        },
        handle: Some("h".into()),
        status: LeaseStatus::Active,
        created_ms: created,
        expires_ms: created + 4000,
        end_reason: None,
        attempts: 0,
        next_attempt_ms: None,
        last_error: None,
    }
}

fn calls(called: i64, previous: Option<i64>, report: Option<&HealthReport>) -> HealthRow {
    HealthRow {
        identity_id: "id-1".into(),
        called_ms: called,
        previous_call_ms: previous,
        report_ms: report.map(|_| called),
        report: report.map(|r| serde_json::to_string(r).unwrap()),
        refused: None,
        failed_calls: 0,
    }
}

fn state_at(now: i64, lease: Option<&LeaseRow>, health: Option<&HealthRow>) -> Gateway {
    assess(&identity(), lease, health, now, &FleetSettings::default())
}

#[test]
fn a_gateway_that_renews_on_time_is_ok() {
    let l = lease(NOW - 2200);
    let h = calls(NOW - 2200, Some(NOW - 4400), Some(&HealthReport::default()));
    let g = state_at(NOW, Some(&l), Some(&h));
    assert_eq!(g.state, State::Ok, "{:?}", g.why);
    assert!(g.why.is_empty());
}

#[test]
fn silence_is_late_after_one_and_a_half_intervals_then_missing_at_expiry() {
    // Calls 2.2 s apart, 4 s leases: late after 3.3 s, missing after 4 s.
    let l = lease(NOW);
    let h = calls(NOW, Some(NOW - 2200), None);
    assert_eq!(state_at(NOW + 3200, Some(&l), Some(&h)).state, State::Ok);
    let late = state_at(NOW + 3400, Some(&l), Some(&h));
    assert_eq!(late.state, State::Late, "{:?}", late.why);
    assert!(
        late.why[0].contains("no lease call for 4s"),
        "{:?}",
        late.why
    );
    assert_eq!(
        state_at(NOW + 4000, Some(&l), Some(&h)).state,
        State::Missing
    );
    // One call known: the renewal share of the lease (2.4 s), late at 3.6 s.
    let first = calls(NOW, None, None);
    assert_eq!(
        state_at(NOW + 3500, Some(&l), Some(&first)).state,
        State::Ok
    );
    assert_eq!(
        state_at(NOW + 3700, Some(&l), Some(&first)).state,
        State::Late
    );
}

#[test]
fn a_gateway_without_reports_is_judged_by_its_leases() {
    let l = lease(NOW - 1000);
    assert_eq!(state_at(NOW, Some(&l), None).state, State::Ok);
    assert_eq!(state_at(NOW + 5000, Some(&l), None).state, State::Missing);
    assert_eq!(state_at(NOW, None, None).state, State::Missing);
}

#[test]
fn a_gateway_whose_calls_fail_is_late_only_by_its_backoff() {
    // Its backend is down: its calls fail, and it retries after 1, 2, 4
    // ... s; the fifth failure in a row is followed by a 16 s wait.
    let mut l = lease(NOW - 60_000);
    l.status = LeaseStatus::Failed;
    let mut h = calls(NOW, Some(NOW - 8000), None);
    h.failed_calls = 5;
    assert_eq!(state_at(NOW + 20_000, Some(&l), Some(&h)).state, State::Ok);
    assert_eq!(
        state_at(NOW + 24_100, Some(&l), Some(&h)).state,
        State::Missing
    );
    // At the cap, 300 s.
    h.failed_calls = 40;
    assert_eq!(state_at(NOW + 400_000, Some(&l), Some(&h)).state, State::Ok);
}

#[test]
fn reports_name_refusals_backlogs_and_clocks_worst_first() {
    let l = lease(NOW);
    let report = HealthReport {
        last_write: Some(LastWrite {
            outcome: WriteOutcome::Refused,
            status: Some(403),
            ago_secs: 2,
        }),
        oldest_waiting_secs: Some(700),
        points_waiting: 5000,
        clock_offset_ms: Some(3_600_000.0),
        ..HealthReport::default()
    };
    let g = state_at(NOW, Some(&l), Some(&calls(NOW, None, Some(&report))));
    assert_eq!(g.state, State::Refused);
    assert_eq!(g.why.len(), 3, "{:?}", g.why);
    assert!(
        g.why[0].contains("refused its last write (403)"),
        "{:?}",
        g.why
    );
    assert!(
        g.why[1].contains("11m 40s old (5000 points wait)"),
        "{:?}",
        g.why
    );
    assert!(g.why[2].contains("1h behind"), "{:?}", g.why);
}

#[test]
fn the_runway_counts_only_while_points_wait() {
    let l = lease(NOW);
    let mut report = HealthReport {
        runway_hours: Some(3.0),
        oldest_waiting_secs: Some(1),
        ..HealthReport::default()
    };
    let at = |r: &HealthReport| state_at(NOW, Some(&l), Some(&calls(NOW, None, Some(r))));
    assert_eq!(at(&report).state, State::Ok);
    report.oldest_waiting_secs = Some(90);
    let g = at(&report);
    assert_eq!(g.state, State::Backlog);
    assert!(g.why[0].contains("full in 3.0 h"), "{:?}", g.why);
}

#[test]
fn a_small_offset_or_a_failed_write_is_not_a_state() {
    let l = lease(NOW);
    let report = HealthReport {
        clock_offset_ms: Some(-1500.0),
        last_write: Some(LastWrite {
            outcome: WriteOutcome::Failed,
            status: None,
            ago_secs: 1,
        }),
        ..HealthReport::default()
    };
    let g = state_at(NOW, Some(&l), Some(&calls(NOW, None, Some(&report))));
    assert_eq!(g.state, State::Ok, "{:?}", g.why);
}

#[test]
fn a_revoked_identity_is_revoked_whatever_else_holds() {
    let mut i = identity();
    i.revoked_ms = Some(NOW - 1);
    let g = assess(&i, None, None, NOW, &FleetSettings::default());
    assert_eq!(g.state, State::Revoked);
    assert_eq!(g.why.len(), 2);
}

#[test]
fn counts_list_every_state() {
    let l = lease(NOW);
    let gateways = vec![
        state_at(NOW, Some(&l), None),
        state_at(NOW + 9000, Some(&l), None),
    ];
    let counts = counts(&gateways);
    assert_eq!(counts.len(), State::ALL.len());
    assert!(counts.contains(&(State::Ok, 1)));
    assert!(counts.contains(&(State::Missing, 1)));
    assert!(counts.contains(&(State::Late, 0)));
    for st in State::ALL {
        assert_eq!(State::parse(st.as_str()), Some(st));
    }
}

#[test]
fn the_metrics_page_counts_states_and_gives_each_gateway_its_figures() {
    let l = lease(NOW);
    let report = HealthReport {
        points_waiting: 42,
        runway_hours: Some(12.5),
        clock_offset_ms: Some(-250.0),
        ..HealthReport::default()
    };
    let ok = state_at(NOW, Some(&l), Some(&calls(NOW, None, Some(&report))));
    let mut missing = state_at(NOW + 9000, Some(&l), None);
    missing.name = "gw-\"2\"".into();
    let page = metrics::render(&[ok, missing], NOW + 1000);
    for line in [
        "leasegate_fleet_gateways{state=\"ok\"} 1",
        "leasegate_fleet_gateways{state=\"missing\"} 1",
        "leasegate_fleet_gateways{state=\"late\"} 0",
        "leasegate_gateway_state{name=\"gw-1\",identity=\"id-1\",state=\"ok\"} 1",
        "leasegate_gateway_state{name=\"gw-\\\"2\\\"\",identity=\"id-1\",state=\"missing\"} 1",
        "leasegate_gateway_points_waiting{name=\"gw-1\",identity=\"id-1\"} 42",
        "leasegate_gateway_runway_hours{name=\"gw-1\",identity=\"id-1\"} 12.5",
        "leasegate_gateway_clock_offset_seconds{name=\"gw-1\",identity=\"id-1\"} -0.25",
        "leasegate_gateway_lease_remaining_seconds{name=\"gw-1\",identity=\"id-1\"} 3",
    ] {
        assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
    }
    // A gateway without a report has no report figures.
    assert_eq!(page.matches("leasegate_gateway_points_waiting{").count(), 1);
}

#[test]
fn a_gateway_backing_off_is_late_only_after_the_wait_it_announced() {
    // Its writes were refused: it asks again within 8 s, not at renewal.
    let l = lease(NOW);
    let report = HealthReport {
        retry_within_secs: Some(8),
        ..HealthReport::default()
    };
    let h = calls(NOW, Some(NOW - 2200), Some(&report));
    assert_eq!(state_at(NOW + 11_000, Some(&l), Some(&h)).state, State::Ok);
    assert_eq!(
        state_at(NOW + 12_100, Some(&l), Some(&h)).state,
        State::Missing
    );
    // A gateway cannot announce more than the backoff's cap.
    let report = HealthReport {
        retry_within_secs: Some(10 * 365 * 86_400),
        ..HealthReport::default()
    };
    let h = calls(NOW, Some(NOW - 2200), Some(&report));
    assert_eq!(
        state_at(NOW + 451_000, Some(&l), Some(&h)).state,
        State::Missing
    );
    // Said with an older report (the last one was refused): not believed.
    let mut h = calls(NOW, Some(NOW - 2200), Some(&report));
    h.report_ms = Some(NOW - 2200);
    assert_eq!(
        state_at(NOW + 5000, Some(&l), Some(&h)).state,
        State::Missing
    );
}
