//! The web page's admins: added, listed and removed with the command line,
//! their passwords checked at login. A password is kept only as an
//! Argon2id hash in a PHC string (its salt and costs with it); it is never
//! stored, logged or returned, and every change is audited.

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};

use crate::now_ms;
use crate::secret::{self, Secret};
use crate::wire::api::{ApiError, ErrorCode};

use super::Authority;

/// Shorter passwords are refused: a web login is exposed to guessing
/// (rate-limited, but from many addresses).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Argon2 takes any length; a request body does not need more.
const MAX_PASSWORD_BYTES: usize = 1024;

impl Authority {
    /// Adds admin `name`, or (with `replace`) sets the password of one
    /// that exists.
    pub fn add_admin(&self, name: &str, password: &Secret, replace: bool) -> Result<(), ApiError> {
        check_name(name)?;
        let hash = hash_password(password)?;
        if !self.store().set_admin(name, &hash, now_ms(), replace)? {
            let why = match replace {
                true => format!("no admin {name:?}; add it without --replace"),
                false => format!("admin {name:?} exists; --replace sets a new password"),
            };
            return Err(ApiError::new(ErrorCode::InvalidRequest, why));
        }
        let event = if replace {
            "admin password set"
        } else {
            "admin added"
        };
        self.store()
            .audit(now_ms(), event, name, "by the command line")?;
        Ok(())
    }

    pub fn admins(&self) -> Result<Vec<(String, i64)>, ApiError> {
        Ok(self.store().admins()?)
    }

    pub fn remove_admin(&self, name: &str) -> Result<(), ApiError> {
        if !self.store().remove_admin(name)? {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("no admin {name:?}"),
            ));
        }
        self.store()
            .audit(now_ms(), "admin removed", name, "by the command line")?;
        Ok(())
    }

    /// Whether `password` is admin `name`'s. An unknown name costs the
    /// same hashing as a known one, so the time taken does not tell
    /// which names exist.
    pub fn check_admin(&self, name: &str, password: &Secret) -> Result<bool, ApiError> {
        let stored = self.store().admin_hash(name)?;
        Ok(verify_password(password, stored.as_deref()))
    }
}

/// A name as a person types it, and as it appears in the audit trail.
fn check_name(name: &str) -> Result<(), ApiError> {
    if crate::wire::api::identity_name_is_valid(name) && name.len() <= 64 {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::InvalidRequest,
        "an admin name is 1 to 64 of A-Z a-z 0-9 . _ -",
    ))
}

/// The PHC string of a new Argon2id hash of `password` (the crate's
/// default costs: 19 MiB, 2 passes), with 16 random bytes of salt.
pub fn hash_password(password: &Secret) -> Result<String, ApiError> {
    let p = password.expose();
    if p.chars().count() < MIN_PASSWORD_CHARS || p.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "a password has {MIN_PASSWORD_CHARS} characters at least and {MAX_PASSWORD_BYTES} bytes at most"
            ),
        ));
    }
    let salt = secret::random_bytes(16);
    Argon2::default()
        .hash_password_with_salt(p.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("hashing a password: {e}")))
}

/// Whether `password` matches the PHC string `stored`; with none stored,
/// a hash of the same cost is still made (and fails).
pub fn verify_password(password: &Secret, stored: Option<&str>) -> bool {
    // A fixed hash of a password nobody has, checked instead of a missing
    // one: the same work either way.
    const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$bm90LWFuLWFkbWluLXNhbHQ$4iwZ/Z1uDPvKwq9PZ2OBRvH8SKTe6E2HBWR/M1x1kEo";
    let p = password.expose().as_bytes();
    if p.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let matched = Argon2::default()
        .verify_password(p, stored.unwrap_or(DECOY))
        .is_ok();
    matched && stored.is_some()
}

/// A login's session as the browser holds it, and the CSRF token its
/// forms carry.
pub struct Session {
    pub token: Secret,
    pub csrf: String,
}

impl Authority {
    /// Opens a session of `admin` for `ttl` (after its password was
    /// checked), audited with the address it came from.
    pub fn open_session(
        &self,
        admin: &str,
        ttl: std::time::Duration,
        from: std::net::IpAddr,
    ) -> Result<Session, ApiError> {
        let token = Secret::new(secret::random_hex(32));
        let csrf = secret::random_hex(16);
        let now = now_ms();
        let expires = now + ttl.as_millis() as i64;
        self.store()
            .insert_session(&secret::digest(&token), admin, &csrf, now, expires)?;
        self.store()
            .audit(now, "admin login", admin, &format!("from {from}"))?;
        Ok(Session { token, csrf })
    }

    /// The admin and CSRF token of a live session.
    pub fn session(&self, token: &Secret) -> Result<Option<(String, String)>, ApiError> {
        Ok(self.store().session(&secret::digest(token), now_ms())?)
    }

    pub fn close_session(&self, token: &Secret, admin: &str) -> Result<(), ApiError> {
        self.store().delete_session(&secret::digest(token))?;
        self.store().audit(now_ms(), "admin logout", admin, "")?;
        Ok(())
    }

    /// A wrong name or password from `from`, audited once a minute per
    /// address at most (with a count of the rest).
    pub fn login_refused(&self, name: &str, from: std::net::IpAddr) -> Result<(), ApiError> {
        let key = format!("login:{from}");
        let detail = format!("wrong name or password for {name:?} from {from}");
        let record = ("admin login refused", name, detail.as_str());
        self.audit_refusal(now_ms(), &key, &from.to_string(), record)?;
        Ok(())
    }

    /// Logins from `from` locked after too many wrong passwords.
    pub fn login_locked(&self, from: std::net::IpAddr, why: &str) -> Result<(), ApiError> {
        self.store()
            .audit(now_ms(), "admin login locked", &from.to_string(), why)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_kept_as_an_argon2id_hash_that_only_it_matches() {
        let pw = Secret::new("correct horse battery");
        let hash = hash_password(&pw).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(!hash.contains("correct"));
        assert!(verify_password(&pw, Some(&hash)));
        assert!(!verify_password(
            &Secret::new("correct horse battery!"),
            Some(&hash)
        ));
        assert!(!verify_password(&pw, None));
        assert!(!verify_password(&pw, Some("not a hash")));
        // Two hashes of one password differ by their salt.
        assert_ne!(hash, hash_password(&pw).unwrap());
    }

    #[test]
    fn short_passwords_and_odd_names_are_refused() {
        let e = hash_password(&Secret::new("elevenchars")).unwrap_err();
        assert!(e.message.contains("12 characters"), "{e}");
        assert!(check_name("ops-1").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn the_decoy_is_a_valid_hash_of_the_default_cost() {
        // A decoy that failed to parse would answer at once and tell
        // unknown names apart.
        let parsed = argon2::PasswordHash::new(
            "$argon2id$v=19$m=19456,t=2,p=1$bm90LWFuLWFkbWluLXNhbHQ$4iwZ/Z1uDPvKwq9PZ2OBRvH8SKTe6E2HBWR/M1x1kEo",
        );
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
