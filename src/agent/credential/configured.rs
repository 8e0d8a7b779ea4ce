//! The static credential: `[influxdb]`'s destination with its password or
//! token, put in force once at start. When InfluxDB refuses it and the
//! secret came from a file (`password_file`, `token_file`), the file is
//! read again and a changed secret is put in force at once.
//!
//! It runs on the writer's thread, so it must never wait (a file read, no
//! more). It never logs or returns the secret: errors name the file and
//! the OS error only.

use std::sync::Arc;

use crate::agent::credential::{Credential, Origin, Outcome, Outcomes, Slot};
use crate::config::Influx;
use crate::secret::Secret;

/// Puts `influx`'s credential in `slot`; returns the outcomes line for the
/// writer, which re-reads the secret's file after a refusal.
pub fn install(influx: &Influx, slot: Arc<Slot>) -> Outcomes {
    let credential = Credential::for_influx(
        influx,
        Origin::Static {
            file: influx.secret_file.clone(),
        },
    );
    log::info!(
        "writing to {} with static credentials",
        credential.write_url
    );
    slot.set(credential);
    let username = influx.username.clone();
    Outcomes::new(move |outcome| {
        if let Outcome::Refused { credential, status } = outcome {
            reread(&slot, &credential, username.as_deref(), status);
        }
    })
}

/// Reads the refused credential's file again and puts a changed secret in
/// force: an operator rotates a token by rewriting the file, without a
/// restart.
fn reread(slot: &Slot, refused: &Credential, username: Option<&str>, status: u16) {
    let Origin::Static { file: Some(path) } = &refused.origin else {
        return;
    };
    let secret = match std::fs::read_to_string(path) {
        Ok(text) => Secret::new(text.trim()),
        Err(e) => {
            log::error!(
                "InfluxDB refused the credential ({status}) and cannot read {}: {e}",
                path.display()
            );
            return;
        }
    };
    if secret.expose().is_empty() {
        log::error!(
            "InfluxDB refused the credential ({status}) and {} is empty",
            path.display()
        );
        return;
    }
    let fresh = refused.with_secret(username, &secret);
    if fresh.authorization == refused.authorization {
        return;
    }
    // Another refusal may have put it in force already.
    if slot
        .current()
        .1
        .is_some_and(|c| c.authorization == fresh.authorization)
    {
        return;
    }
    log::info!(
        "InfluxDB refused the credential ({status}); took the new one from {}",
        path.display()
    );
    slot.set(fresh);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Api;
    use crate::shutdown::Shutdown;
    use std::time::Duration;

    #[test]
    fn a_refused_credential_from_a_file_is_read_again_and_replaced_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first\n").unwrap();
        let influx = Influx {
            api: Api::V2,
            url: "http://127.0.0.1:8086".into(),
            database: None,
            retention_policy: None,
            org: Some("o".into()),
            bucket: Some("b".into()),
            username: None,
            password: None,
            token: Some(Secret::new("first")),
            secret_file: Some(file.clone()),
            gzip: false,
            timeout: Duration::from_secs(1),
        };
        let shutdown = Shutdown::new();
        let slot = Slot::new(&shutdown);
        let outcomes = install(&influx, slot.clone());
        let (v1, first) = slot.current();
        let first = first.unwrap();
        assert_eq!(
            first.authorization.as_ref().unwrap().expose(),
            "Token first"
        );
        let refuse = |c: &Arc<Credential>| {
            outcomes.send(Outcome::Refused {
                credential: c.clone(),
                status: 401,
            })
        };
        // Unchanged file: nothing to take up.
        refuse(&first);
        assert_eq!(slot.version(), v1);
        // Rotated: in force at once.
        std::fs::write(&file, "second\n").unwrap();
        refuse(&first);
        let (v2, second) = slot.current();
        assert_eq!(v2, v1 + 1);
        assert_eq!(
            second.unwrap().authorization.as_ref().unwrap().expose(),
            "Token second"
        );
        // A second report of the same refusal changes nothing more.
        refuse(&first);
        assert_eq!(slot.version(), v2);
        // An unreadable or empty file keeps what there is.
        std::fs::write(&file, "  \n").unwrap();
        refuse(&first);
        std::fs::remove_file(&file).unwrap();
        refuse(&first);
        assert_eq!(slot.version(), v2);
    }
}
