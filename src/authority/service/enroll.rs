//! Tickets and enrollment: issuing and revoking tickets, redeeming one for
//! an identity with the role its attributes match, and the audit of
//! refused enrollments, summarized per error code and minute so that a
//! flood of bad tickets cannot flood the audit log. A refusal never says
//! which part of a secret was wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::authority::config::Role;
use crate::authority::store::{IdentityRow, StoreError, TicketRow};
use crate::now_ms;
use crate::secret::{self, Secret};
use crate::wire::api::{ApiError, EnrollRequest, Enrollment, ErrorCode, identity_name_is_valid};
use crate::wire::ticket::{self, Ticket};

use super::Authority;
use super::CREDENTIAL_BYTES;
use super::show_attributes;

impl Authority {
    pub fn create_ticket(
        &self,
        attributes: BTreeMap<String, String>,
        usage_count: u32,
        expires_in: Duration,
        role: Option<String>,
        identity_name: Option<String>,
        by: &str,
    ) -> Result<Ticket, ApiError> {
        if usage_count == 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "--usage-count must be at least 1",
            ));
        }
        if let Some(name) = &identity_name
            && !identity_name_is_valid(name)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "--identity-name must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let chosen = match &role {
            Some(r) => self
                .config
                .roles
                .iter()
                .find(|c| &c.name == r)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::NoRoleMatches,
                        format!("no [[role]] is named {r:?}"),
                    )
                })?,
            None => self.match_role(&attributes).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NoRoleMatches,
                    format!(
                        "no [[role]] matches the attributes {}",
                        show_attributes(&attributes)
                    ),
                )
            })?,
        };
        if chosen.per_identity() && identity_name.is_none() {
            // The name picks the database or bucket: a gateway must not
            // choose it, or it could choose another's.
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "role {:?} gives each identity its own {:?}: bind the name with --identity-name",
                    chosen.name, chosen.target
                ),
            ));
        }
        let now = now_ms();
        let secret = Secret::new(secret::random_base64(ticket::SECRET_BYTES));
        let row = TicketRow {
            id: secret::random_hex(8),
            attributes: attributes.clone(),
            role,
            usage_count,
            used: 0,
            created_ms: now,
            expires_ms: now.saturating_add(expires_in.as_millis() as i64),
            revoked_ms: None,
            identity_name: identity_name.clone(),
        };
        let store = self.store();
        store.insert_ticket(&row, &secret::digest(&secret))?;
        store.audit(
            now,
            "ticket create",
            &row.id,
            &format!(
                "attributes {}, {} use(s), expires in {}, by {by}",
                show_attributes(&attributes),
                usage_count,
                humantime::format_duration(Duration::from_secs(expires_in.as_secs()))
            ),
        )?;
        Ok(Ticket {
            // This replica's, which `cert_sha256` is for: what gateways
            // older than `urls` use.
            url: self.config.public_url.clone(),
            urls: match self.config.public_urls.as_slice() {
                [only] if *only == self.config.public_url => Vec::new(),
                all => all.to_vec(),
            },
            id: row.id,
            secret,
            cert_sha256: self.pins.as_ref().and_then(|p| p.leaf.clone()),
            ca_sha256: self.pins.as_ref().and_then(|p| p.ca.clone()),
            expires: (row.expires_ms / 1000) as u64,
            attributes,
            identity_name,
        })
    }

    pub fn revoke_ticket(&self, id: &str, by: &str) -> Result<(), ApiError> {
        let now = now_ms();
        let store = self.store();
        if !store.revoke_ticket(id, now)? {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("no ticket {id}"),
            ));
        }
        store.audit(now, "ticket revoke", id, &format!("ticket revoked by {by}"))?;
        Ok(())
    }

    // --- enrollment ---

    /// Redeems a ticket for an identity. `peer` is the client's address,
    /// for the audit trail of refusals.
    pub fn enroll(
        &self,
        req: &EnrollRequest,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Enrollment, ApiError> {
        if !identity_name_is_valid(&req.identity_name) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "identity_name must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let now = now_ms();
        if !ticket::secret_is_well_formed(req.ticket_secret.expose()) {
            self.refused(
                now,
                peer,
                &req.identity_name,
                ErrorCode::TicketMalformed,
                "",
            )?;
            return Err(ApiError::new(
                ErrorCode::TicketMalformed,
                format!(
                    "the ticket secret is malformed: expected {} base64url characters",
                    (ticket::SECRET_BYTES * 4).div_ceil(3)
                ),
            ));
        }
        let identity_id = secret::random_hex(8);
        let credential = secret::generate("lgi_", CREDENTIAL_BYTES);
        let outcome = self.store().enroll(
            &secret::digest(&req.ticket_secret),
            now,
            &|t| self.role_for(t, &req.identity_name),
            (
                &identity_id,
                &req.identity_name,
                &secret::digest(&credential),
            ),
        )?;
        match outcome {
            Ok(identity) => Ok(Enrollment {
                identity_id: identity.id,
                identity_name: identity.name,
                role: identity.role,
                attributes: identity.attributes,
                credential,
            }),
            Err((code, ticket_id)) => {
                let ticket_row = match &ticket_id {
                    Some(id) => self.store().ticket(id)?,
                    None => None,
                };
                let message = refusal_message(code, ticket_row.as_ref(), now);
                self.refused(now, peer, &req.identity_name, code, &message)?;
                Err(ApiError::new(code, message))
            }
        }
    }

    /// Audits a refused enrollment: the first of its kind in a minute in
    /// full, the rest of that minute counted and summed up in one record,
    /// so that a flood of bad enrollments costs one write a minute rather
    /// than one (fsynced) write each.
    pub(super) fn refused(
        &self,
        now: i64,
        peer: Option<std::net::IpAddr>,
        name: &str,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), StoreError> {
        let from = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "local".into());
        let detail = if message.is_empty() {
            format!("{} (from {from})", code.name())
        } else {
            format!("{}: {message} (from {from})", code.name())
        };
        self.audit_refusal(now, &code.name(), &from, ("enroll refused", name, &detail))
    }

    /// Audits a lease refused because the identity's role is gone, summed
    /// up like refused enrollments (a fleet keeps asking).
    pub(super) fn lease_refused(
        &self,
        identity: &IdentityRow,
        message: &str,
    ) -> Result<(), StoreError> {
        let key = format!("lease:{}", identity.role);
        let record = ("lease refused", identity.name.as_str(), message);
        self.audit_refusal(now_ms(), &key, &identity.name, record)
    }

    /// Counts a refusal of kind `key` from `from` in its window ([`Refusals`])
    /// and writes `record` (event, subject, detail) if it opens the window,
    /// after the summary of the window it closes, if any.
    pub(super) fn audit_refusal(
        &self,
        now: i64,
        key: &str,
        from: &str,
        (event, subject, detail): (&str, &str, &str),
    ) -> Result<(), StoreError> {
        let (first, summary) = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(now, key, from);
        let store = self.store();
        if let Some((event, subject, detail)) = summary {
            store.audit(now, event, &subject, &detail)?;
        }
        if first {
            store.audit(now, event, subject, detail)?;
        }
        Ok(())
    }

    /// Writes the summaries of refusal windows that have closed; called
    /// now and then, so a burst that stopped is still summed up.
    pub fn flush_refusals(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let due = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed(now);
        for (event, subject, detail) in due {
            self.store().audit(now, event, &subject, &detail)?;
        }
        Ok(())
    }

    /// The role a ticket enrolls `name` into, or why it does not: its
    /// pinned role is gone or none matches; it binds another name; or the
    /// role gives each identity its own database but the ticket binds no
    /// name (it was issued before the role changed).
    pub(super) fn role_for(&self, t: &TicketRow, name: &str) -> Result<String, ErrorCode> {
        let role = match &t.role {
            Some(r) => self.config.roles.iter().find(|c| &c.name == r),
            None => self.match_role(&t.attributes),
        }
        .ok_or(ErrorCode::NoRoleMatches)?;
        match &t.identity_name {
            Some(bound) if bound != name => Err(ErrorCode::IdentityNameMismatch),
            None if role.per_identity() => Err(ErrorCode::IdentityNameMismatch),
            _ => Ok(role.name.clone()),
        }
    }

    /// The first role, in configuration order, all of whose `match` pairs
    /// the attributes carry.
    pub(super) fn match_role(&self, attributes: &BTreeMap<String, String>) -> Option<&Role> {
        self.config
            .roles
            .iter()
            .find(|r| r.matches.iter().all(|(k, v)| attributes.get(k) == Some(v)))
    }
}

/// How long a window of refused enrollments of one kind lasts.
pub(super) const REFUSAL_WINDOW_MS: i64 = 60_000;
/// Addresses named in one summary, at most.
pub(super) const REFUSAL_ADDRESSES: usize = 10;

/// Refused enrollments per error code within the current window.
#[derive(Default)]
pub(super) struct Refusals {
    pub(super) windows: BTreeMap<String, RefusalWindow>,
}

pub(super) struct RefusalWindow {
    pub(super) started_ms: i64,
    /// Refusals after the first, not audited one by one.
    pub(super) more: u64,
    pub(super) addresses: std::collections::BTreeSet<String>,
}

pub(super) type AuditRecord = (&'static str, String, String);

impl Refusals {
    /// Counts one refusal. Returns whether it opens a window (audit it in
    /// full) and the summary of the window it closes, if any.
    fn note(&mut self, now: i64, code: &str, from: &str) -> (bool, Option<AuditRecord>) {
        let mut summary = None;
        if let Some(w) = self.windows.get(code)
            && now - w.started_ms >= REFUSAL_WINDOW_MS
        {
            summary = self.take(code);
        }
        match self.windows.get_mut(code) {
            Some(w) => {
                w.more += 1;
                if w.addresses.len() < REFUSAL_ADDRESSES {
                    w.addresses.insert(from.to_owned());
                }
                (false, summary)
            }
            None => {
                self.windows.insert(
                    code.to_owned(),
                    RefusalWindow {
                        started_ms: now,
                        more: 0,
                        addresses: std::collections::BTreeSet::new(),
                    },
                );
                (true, summary)
            }
        }
    }

    /// The summaries of every window older than a window's length.
    fn closed(&mut self, now: i64) -> Vec<AuditRecord> {
        let codes: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| now - w.started_ms >= REFUSAL_WINDOW_MS)
            .map(|(c, _)| c.clone())
            .collect();
        codes.iter().filter_map(|c| self.take(c)).collect()
    }

    fn take(&mut self, code: &str) -> Option<AuditRecord> {
        let w = self.windows.remove(code)?;
        (w.more > 0).then(|| {
            let addresses: Vec<String> = w.addresses.into_iter().collect();
            (
                if code.starts_with("lease:") {
                    "lease refused (repeated)"
                } else {
                    "enroll refused (repeated)"
                },
                code.to_owned(),
                format!(
                    "{} more refusal(s) in the minute after the one above, from {}{}",
                    w.more,
                    addresses.join(", "),
                    if addresses.len() >= REFUSAL_ADDRESSES {
                        " and others"
                    } else {
                        ""
                    }
                ),
            )
        })
    }
}

pub(super) fn refusal_message(code: ErrorCode, t: Option<&TicketRow>, now: i64) -> String {
    let id = t.map(|t| t.id.as_str()).unwrap_or("?");
    match (code, t) {
        (ErrorCode::TicketUnknown, _) => {
            "no such ticket: it was never issued by this authority".into()
        }
        (ErrorCode::TicketRevoked, _) => format!("ticket {id} was revoked"),
        (ErrorCode::IdentityNameMismatch, Some(t)) => match &t.identity_name {
            Some(bound) => format!(
                "ticket {id} enrolls identity {bound:?} only; set identity_name = {bound:?} on the gateway"
            ),
            None => format!(
                "ticket {id} names no identity, but its role gives each identity its own database or bucket; issue a new ticket with --identity-name"
            ),
        },
        (ErrorCode::TicketExpired, Some(t)) => format!(
            "ticket {id} expired {} ago",
            humantime::format_duration(Duration::from_secs(
                ((now - t.expires_ms).max(0) / 1000) as u64
            ))
        ),
        (ErrorCode::TicketUsedUp, Some(t)) => {
            format!(
                "ticket {id} is used up: {} of {} enrollments made",
                t.used, t.usage_count
            )
        }
        (ErrorCode::NoRoleMatches, Some(t)) => format!(
            "no role matches ticket {id}'s attributes {}{}",
            show_attributes(&t.attributes),
            t.role
                .as_ref()
                .map(|r| format!(" (its role {r:?} is not configured)"))
                .unwrap_or_default()
        ),
        _ => format!("ticket {id} refused"),
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_is_one_record_and_a_summary_a_minute() {
        let mut r = Refusals::default();
        assert_eq!(r.note(0, "ticket_unknown", "192.0.2.1"), (true, None));
        for i in 0..5_999 {
            let (first, summary) = r.note(10 + i, "ticket_unknown", &format!("192.0.2.{}", i % 50));
            assert!(!first && summary.is_none());
        }
        // Another kind has its own window.
        assert!(r.note(100, "ticket_malformed", "192.0.2.1").0);
        assert!(r.closed(59_999).is_empty());
        let closed = r.closed(60_000);
        assert_eq!(closed.len(), 1, "only the kind with more than one");
        let (event, code, detail) = &closed[0];
        assert_eq!(
            (*event, code.as_str()),
            ("enroll refused (repeated)", "ticket_unknown")
        );
        assert!(
            detail.starts_with("5999 more refusal(s)") && detail.ends_with("and others"),
            "{detail}"
        );
        // The next one opens a new window.
        assert!(r.note(70_000, "ticket_unknown", "192.0.2.1").0);
    }
}
