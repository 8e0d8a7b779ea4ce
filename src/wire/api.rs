//! The authority's HTTP API as types: requests, answers and error codes,
//! shared by the server and the gateway so the two cannot drift apart.
//! Routes: `GET /v1/health` (200 `{"status":"ok"}`), `POST /v1/enroll`,
//! `POST /v1/leases`, `GET /v1/leases`, `GET|DELETE /v1/leases/{id}`;
//! lease routes take `Authorization: Bearer <identity credential>`.
//! Every refusal is an [`ErrorBody`] with a stable [`ErrorCode`]. A type
//! that carries a secret must keep it in a [`Secret`], so that its `Debug`
//! is safe to log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// `POST /v1/enroll`, answered 201 with an [`Enrollment`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    #[serde(with = "crate::secret::wire")]
    pub ticket_secret: Secret,
    /// The gateway's chosen name: 1 to 128 of `A-Z a-z 0-9 . _ -`.
    pub identity_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub identity_id: String,
    pub identity_name: String,
    pub role: String,
    pub attributes: BTreeMap<String, String>,
    /// The bearer credential for lease calls; shown once, stored hashed.
    #[serde(with = "crate::secret::wire")]
    pub credential: Secret,
}

/// A gateway whose lease call failed calls again after this, doubling per
/// failure in a row up to [`LEASE_RETRY_CAP`], less up to a quarter at
/// random: the authority judges whether a gateway is late by it.
pub const LEASE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
pub const LEASE_RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(300);

/// `POST /v1/leases`, answered 201 with a [`LeaseGrant`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Requested lifetime; the role's default when absent, capped at its
    /// max_ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// Which InfluxDB API a write, a lease or an authority backend speaks:
/// one type for the gateway's configuration, the authority's and the wire
/// between them, so that they cannot drift apart. On the wire and in the
/// authority's configuration it is `influxdb-v1`, `influxdb-v2` or
/// `influxdb-v3`; the gateway's `[influxdb] api` says `v1`, `v2`, `v3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InfluxApi {
    #[serde(rename = "influxdb-v1")]
    V1,
    #[serde(rename = "influxdb-v2")]
    V2,
    #[serde(rename = "influxdb-v3")]
    V3,
}

impl InfluxApi {
    pub const ALL: [InfluxApi; 3] = [InfluxApi::V1, InfluxApi::V2, InfluxApi::V3];

    /// The name on the wire and in the authority's configuration.
    pub fn wire_name(self) -> &'static str {
        match self {
            InfluxApi::V1 => "influxdb-v1",
            InfluxApi::V2 => "influxdb-v2",
            InfluxApi::V3 => "influxdb-v3",
        }
    }
}

/// Where and how to write with a lease: everything a gateway needs, so it
/// has no InfluxDB settings of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub api: InfluxApi,
    pub url: String,
    /// 2.x: the organization (its id, which the write API accepts as `org`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// 2.x: the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// 1.x and 3.x: the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStatus {
    /// The credential is being created.
    Pending,
    Active,
    /// Expired or revoked; its credential's deletion failed and is retried.
    Revoking,
    /// Ended at its expiry; the credential is gone.
    Expired,
    /// Ended early by a revoke; the credential is gone.
    Revoked,
    /// Creating the credential failed; nothing exists in InfluxDB.
    Failed,
}

impl LeaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseStatus::Pending => "pending",
            LeaseStatus::Active => "active",
            LeaseStatus::Revoking => "revoking",
            LeaseStatus::Expired => "expired",
            LeaseStatus::Revoked => "revoked",
            LeaseStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => LeaseStatus::Pending,
            "active" => LeaseStatus::Active,
            "revoking" => LeaseStatus::Revoking,
            "expired" => LeaseStatus::Expired,
            "revoked" => LeaseStatus::Revoked,
            "failed" => LeaseStatus::Failed,
            _ => return None,
        })
    }
}

/// One lease: the 200 answer of `GET /v1/leases/{id}`, and of
/// `DELETE /v1/leases/{id}` (then revoked, or revoking).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: String,
    pub identity_id: String,
    /// The identity's name: who the lease was issued for.
    pub issued_for: String,
    pub role: String,
    pub status: LeaseStatus,
    pub ttl_secs: u64,
    /// Unix milliseconds.
    pub created_ms: i64,
    pub expires_ms: i64,
    pub target: Target,
    /// The last failed deletion, while `revoking`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseGrant {
    #[serde(flatten)]
    pub lease: LeaseInfo,
    /// The InfluxDB credential: a token, or `user:password` on 1.x.
    #[serde(with = "crate::secret::wire")]
    pub secret: Secret,
    /// The deployment's CA, from an authority that has one: how gateways
    /// enrolled with a ticket that pinned one certificate move to pinning
    /// the CA (README, "Moving to the deployment CA").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_ca: Option<DeploymentCa>,
    /// The authority's clock as it answered, in Unix milliseconds: how a
    /// gateway learns its own clock's offset (`crate::clock`). Absent from
    /// authorities before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_time_ms: Option<i64>,
    /// How the gateway timed the request this grant answered (never on
    /// the wire).
    #[serde(skip)]
    pub round_trip: Option<crate::clock::RoundTrip>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentCa {
    /// Lowercase hex SHA-256 of the CA's DER certificate.
    pub sha256: String,
    /// Whether the certificate this authority serves is signed by it (not
    /// the self-signed one of before the CA): then a gateway's pin of that
    /// old certificate is no longer needed.
    pub signs_served_certificate: bool,
}

/// `GET /v1/leases`: the caller's own leases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseList {
    pub leases: Vec<LeaseInfo>,
}

/// Why the authority refused; stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    TicketMalformed,
    TicketUnknown,
    TicketExpired,
    TicketUsedUp,
    TicketRevoked,
    NoRoleMatches,
    IdentityUnknown,
    IdentityRevoked,
    LeaseUnknown,
    InvalidRequest,
    BackendFailed,
    /// Too many requests from one address, or at once: come back after the
    /// answer's `Retry-After`.
    RateLimited,
    /// The identity holds as many live leases as its role allows.
    LeaseLimit,
    /// The ticket enrolls one named identity, and the request asked for
    /// another name.
    IdentityNameMismatch,
    Internal,
}

impl ErrorCode {
    /// The HTTP status the code is sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::TicketMalformed | ErrorCode::InvalidRequest => 400,
            ErrorCode::IdentityUnknown => 401,
            ErrorCode::TicketUnknown
            | ErrorCode::TicketExpired
            | ErrorCode::TicketUsedUp
            | ErrorCode::TicketRevoked
            | ErrorCode::NoRoleMatches
            | ErrorCode::IdentityNameMismatch
            | ErrorCode::IdentityRevoked => 403,
            ErrorCode::LeaseUnknown => 404,
            ErrorCode::BackendFailed => 502,
            ErrorCode::RateLimited | ErrorCode::LeaseLimit => 429,
            ErrorCode::Internal => 500,
        }
    }

    /// The code as it is on the wire (`ticket_used_up`), for logs and
    /// `.reason` files.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Whether asking again later can succeed (the gateway keeps its
    /// ticket or identity and backs off) or never will.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::BackendFailed
                | ErrorCode::Internal
                | ErrorCode::RateLimited
                | ErrorCode::LeaseLimit
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// Every refusal: `{"error": {"code": .., "message": ..}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// Whether `name` is a valid identity name. It ends up in InfluxDB token
/// descriptions and names, so it is kept to characters that need no
/// quoting anywhere.
pub fn identity_name_is_valid(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_snake_case_on_the_wire() {
        let body = ErrorBody {
            error: ApiError::new(ErrorCode::TicketUsedUp, "used up"),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"ticket_used_up","message":"used up"}}"#
        );
        assert_eq!(ErrorCode::NoRoleMatches.name(), "no_role_matches");
    }

    #[test]
    fn each_api_has_one_name_on_the_wire() {
        for api in InfluxApi::ALL {
            let wire = serde_json::to_string(&api).unwrap();
            assert_eq!(wire, format!("\"{}\"", api.wire_name()));
            assert_eq!(serde_json::from_str::<InfluxApi>(&wire).unwrap(), api);
        }
        let unknown = serde_json::from_str::<InfluxApi>("\"influxdb-v9\"").unwrap_err();
        assert!(unknown.to_string().contains("influxdb-v9"), "{unknown}");
    }

    #[test]
    fn identity_names() {
        assert!(identity_name_is_valid("gw-07.site_3"));
        assert!(!identity_name_is_valid(""));
        assert!(!identity_name_is_valid("a:b"));
        assert!(!identity_name_is_valid("a b"));
        assert!(!identity_name_is_valid(&"a".repeat(129)));
    }
}
