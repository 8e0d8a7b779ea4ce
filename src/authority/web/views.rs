//! The signed-in pages and their forms: the fleet, one gateway, tickets
//! (create, download once, revoke), leases (revoke) and the audit trail.
//! Every change is a POST that carries the session's CSRF token and goes
//! through the service, which audits it with the admin's name; then a
//! redirect (303) to a page that says what happened.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::secret::Secret;
use crate::wire::api::identity_name_is_valid;

use super::pages::{self, FleetFilter, TicketForm};
use super::{Web, page, same, signed_in, to_login};

/// Rows of the audit trail a page shows.
const AUDIT_PAGE_ROWS: u32 = 50;
/// How long a new ticket waits for its one download.
const DOWNLOAD_FOR: Duration = Duration::from_secs(600);
/// New tickets waiting for their download, at most (the oldest goes).
const MAX_WAITING_DOWNLOADS: usize = 64;
/// The longest a ticket may be valid for from the page.
const MAX_TICKET_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most uses a ticket may have from the page.
const MAX_USES: u32 = 100_000;

/// A new ticket's file until its one download. Kept in this replica's
/// memory only: the link is followed on the connection that made it.
pub struct WaitingTicket {
    admin: String,
    id: String,
    file: Secret,
    until: Instant,
}

/// New tickets by their download token.
#[derive(Default)]
pub struct Downloads(Mutex<HashMap<String, WaitingTicket>>);

impl Downloads {
    fn put(&self, token: String, ticket: WaitingTicket) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, t| t.until > now);
        if map.len() >= MAX_WAITING_DOWNLOADS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, t)| t.until)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token, ticket);
    }

    /// The ticket for `token` if `admin` made it and it has not expired;
    /// it is gone from here either way once taken.
    fn take(&self, token: &str, admin: &str) -> Option<WaitingTicket> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let found = map.get(token)?;
        if found.admin != admin {
            return None;
        }
        map.remove(token).filter(|t| t.until > Instant::now())
    }
}

/// Runs a store call off the async threads; a failure becomes the error
/// page (the cause is in the authority's log, not the page).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::wire::api::ApiError> + Send + 'static,
) -> Result<T, Response> {
    change(f).await?.map_err(|e| {
        log::warn!("web page: {}", crate::error_chain(&e));
        page(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::error("The store failed; see the authority's log."),
        )
    })
}

/// Runs a change off the async threads: the service's refusal is kept
/// for the page to say; a task that failed becomes the error page.
async fn change<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::wire::api::ApiError> + Send + 'static,
) -> Result<Result<T, crate::wire::api::ApiError>, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|_| failed())
}

fn failed() -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::error("The request failed; see the authority's log."),
    )
}

/// The signed-in admin and the session's CSRF token, or the login page.
async fn admin(web: &Web, headers: &HeaderMap) -> Result<(String, String), Response> {
    match signed_in(web, headers).await {
        Some((admin, csrf, _)) => Ok((admin, csrf)),
        None => Err(to_login()),
    }
}

/// The admin, if the form carries the session's CSRF token.
async fn admin_posting(
    web: &Web,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(String, String), Response> {
    let (admin, expected) = admin(web, headers).await?;
    if !same(&expected, csrf) {
        return Err(page(
            StatusCode::FORBIDDEN,
            pages::error("The form's CSRF token is missing or wrong: load the page again."),
        ));
    }
    Ok((admin, expected))
}

/// An id from a query string worth naming on a page: ids are short and
/// plain; anything else is not one of ours and is not echoed.
fn plain_id(id: Option<&str>) -> Option<&str> {
    id.filter(|i| identity_name_is_valid(i) && i.len() <= 64)
}

/// "Lease ID revoked." after a redirect that names a plain id.
fn revoked(what: &str, id: Option<&str>) -> Option<Result<String, String>> {
    plain_id(id).map(|id| Ok(format!("{what} {id} revoked.")))
}

fn roles(web: &Web) -> Vec<String> {
    web.authority
        .config()
        .roles
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

fn done(r: Result<Response, Response>) -> Response {
    r.unwrap_or_else(|e| e)
}

pub async fn fleet(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(filter): Query<FleetFilter>,
) -> Response {
    done(
        async {
            let (admin, csrf) = admin(&web, &headers).await?;
            let a = web.authority.clone();
            let mut gateways = blocking(move || a.fleet()).await?;
            let mut seen_roles: Vec<String> = gateways.iter().map(|g| g.role.clone()).collect();
            seen_roles.extend(roles(&web));
            seen_roles.sort();
            seen_roles.dedup();
            gateways.retain(|g| filter.keeps(g));
            Ok(page(
                StatusCode::OK,
                pages::fleet(
                    &admin,
                    &csrf,
                    &gateways,
                    &filter,
                    &seen_roles,
                    crate::now_ms(),
                ),
            ))
        }
        .await,
    )
}

#[derive(serde::Deserialize, Default)]
pub struct Revoked {
    #[serde(default)]
    revoked: Option<String>,
}

pub async fn gateway(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Revoked>,
) -> Response {
    done(
        async {
            let (admin, csrf) = admin(&web, &headers).await?;
            let a = web.authority.clone();
            let wanted = id.clone();
            let Some(view) = blocking(move || a.gateway(&wanted)).await? else {
                return Ok(page(
                    StatusCode::NOT_FOUND,
                    pages::error("No gateway has that identity."),
                ));
            };
            let message = revoked("Lease", q.revoked.as_deref());
            Ok(page(
                StatusCode::OK,
                pages::gateway(&admin, &csrf, &view, message.as_ref(), crate::now_ms()),
            ))
        }
        .await,
    )
}

#[derive(serde::Deserialize, Default)]
pub struct LeasesQuery {
    #[serde(default)]
    all: Option<String>,
    #[serde(default)]
    revoked: Option<String>,
}

pub async fn leases(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<LeasesQuery>,
) -> Response {
    done(
        async {
            let (admin, csrf) = admin(&web, &headers).await?;
            let a = web.authority.clone();
            let mut leases = blocking(move || a.leases(None)).await?;
            leases.sort_by_key(|l| std::cmp::Reverse(l.created_ms));
            let message = revoked("Lease", q.revoked.as_deref());
            Ok(page(
                StatusCode::OK,
                pages::leases(
                    &admin,
                    &csrf,
                    &leases,
                    q.all.is_some(),
                    message.as_ref(),
                    crate::now_ms(),
                ),
            ))
        }
        .await,
    )
}

#[derive(serde::Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    /// The gateway page to return to.
    #[serde(default)]
    gateway: Option<String>,
}

pub async fn revoke_lease(
    State(web): State<Web>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<RevokeForm>,
) -> Response {
    done(
        async {
            let (admin, _) = admin_posting(&web, &headers, &form.csrf).await?;
            let a = web.authority.clone();
            let id = form.id.clone();
            let by = format!("admin {admin}");
            if let Err(e) = change(move || a.revoke_lease(&id, None, &by)).await? {
                return Ok(page(
                    StatusCode::BAD_REQUEST,
                    pages::error(&format!("The lease was not revoked: {}", e.message)),
                ));
            }
            let id = plain_id(Some(&form.id)).unwrap_or("");
            Ok(match plain_id(form.gateway.as_deref()) {
                Some(g) => Redirect::to(&format!("/ui/gateway/{g}?revoked={id}")),
                None => Redirect::to(&format!("/ui/leases?revoked={id}")),
            }
            .into_response())
        }
        .await,
    )
}

pub async fn tickets(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<Revoked>,
) -> Response {
    done(
        async {
            let (admin, csrf) = admin(&web, &headers).await?;
            let message = revoked("Ticket", q.revoked.as_deref());
            tickets_page(
                &web,
                &admin,
                &csrf,
                &TicketForm::default(),
                message,
                StatusCode::OK,
            )
            .await
        }
        .await,
    )
}

async fn tickets_page(
    web: &Web,
    admin: &str,
    csrf: &str,
    form: &TicketForm,
    message: Option<Result<String, String>>,
    status: StatusCode,
) -> Result<Response, Response> {
    let a = web.authority.clone();
    let tickets = blocking(move || a.tickets()).await?;
    Ok(page(
        status,
        pages::tickets(
            admin,
            csrf,
            &tickets,
            &roles(web),
            form,
            message.as_ref(),
            crate::now_ms(),
        ),
    ))
}

/// What the create form asks for, read field by field; the error names
/// the field and what is wrong with it.
pub struct NewTicket {
    pub attributes: std::collections::BTreeMap<String, String>,
    pub uses: u32,
    pub expires_in: Duration,
    pub role: Option<String>,
    pub identity_name: Option<String>,
}

pub fn read_ticket_form(form: &TicketForm) -> Result<NewTicket, String> {
    let mut attributes = std::collections::BTreeMap::new();
    for (n, line) in form.attributes.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                attributes.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => {
                return Err(format!(
                    "Attributes, line {}: {line:?} is not key=value.",
                    n + 1
                ));
            }
        }
    }
    let uses = match form.uses.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_USES).contains(&n) => n,
        _ => {
            return Err(format!(
                "Uses: {:?} is not a whole number from 1 to {MAX_USES}.",
                form.uses
            ));
        }
    };
    let expires_in = match humantime::parse_duration(form.expires_in.trim()) {
        Ok(d) if d >= Duration::from_secs(60) && d <= MAX_TICKET_LIFE => d,
        Ok(_) => {
            return Err(format!(
                "Expires in: {:?} is not between 1 minute and 365 days.",
                form.expires_in
            ));
        }
        Err(e) => {
            return Err(format!(
                "Expires in: {:?} is not a duration such as 1h or 7d ({e}).",
                form.expires_in
            ));
        }
    };
    let role = Some(form.role.trim().to_owned()).filter(|r| !r.is_empty());
    let identity_name = Some(form.identity_name.trim().to_owned()).filter(|n| !n.is_empty());
    if let Some(name) = &identity_name
        && !identity_name_is_valid(name)
    {
        return Err(format!(
            "Identity name: {name:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(NewTicket {
        attributes,
        uses,
        expires_in,
        role,
        identity_name,
    })
}

pub async fn create_ticket(
    State(web): State<Web>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<TicketForm>,
) -> Response {
    done(
        async {
            let (admin, csrf) = admin_posting(&web, &headers, &form.csrf).await?;
            let new = match read_ticket_form(&form) {
                Ok(new) => new,
                Err(why) => {
                    return tickets_page(
                        &web,
                        &admin,
                        &csrf,
                        &form,
                        Some(Err(why)),
                        StatusCode::BAD_REQUEST,
                    )
                    .await;
                }
            };
            let a = web.authority.clone();
            let by = format!("admin {admin}");
            let created = change(move || {
                a.create_ticket(
                    new.attributes,
                    new.uses,
                    new.expires_in,
                    new.role,
                    new.identity_name,
                    &by,
                )
            })
            .await?;
            let ticket = match created {
                Ok(t) => t,
                Err(e) => {
                    let why = format!("The ticket was not created: {}", e.message);
                    return tickets_page(
                        &web,
                        &admin,
                        &csrf,
                        &form,
                        Some(Err(why)),
                        StatusCode::BAD_REQUEST,
                    )
                    .await;
                }
            };
            let token = crate::secret::random_hex(16);
            let expires = crate::render::expiry(ticket.expires as i64 * 1000, crate::now_ms());
            let id = ticket.id.clone();
            web.downloads.put(
                token.clone(),
                WaitingTicket {
                    admin: admin.clone(),
                    id: id.clone(),
                    file: Secret::new(format!("{}\n", ticket.encode())),
                    until: Instant::now() + DOWNLOAD_FOR,
                },
            );
            Ok(page(
                StatusCode::OK,
                pages::ticket_created(
                    &admin,
                    &csrf,
                    &id,
                    &format!("/ui/tickets/download/{token}"),
                    &expires,
                ),
            ))
        }
        .await,
    )
}

pub async fn download_ticket(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    done(async {
        let (admin, _) = admin(&web, &headers).await?;
        let Some(ticket) = web.downloads.take(&token, &admin) else {
            return Ok(page(
                StatusCode::GONE,
                pages::error(
                    "This ticket was downloaded already, or its 10 minutes are over: revoke it and create another.",
                ),
            ));
        };
        log::info!("web page: admin {admin} downloaded ticket {}", ticket.id);
        Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}.ticket\"", ticket.id),
                ),
            ],
            ticket.file.expose().to_owned(),
        )
            .into_response())
    }
    .await)
}

#[derive(serde::Deserialize)]
pub struct IdForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
}

pub async fn revoke_ticket(
    State(web): State<Web>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<IdForm>,
) -> Response {
    done(
        async {
            let (admin, csrf) = admin_posting(&web, &headers, &form.csrf).await?;
            let a = web.authority.clone();
            let id = form.id.clone();
            let by = format!("admin {admin}");
            match change(move || a.revoke_ticket(&id, &by)).await? {
                Ok(()) => {
                    let id = plain_id(Some(&form.id)).unwrap_or("");
                    Ok(Redirect::to(&format!("/ui/tickets?revoked={id}")).into_response())
                }
                Err(e) => {
                    let why = format!("The ticket was not revoked: {}", e.message);
                    tickets_page(
                        &web,
                        &admin,
                        &csrf,
                        &TicketForm::default(),
                        Some(Err(why)),
                        StatusCode::BAD_REQUEST,
                    )
                    .await
                }
            }
        }
        .await,
    )
}

#[derive(serde::Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    before: Option<i64>,
}

pub async fn audit(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    done(
        async {
            let (admin, csrf) = admin(&web, &headers).await?;
            let a = web.authority.clone();
            let before = q.before;
            // One row more than the page shows says whether there is an older page.
            let mut rows = blocking(move || a.audit_page(before, AUDIT_PAGE_ROWS + 1)).await?;
            let older = if rows.len() > AUDIT_PAGE_ROWS as usize {
                rows.truncate(AUDIT_PAGE_ROWS as usize);
                rows.last().map(|r| r.seq)
            } else {
                None
            };
            Ok(page(
                StatusCode::OK,
                pages::audit(
                    &admin,
                    &csrf,
                    &rows,
                    before.is_none(),
                    older,
                    crate::now_ms(),
                ),
            ))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(attributes: &str, uses: &str, expires_in: &str, identity_name: &str) -> TicketForm {
        TicketForm {
            attributes: attributes.into(),
            uses: uses.into(),
            expires_in: expires_in.into(),
            identity_name: identity_name.into(),
            ..TicketForm::default()
        }
    }

    #[test]
    fn the_ticket_form_is_read_field_by_field_and_a_bad_field_is_named() {
        let ok =
            read_ticket_form(&form("site=north\r\n\r\nservice = iot ", "3", "2h", "")).unwrap();
        assert_eq!(ok.attributes.len(), 2);
        assert_eq!(ok.attributes["service"], "iot");
        assert_eq!((ok.uses, ok.expires_in), (3, Duration::from_secs(7200)));
        assert!(ok.identity_name.is_none() && ok.role.is_none());
        for (bad, field) in [
            (form("site", "1", "1h", ""), "Attributes, line 1"),
            (form("", "0", "1h", ""), "Uses"),
            (form("", "many", "1h", ""), "Uses"),
            (form("", "1", "soon", ""), "Expires in"),
            (form("", "1", "10s", ""), "Expires in"),
            (form("", "1", "400d", ""), "Expires in"),
            (form("", "1", "1h", "a b"), "Identity name"),
        ] {
            let why = read_ticket_form(&bad).err().expect("refused");
            assert!(why.starts_with(field), "{why}");
        }
    }

    #[test]
    fn a_new_ticket_is_downloaded_once_and_only_by_its_admin() {
        let d = Downloads::default();
        let ticket = |until| WaitingTicket {
            admin: "alice".into(),
            id: "t1".into(),
            file: Secret::new("lgt1.x\n"),
            until,
        };
        d.put("k".into(), ticket(Instant::now() + DOWNLOAD_FOR));
        assert!(d.take("k", "bob").is_none(), "another admin");
        assert!(d.take("k", "alice").is_some());
        assert!(d.take("k", "alice").is_none(), "once");
        d.put("old".into(), ticket(Instant::now()));
        assert!(d.take("old", "alice").is_none(), "expired");
        for n in 0..MAX_WAITING_DOWNLOADS + 5 {
            d.put(format!("n{n}"), ticket(Instant::now() + DOWNLOAD_FOR));
        }
        assert!(d.0.lock().unwrap().len() <= MAX_WAITING_DOWNLOADS);
    }
}
