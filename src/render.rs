//! Human output shared by both binaries' commands: relative times ("in 9m
//! 58s", "expired 3s ago"), aligned tables, and the lease views that
//! `leasegate lease` and `leasegate-authority lease` both print.
//!
//! Pure formatting: no I/O, and nothing it prints can hold a secret (the
//! lease views take [`LeaseInfo`], which has none).

use std::time::Duration;

use crate::wire::api::LeaseInfo;

/// Unix milliseconds as a time (before 1970: 1970).
pub fn unix_ms(at_ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64)
}

/// "in 9m 58s" for a future time, "3s ago" for a past one (to the second).
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    let secs =
        |d: i64| humantime::format_duration(Duration::from_secs((d / 1000) as u64)).to_string();
    if at_ms > now_ms {
        format!("in {}", secs(at_ms - now_ms + 999))
    } else {
        format!("{} ago", secs(now_ms - at_ms))
    }
}

/// An expiry: "in 9m 58s", or "expired 3s ago".
pub fn expiry(at_ms: i64, now_ms: i64) -> String {
    if at_ms > now_ms {
        relative(at_ms, now_ms)
    } else {
        format!("expired {}", relative(at_ms, now_ms))
    }
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    out
}

pub fn lease_table(leases: &[LeaseInfo], now_ms: i64) -> String {
    let rows = leases
        .iter()
        .map(|l| {
            let mut status = l.status.as_str().to_owned();
            if let Some(e) = &l.last_error {
                status.push_str(&format!(" ({e})"));
            }
            vec![
                l.id.clone(),
                l.issued_for.clone(),
                l.role.clone(),
                relative(l.created_ms, now_ms),
                expiry(l.expires_ms, now_ms),
                status,
            ]
        })
        .collect();
    table(
        &["ID", "ISSUED FOR", "ROLE", "CREATED", "EXPIRES", "STATUS"],
        rows,
    )
}

pub fn lease_detail(l: &LeaseInfo, now_ms: i64) -> String {
    let t = &l.target;
    let mut out = format!(
        "id:          {}\nissued for:  {} ({})\nrole:        {}\nstatus:      {}\ncreated:     {}\nexpires:     {}\nttl:         {}\napi:         {}\nurl:         {}\n",
        l.id,
        l.issued_for,
        l.identity_id,
        l.role,
        l.status.as_str(),
        relative(l.created_ms, now_ms),
        expiry(l.expires_ms, now_ms),
        humantime::format_duration(Duration::from_secs(l.ttl_secs)),
        t.api.wire_name(),
        t.url
    );
    for (k, v) in [
        ("org", &t.org),
        ("bucket", &t.bucket),
        ("database", &t.database),
    ] {
        if let Some(v) = v {
            out.push_str(&format!("{:<13}{v}\n", format!("{k}:")));
        }
    }
    if let Some(e) = &l.last_error {
        out.push_str(&format!("last error:  {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = 1_000_000;
        assert_eq!(expiry(now + 598_000, now), "in 9m 58s");
        assert_eq!(expiry(now - 3_000, now), "expired 3s ago");
        assert_eq!(relative(now - 62_500, now), "1m 2s ago");
        assert_eq!(expiry(now + 200, now), "in 1s");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATUS"],
            vec![vec!["abcdef".into(), "active".into()]],
        );
        assert_eq!(t, "ID      STATUS\nabcdef  active\n");
    }
}
