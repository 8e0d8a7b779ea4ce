//! The gateway's enrollment: redeeming a ticket for an identity, and the
//! state dir's `identity.json` (the identity credential, the authority's
//! URL and the certificate it trusts) and `lease.json` (the current lease).
//! It owns the ticket directory's protocol: a redeemed `*.ticket` is
//! deleted, a rejected one renamed `NAME.ticket.rejected` with
//! `NAME.ticket.reason` beside it, one that failed for a transient reason
//! kept for the next try. State files are written whole (temporary file,
//! fsync, rename) with mode 0600 and are never logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lifecycle::files::write_private;
use crate::secret::Secret;
use crate::wire::api::LeaseGrant;
use crate::wire::client::{AuthorityClient, ClientError, Trust};
use crate::wire::ticket::{Ticket, TicketError};

/// How long a ticket file must be unchanged before it is read.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

pub const IDENTITY_FILE: &str = "identity.json";
pub const LEASE_FILE: &str = "lease.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub identity_id: String,
    pub identity_name: String,
    pub role: String,
    pub attributes: BTreeMap<String, String>,
    #[serde(with = "crate::secret::wire")]
    pub credential: Secret,
    pub authority_url: String,
    /// Every URL of the deployment, from the ticket, in the order tried;
    /// empty for an identity from a ticket with one URL (`authority_url`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authority_urls: Vec<String>,
    /// The pinned certificate's SHA-256 fingerprint, from the ticket,
    /// checked in every TLS handshake; absent for a plain-HTTP authority or
    /// with system trust. (Identities from before the pin was checked on
    /// every call also hold `cert_der_base64`, which is no longer read.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// The deployment CA's SHA-256 fingerprint, from the ticket: when set,
    /// any certificate it signed for the authority's host is trusted (and
    /// `cert_sha256` is not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sha256: Option<String>,
    #[serde(default)]
    pub system_trust: bool,
    pub enrolled_ms: i64,
}

impl Identity {
    /// How to trust the authority: never silently less than enrollment
    /// did (an https identity without a usable pinned certificate is an
    /// error, not plain trust in whatever answers).
    pub fn trust(&self) -> Result<Trust, ClientError> {
        if self.system_trust {
            return Ok(Trust::System);
        }
        if self.authority_url.starts_with("http://") {
            return Ok(Trust::None);
        }
        match (&self.ca_sha256, &self.cert_sha256) {
            // Both while moving to the CA: the authority still serves the
            // certificate pinned before it.
            (Some(_), _) | (_, Some(_)) => Ok(Trust::Pinned(crate::wire::client::Pins {
                ca: self.ca_sha256.clone(),
                leaf: self.cert_sha256.clone(),
            })),
            (None, None) => Err(ClientError::Tls {
                url: self.authority_url.clone(),
                message: format!(
                    "no pinned certificate in {IDENTITY_FILE}; enroll again with a new ticket"
                ),
            }),
        }
    }

    /// Moves a certificate-pinned identity to the deployment CA an
    /// authority's grant named: first the CA is pinned beside the
    /// certificate, then, once the authority serves a certificate the CA
    /// signed, the old pin is dropped. The grant came over a connection
    /// these pins verified, so it speaks for the authority; a CA already
    /// pinned is never replaced this way. Whether anything changed.
    pub fn adopt_ca(&mut self, ca: &crate::wire::api::DeploymentCa) -> bool {
        let well_formed = ca.sha256.len() == 64 && ca.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if self.system_trust || !self.authority_url.starts_with("https://") || !well_formed {
            return false;
        }
        let sha256 = ca.sha256.to_ascii_lowercase();
        let mut changed = false;
        if self.ca_sha256.is_none() && self.cert_sha256.is_some() {
            self.ca_sha256 = Some(sha256.clone());
            changed = true;
        }
        if ca.signs_served_certificate
            && self.ca_sha256.as_deref() == Some(sha256.as_str())
            && self.cert_sha256.is_some()
        {
            self.cert_sha256 = None;
            changed = true;
        }
        changed
    }

    /// The URLs to reach the authority at, in order.
    pub fn urls(&self) -> Vec<String> {
        if self.authority_urls.is_empty() {
            vec![self.authority_url.clone()]
        } else {
            self.authority_urls.clone()
        }
    }

    pub fn client(&self) -> Result<AuthorityClient, ClientError> {
        AuthorityClient::with_urls(&self.urls(), &self.trust()?)
    }
}

/// A lease as kept on disk: the grant and when it was received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLease {
    pub identity_id: String,
    pub grant: LeaseGrant,
    /// This gateway's wall clock when the grant arrived: after a restart
    /// the monotonic clock is gone, so this is what tells how much is
    /// left (and the lease is checked with the authority when it answers).
    pub received_ms: i64,
    /// The boot and its `CLOCK_BOOTTIME` (ms) when the grant arrived:
    /// within the same boot the age is told by that, which no step of the
    /// wall clock moves. Absent from files of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_boot: Option<BootStamp>,
}

/// A moment on one boot's own time line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStamp {
    pub boot_id: String,
    pub boottime_ms: i64,
}

impl BootStamp {
    pub fn now() -> BootStamp {
        BootStamp {
            boot_id: crate::clock::BootId::current().to_string(),
            boottime_ms: crate::clock::boottime_ns() / 1_000_000,
        }
    }
}

impl StoredLease {
    /// When the grant arrived by the wall clock as it reads now
    /// (`wall_ms` at `now`): its age on the boot's time line if it came in
    /// this boot, else the wall clock's record of it.
    pub fn received_by_the_clock_now(&self, now: &BootStamp, wall_ms: i64) -> i64 {
        match &self.received_boot {
            Some(then) if then.boot_id == now.boot_id && now.boottime_ms >= then.boottime_ms => {
                wall_ms - (now.boottime_ms - then.boottime_ms)
            }
            _ => self.received_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("cannot read the ticket {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the ticket is malformed")]
    Malformed(#[from] TicketError),
    #[error(transparent)]
    Authority(#[from] ClientError),
    #[error("cannot store the identity in {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl EnrollError {
    /// Whether the ticket may work later (keep it) or never will (reject).
    pub fn is_transient(&self) -> bool {
        match self {
            EnrollError::Authority(e) => e.is_transient(),
            EnrollError::Read { .. } | EnrollError::Store { .. } => true,
            EnrollError::Malformed(_) => false,
        }
    }

    /// Whoever answered is not shown to be the authority the ticket pins.
    pub fn is_impostor(&self) -> bool {
        matches!(self, EnrollError::Authority(e) if e.is_impostor())
    }

    /// The reason code written to `.reason` files.
    pub fn reason_code(&self) -> String {
        match self {
            EnrollError::Malformed(_) => "ticket_malformed".into(),
            EnrollError::Authority(e) => e.reason_code(),
            EnrollError::Read { .. } => "unreadable".into(),
            EnrollError::Store { .. } => "store_failed".into(),
        }
    }
}

/// Redeems ticket text for an identity (not yet stored).
pub fn redeem(
    text: &str,
    identity_name: &str,
    system_trust: bool,
) -> Result<Identity, EnrollError> {
    let ticket = Ticket::parse(text)?;
    let urls = ticket.all_urls();
    if ticket.url.starts_with("http://") && !urls.iter().all(|u| is_loopback_url(u)) {
        // Plain HTTP would carry the ticket secret, the identity credential
        // and every lease in clear across a network.
        return Err(EnrollError::Malformed(TicketError::Content(
            "a plain http:// authority is accepted only on a loopback address".into(),
        )));
    }
    let trust = if ticket.url.starts_with("http://") {
        Trust::None
    } else if system_trust {
        Trust::System
    } else {
        // Ticket::parse makes sure an https ticket carries a pin.
        Trust::Pinned(ticket.pins())
    };
    // A ticket bound to a name enrolls under that name: the admin chose
    // it (it may pick the gateway's own database).
    let identity_name = match &ticket.identity_name {
        Some(bound) if bound != identity_name => {
            log::info!(
                "ticket {} enrolls identity {bound:?}; using that instead of identity_name {identity_name:?}",
                ticket.id
            );
            bound.as_str()
        }
        _ => identity_name,
    };
    let client = AuthorityClient::with_urls(&urls, &trust)?;
    let e = client.enroll(&ticket.secret, identity_name)?;
    let pins = match system_trust {
        false => ticket.pins(),
        true => crate::wire::client::Pins::default(),
    };
    Ok(Identity {
        identity_id: e.identity_id,
        identity_name: e.identity_name,
        role: e.role,
        attributes: e.attributes,
        credential: e.credential,
        // The one that answered: an unreachable (or impostor) first URL
        // is not the authority.
        authority_url: client.url().to_owned(),
        authority_urls: if urls.len() > 1 { urls } else { Vec::new() },
        cert_sha256: pins.leaf,
        ca_sha256: pins.ca,
        system_trust,
        enrolled_ms: crate::now_ms(),
    })
}

fn is_loopback_url(url: &str) -> bool {
    let Some(host) = url
        .parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            // Most often a file written by `leasegate enroll` run as
            // another user than the daemon.
            log::error!("cannot read {}: {e}", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            log::error!("{} is damaged ({e}); ignoring it", path.display());
            None
        }
    }
}

pub fn load_identity(state_dir: &Path) -> Option<Identity> {
    read_json(&state_dir.join(IDENTITY_FILE))
}

pub fn save_identity(state_dir: &Path, identity: &Identity) -> Result<(), EnrollError> {
    let path = state_dir.join(IDENTITY_FILE);
    write_private(&path, identity).map_err(|source| EnrollError::Store {
        path: path.display().to_string(),
        source,
    })
}

pub fn load_lease(state_dir: &Path) -> Option<StoredLease> {
    read_json(&state_dir.join(LEASE_FILE))
}

pub fn save_lease(state_dir: &Path, lease: &StoredLease) -> std::io::Result<()> {
    write_private(&state_dir.join(LEASE_FILE), lease)
}

pub const RETIRED_FILE: &str = "retired.json";

/// Identities replaced by a new enrollment whose leases are still to be
/// revoked: on disk, so a restart in between does not forget them.
pub fn load_retired(state_dir: &Path) -> Vec<Identity> {
    read_json(&state_dir.join(RETIRED_FILE)).unwrap_or_default()
}

pub fn save_retired(state_dir: &Path, old: &Identity) {
    let mut all = load_retired(state_dir);
    if !all.iter().any(|i| i.identity_id == old.identity_id) {
        all.push(old.clone());
    }
    if let Err(e) = write_private(&state_dir.join(RETIRED_FILE), &all) {
        log::warn!(
            "cannot note the replaced identity in {}: {e}",
            state_dir.display()
        );
    }
}

pub fn clear_retired(state_dir: &Path, identity_id: &str) {
    let mut all = load_retired(state_dir);
    all.retain(|i| i.identity_id != identity_id);
    let path = state_dir.join(RETIRED_FILE);
    let _ = if all.is_empty() {
        std::fs::remove_file(&path)
    } else {
        write_private(&path, &all)
    };
}

/// Forgets the identity and its lease (the authority revoked it).
pub fn forget(state_dir: &Path) {
    for f in [IDENTITY_FILE, LEASE_FILE] {
        let _ = std::fs::remove_file(state_dir.join(f));
    }
}

/// The `*.ticket` entries of the ticket directory.
#[derive(Debug, Default)]
pub struct WaitingTickets {
    /// Settled ones, oldest first.
    pub settled: Vec<PathBuf>,
    /// How long until the next one that is still changing has been
    /// unchanged for [`SETTLE`].
    pub settling_in: Option<std::time::Duration>,
}

/// `*.ticket` entries in `dir` (whatever their type: a symlink or a FIFO
/// is refused by name when it is read), oldest first; one changed in the
/// last [`SETTLE`] may still be being copied in and waits.
pub fn waiting_tickets(dir: &Path) -> WaitingTickets {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return WaitingTickets::default();
    };
    let mut waiting = WaitingTickets::default();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if p.extension().is_none_or(|x| x != "ticket") {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            continue;
        }
        let modified = m.modified().unwrap_or(std::time::UNIX_EPOCH);
        // A time in the future (a clock behind the copy's origin) counts
        // as settled: nothing is copying it now.
        match modified.elapsed() {
            Ok(age) if age < SETTLE => {
                let left = SETTLE - age;
                waiting.settling_in = Some(waiting.settling_in.map_or(left, |n| n.min(left)));
            }
            _ => found.push((modified, p)),
        }
    }
    found.sort();
    waiting.settled = found.into_iter().map(|(_, p)| p).collect();
    waiting
}

/// Largest ticket file read; a ticket is a few hundred bytes.
pub const MAX_TICKET_BYTES: u64 = 64 << 10;

/// Reads a ticket file literally: never through a symbolic link, never
/// waiting (a FIFO or device is refused, not opened for a writer), only a
/// regular file of at most [`MAX_TICKET_BYTES`], and only UTF-8 text. Who
/// can write into the ticket directory must not make the daemon read
/// another file, block, or take a gigabyte into memory.
pub fn read_ticket(path: &Path) -> Result<String, EnrollError> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let read_error = |source| EnrollError::Read {
        path: path.display().to_string(),
        source,
    };
    let not_regular = |kind: &str| {
        EnrollError::Malformed(TicketError::NotRegular(format!(
            "{} is {kind}, not a regular file",
            path.display()
        )))
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_regular("a symbolic link"));
        }
        Err(e) => return Err(read_error(e)),
    };
    let meta = file.metadata().map_err(read_error)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(not_regular(if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "not a file"
        }));
    }
    if meta.len() > MAX_TICKET_BYTES {
        return Err(EnrollError::Malformed(TicketError::TooLarge(meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the check: never more than the limit.
    file.take(MAX_TICKET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_TICKET_BYTES {
        return Err(EnrollError::Malformed(TicketError::TooLarge(
            bytes.len() as u64
        )));
    }
    String::from_utf8(bytes)
        .map_err(|e| EnrollError::Malformed(TicketError::NotUtf8(e.utf8_error().valid_up_to())))
}

/// What became of a ticket file.
pub enum TicketOutcome {
    Enrolled(Identity),
    /// Renamed `.rejected`, with the reason beside it.
    Rejected(EnrollError),
    /// Kept for another try.
    Kept(EnrollError),
}

/// Redeems one ticket file, stores the identity and deletes the file; or
/// rejects or keeps it (see the module doc).
pub fn process_ticket(
    path: &Path,
    state_dir: &Path,
    identity_name: &str,
    system_trust: bool,
) -> TicketOutcome {
    let text = read_ticket(path);
    let ticket_id = text
        .as_ref()
        .ok()
        .and_then(|t| Ticket::parse(t).ok())
        .map(|t| t.id);
    let result = text.and_then(|text| redeem(&text, identity_name, system_trust));
    if let Ok(identity) = &result
        && let Err(e) = save_identity(state_dir, identity)
    {
        // The ticket is used up now: the identity is kept in memory (and
        // lost at a restart), rather than burning the ticket on a retry.
        log::error!(
            "{}; this enrollment lasts until the daemon stops",
            crate::error_chain(&e)
        );
    }
    match result {
        Ok(identity) => {
            // The ticket is a secret and is used: it goes.
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot delete the used ticket {}: {e}", path.display());
            }
            TicketOutcome::Enrolled(identity)
        }
        Err(e) if e.is_transient() => TicketOutcome::Kept(e),
        Err(e) => {
            let mut text = format!("{}: {}\n", e.reason_code(), crate::error_chain(&e));
            if e.is_impostor() {
                // The pin is checked in the handshake, so the secret never
                // left: the ticket still works at the real authority, and
                // whoever answered may be waiting for one that does.
                let id = ticket_id.as_deref().unwrap_or("(unknown id)");
                let warning = format!(
                    "POSSIBLE ATTACK: the server at the ticket's URL is not the authority that issued ticket {id}; \
                     its secret was not sent and is still valid. Revoke it on the authority \
                     (leasegate-authority ticket revoke {id}) unless the authority's certificate was replaced on purpose, \
                     and check the network path to it."
                );
                log::error!("{warning}");
                text.push_str(&warning);
                text.push('\n');
            }
            reject(path, &text);
            TicketOutcome::Rejected(e)
        }
    }
}

/// Sets a rejected ticket aside as `NAME.ticket.rejected` with its reason
/// in `NAME.ticket.reason`. Both are made new, never through a symbolic
/// link: whatever sits at those names (a link planted to have the daemon
/// overwrite another file, an old rejection) is unlinked first, and a name
/// taken again in between is left alone.
fn reject(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let (rejected, reason) = (beside(".rejected"), beside(".reason"));
    let clear = |p: &Path| {
        if std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) {
            let _ = std::fs::remove_file(p);
        }
    };
    clear(&reason);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&reason)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(err) = written {
        log::warn!("cannot write {}: {err}", reason.display());
    }
    clear(&rejected);
    // A hard link never replaces an existing name and links a symbolic
    // link itself, not what it points at. A file system without hard
    // links (vfat, some network mounts) gets a rename, once the name is
    // seen to be free.
    let moved = match std::fs::hard_link(path, &rejected) {
        Ok(()) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if std::fs::symlink_metadata(&rejected).is_err() => std::fs::rename(path, &rejected),
        Err(e) => Err(e),
    };
    if let Err(err) = moved {
        log::error!(
            "cannot set the rejected ticket {} aside: {err}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::Pins;

    #[test]
    fn plain_http_is_taken_only_from_a_loopback_authority() {
        assert!(is_loopback_url("http://127.0.0.1:7443"));
        assert!(is_loopback_url("http://[::1]:7443"));
        assert!(is_loopback_url("http://localhost:7443"));
        assert!(!is_loopback_url("http://authority.example:7443"));
        assert!(!is_loopback_url("http://10.0.0.5"));
        // Refused before any connection is tried.
        let ticket = Ticket {
            url: "http://authority.example:7443".into(),
            urls: Vec::new(),
            id: "t".into(),
            secret: Secret::new(crate::secret::random_base64(
                crate::wire::ticket::SECRET_BYTES,
            )),
            cert_sha256: None,
            ca_sha256: None,
            expires: 0,
            attributes: BTreeMap::new(),
            identity_name: None,
        };
        let e = redeem(&ticket.encode(), "gw", false).unwrap_err();
        assert_eq!(e.reason_code(), "ticket_malformed");
        assert!(!e.is_transient());
        let text = crate::error_chain(&e);
        assert!(text.contains("loopback"), "{text}");
    }

    #[test]
    fn an_https_identity_without_its_certificate_is_an_error_not_plain_trust() {
        let mut id = Identity {
            identity_id: "i".into(),
            identity_name: "gw".into(),
            role: "r".into(),
            attributes: BTreeMap::new(),
            credential: Secret::new("lgi_x"),
            authority_url: "https://127.0.0.1:7443".into(),
            authority_urls: Vec::new(),
            cert_sha256: None,
            ca_sha256: None,
            system_trust: false,
            enrolled_ms: 0,
        };
        assert!(matches!(id.trust(), Err(ClientError::Tls { .. })));
        id.cert_sha256 = Some("ab".repeat(32));
        assert!(matches!(id.trust(), Ok(Trust::Pinned(p)) if p == Pins::leaf(&"ab".repeat(32))));
        // Moving to the CA: both are trusted; then the CA alone.
        id.ca_sha256 = Some("cd".repeat(32));
        let both = Pins {
            ca: Some("cd".repeat(32)),
            leaf: Some("ab".repeat(32)),
        };
        assert!(matches!(id.trust(), Ok(Trust::Pinned(p)) if p == both));
        id.cert_sha256 = None;
        assert!(matches!(id.trust(), Ok(Trust::Pinned(p)) if p == Pins::ca(&"cd".repeat(32))));
        id.cert_sha256 = Some("ab".repeat(32));
        // An identity stored before the pin was checked on every call
        // (it kept the certificate's DER too) reads with its pin.
        let old = r#"{"identity_id":"i","identity_name":"gw","role":"r","attributes":{},
            "credential":"lgi_x","authority_url":"https://127.0.0.1:7443",
            "cert_der_base64":"AAEC","cert_sha256":"CDCD","system_trust":false,"enrolled_ms":0}"#;
        let old: Identity = serde_json::from_str(old).unwrap();
        assert!(matches!(old.trust(), Ok(Trust::Pinned(p)) if p == Pins::leaf("CDCD")));
        assert!(
            !format!("{id:?}").contains("lgi_x"),
            "Debug hides the credential"
        );
    }

    #[test]
    fn state_files_are_private_and_retired_identities_are_remembered() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let id = Identity {
            identity_id: "old".into(),
            identity_name: "gw".into(),
            role: "r".into(),
            attributes: BTreeMap::new(),
            credential: Secret::new("lgi_x"),
            authority_url: "http://127.0.0.1:1".into(),
            authority_urls: Vec::new(),
            cert_sha256: None,
            ca_sha256: None,
            system_trust: false,
            enrolled_ms: 0,
        };
        save_identity(dir.path(), &id).unwrap();
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_identity(dir.path()).unwrap().credential.expose(),
            "lgi_x"
        );
        save_retired(dir.path(), &id);
        save_retired(dir.path(), &id);
        assert_eq!(load_retired(dir.path()).len(), 1);
        clear_retired(dir.path(), "old");
        assert!(load_retired(dir.path()).is_empty());
        assert!(!dir.path().join(RETIRED_FILE).exists());
    }
}
