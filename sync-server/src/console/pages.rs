//! The console's pages other than reports: home, devices (with enrolment
//! and revocation), teams, audit, data protection, status.

use std::collections::{BTreeMap, BTreeSet};

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::{ConsoleError, ConsoleResult, Page, Staff, csv, svg};
use crate::AppState;
use crate::admin::{self, devices::MAX_CODE_HOURS};
use crate::storage::{AuditAction, Device, StaffRole, Team, TeamPolicy};

/// A posted form's CSRF field alone.
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

pub async fn home(staff: Staff) -> Response {
    let mut links: Vec<(&str, &str)> = Vec::new();
    for (path, label, _) in super::NAV {
        if super::allowed(path, staff.account.role) {
            links.push((path, label));
        }
    }
    Page::respond(
        StatusCode::OK,
        Page::render(
            "Office console",
            Some(&staff),
            "",
            html! {
                p { "Signed in as " strong { (staff.account.name) } ", " (super::role_label(staff.account.role)) "." }
                ul.cards {
                    @for (path, label) in links {
                        li { a href=(path) { (label) } }
                    }
                }
            },
        ),
    )
}

fn date_of(stamp: &str) -> String {
    DateTime::parse_from_rfc3339(stamp)
        .map(|t| t.with_timezone(&Utc).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| stamp.to_string())
}

/// A device's offline lease, in words: `fine`, `due` (within a quarter of
/// its lease, or two days, of locking) or `locked`.
pub fn lease_state(device: &Device, policy: &TeamPolicy, now: DateTime<Utc>) -> &'static str {
    if device.revoked_at.is_some() {
        return "revoked";
    }
    let Some(days) = policy.lease_days else {
        return "fine";
    };
    let since = device
        .last_sync_at
        .as_deref()
        .unwrap_or(&device.enrolled_at);
    let Ok(since) = DateTime::parse_from_rfc3339(since) else {
        return "fine";
    };
    let idle = now - since.with_timezone(&Utc);
    let lease = chrono::Duration::days(days);
    let margin = std::cmp::max(lease / 4, chrono::Duration::days(2));
    if idle >= lease {
        "locked"
    } else if idle >= lease - margin {
        "due"
    } else {
        "fine"
    }
}

async fn policies(state: &AppState, teams: Vec<Team>) -> ConsoleResult<BTreeMap<Team, TeamPolicy>> {
    let mut out = BTreeMap::new();
    for team in teams {
        let policy = state.storage.team_policy(&team).await?;
        out.insert(team, policy);
    }
    Ok(out)
}

/// Every team the relay knows: those with devices, a policy or reports.
async fn known_teams(state: &AppState) -> ConsoleResult<BTreeSet<Team>> {
    let mut teams: BTreeSet<Team> = state
        .storage
        .devices()
        .await?
        .into_iter()
        .map(|d| d.team)
        .collect();
    teams.extend(
        state
            .storage
            .retention_policies()
            .await?
            .into_iter()
            .map(|(t, _)| t),
    );
    teams.extend(state.storage.projected_teams().await?);
    Ok(teams)
}

fn devices_page(
    staff: &Staff,
    devices: &[Device],
    policies: &BTreeMap<Team, TeamPolicy>,
    teams: &BTreeSet<Team>,
    enrolled: Option<Markup>,
) -> Markup {
    let now = Utc::now();
    Page::render(
        "Devices",
        Some(staff),
        "/console/devices",
        html! {
            @if let Some(enrolled) = enrolled { (enrolled) }
            section aria-labelledby="enrol-heading" {
                h2 #enrol-heading { "Enrol a device" }
                form.inline method="post" action="/console/devices/enrol" {
                    (staff.csrf_field())
                    div {
                        label for="team" { "Team" }
                        input #team name="team" type="text" required list="teams" autocomplete="off";
                        datalist #teams { @for t in teams { option value=(t.as_str()) {} } }
                    }
                    div {
                        label for="worker" { "Worker" }
                        input #worker name="worker" type="text" required autocomplete="off";
                    }
                    div {
                        label for="expires_hours" { "Code valid for" }
                        select #expires_hours name="expires_hours" {
                            option value="24" selected { "1 day" }
                            option value="72" { "3 days" }
                            option value="168" { "7 days" }
                        }
                    }
                    button type="submit" { "Create enrolment code" }
                }
            }
            section aria-labelledby="list-heading" {
                h2 #list-heading { "Enrolled devices (" (devices.len()) ")" }
                div.scroll {
                    table #devices {
                        caption.visually-hidden { "Every enrolled device" }
                        thead { tr {
                            th scope="col" { "Device" }
                            th scope="col" { "Team" }
                            th scope="col" { "Worker" }
                            th scope="col" { "Enrolled" }
                            th scope="col" { "Last sync" }
                            th scope="col" { "Last seen from" }
                            th scope="col" { "Lease" }
                            th scope="col" { "Revoked" }
                            th scope="col" { span.visually-hidden { "Actions" } }
                        } }
                        tbody {
                            @for d in devices {
                                @let lease = lease_state(d, policies.get(&d.team).unwrap_or(&TeamPolicy::default()), now);
                                tr data-device=(d.id.as_str()) {
                                    td { (d.device_name) br; code.small { (d.id.as_str()) } }
                                    td { (d.team.as_str()) }
                                    td { (d.worker) }
                                    td { (date_of(&d.enrolled_at)) }
                                    td { (d.last_sync_at.as_deref().map(date_of).unwrap_or_else(|| "never".into())) }
                                    td { (d.last_address_kind.as_deref().unwrap_or("—")) }
                                    td { span class={ "lease lease-" (lease) } { (lease) } }
                                    td { (d.revoked_at.as_deref().map(date_of).unwrap_or_else(|| "no".into())) }
                                    td {
                                        @if d.revoked_at.is_none() {
                                            a href={ "/console/devices/" (d.id.as_str()) "/revoke" } { "Revoke" span.visually-hidden { " " (d.device_name) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub async fn devices(State(state): State<AppState>, staff: Staff) -> ConsoleResult {
    staff.may_open("/console/devices")?;
    let devices = admin::devices::list_devices(&*state.storage).await?;
    let teams_of: Vec<Team> = devices.iter().map(|d| d.team.clone()).collect();
    let policies = policies(&state, teams_of).await?;
    let teams = known_teams(&state).await?;
    Ok(Page::respond(
        StatusCode::OK,
        devices_page(&staff, &devices, &policies, &teams, None),
    ))
}

#[derive(Debug, Deserialize)]
pub struct EnrolForm {
    csrf: Option<String>,
    team: Option<String>,
    worker: Option<String>,
    expires_hours: Option<String>,
}

pub async fn enrol(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<EnrolForm>,
) -> ConsoleResult {
    staff.check_csrf(form.csrf.as_deref())?;
    staff.require(&[StaffRole::Administrator])?;
    let hours: i64 = form
        .expires_hours
        .as_deref()
        .unwrap_or("24")
        .parse()
        .map_err(|_| {
            ConsoleError::BadRequest(format!(
                "Code validity must be 1 to {MAX_CODE_HOURS} hours."
            ))
        })?;
    let now = Utc::now();
    let e = admin::devices::enrol(
        &*state.storage,
        form.team.as_deref().unwrap_or_default(),
        form.worker.as_deref().unwrap_or_default(),
        hours,
        now,
    )
    .await?;
    let mut record = staff.audit(AuditAction::EnrolmentCodeIssued, now);
    record.team = Some(e.team.to_string());
    state.storage.append_audit(&[record]).await?;
    let link = admin::devices::enrolment_link(&e.code, state.console.config.public_url.as_deref());
    let qr = svg::qr(&link)?;
    let shown = html! {
        section.result aria-labelledby="code-heading" role="status" {
            h2 #code-heading { "Enrolment code for " (e.worker) " (" (e.team.as_str()) ")" }
            p { "Scan the code with the Linkbook app, or type the code in. It works once and expires " (e.expires_at.format("%Y-%m-%d %H:%M UTC")) "." }
            p.code { code #enrolment-code { (e.code) } }
            figure #enrolment-qr { (qr) figcaption { "QR code of the enrolment code" } }
        }
    };
    let devices = admin::devices::list_devices(&*state.storage).await?;
    let teams_of: Vec<Team> = devices.iter().map(|d| d.team.clone()).collect();
    let policies = policies(&state, teams_of).await?;
    let teams = known_teams(&state).await?;
    Ok(Page::respond(
        StatusCode::OK,
        devices_page(&staff, &devices, &policies, &teams, Some(shown)),
    ))
}

async fn device(state: &AppState, id: &str) -> ConsoleResult<Device> {
    state
        .storage
        .devices()
        .await?
        .into_iter()
        .find(|d| d.id.as_str() == id)
        .ok_or_else(|| ConsoleError::NotFound("There is no such device.".into()))
}

pub async fn revoke_form(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ConsoleResult {
    staff.require(&[StaffRole::Administrator])?;
    let d = device(&state, &id).await?;
    Ok(Page::respond(
        StatusCode::OK,
        Page::render(
            "Revoke a device",
            Some(&staff),
            "/console/devices",
            html! {
                p { "Device " strong { (d.device_name) } " of " (d.worker) ", team " (d.team.as_str()) "." }
                p { "Revoking it cuts its open connections now. At its next sync it is refused and told to wipe what it holds; anything it wrote offline and has not synced is lost. This cannot be undone: a worker who keeps the device needs a new enrolment code." }
                @if d.revoked_at.is_some() {
                    p role="status" { "This device is revoked already." }
                } @else {
                    form method="post" action={ "/console/devices/" (d.id.as_str()) "/revoke" } {
                        (staff.csrf_field())
                        button.danger type="submit" { "Revoke device" }
                        " "
                        a href="/console/devices" { "Cancel" }
                    }
                }
            },
        ),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> ConsoleResult {
    staff.check_csrf(form.csrf.as_deref())?;
    staff.require(&[StaffRole::Administrator])?;
    let d = device(&state, &id).await?;
    let now = Utc::now();
    if d.revoked_at.is_none() {
        admin::devices::revoke_device_by(&*state.storage, &id, &staff.actor(), now).await?;
    }
    // Cut its open connections here at once (the revocation watch would
    // within seconds, on every node).
    state.hub.cut_revoked(&id);
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/console/devices")],
    )
        .into_response())
}

fn days_in_words(days: Option<i64>, what: &str) -> String {
    match days {
        None => format!("No limit: {what} never."),
        Some(0) => format!("0 days: {what} at once."),
        Some(1) => format!("1 day: {what} after a day."),
        Some(d) => format!("{d} days: {what} after {d} days."),
    }
}

pub async fn teams(State(state): State<AppState>, staff: Staff) -> ConsoleResult {
    staff.may_open("/console/teams")?;
    let teams = known_teams(&state).await?;
    let policies = policies(&state, teams.iter().cloned().collect()).await?;
    let admin = staff.account.role == StaffRole::Administrator;
    Ok(Page::respond(
        StatusCode::OK,
        Page::render(
            "Teams",
            Some(&staff),
            "/console/teams",
            html! {
                p { "Each team's policy reaches its devices at their next sync." }
                dl.explain {
                    dt { "Retention" }
                    dd { "How long after a case is closed (its closure date) the relay and every device delete the case file." }
                    dt { "Offline lease" }
                    dd { "How long a device may go without syncing before it locks its records until it syncs again: a lost or stolen device stops showing them." }
                }
                @if teams.is_empty() {
                    p { "No teams yet: a team appears when its first device is enrolled." }
                }
                @for (team, policy) in &policies {
                    section.team aria-labelledby={ "team-" (team.as_str()) } {
                        h2 id={ "team-" (team.as_str()) } { (team.as_str()) }
                        ul {
                            li { "Retention: " (days_in_words(policy.retention_days, "closed cases are deleted")) }
                            li { "Offline lease: " (days_in_words(policy.lease_days, "devices lock")) }
                        }
                        @if admin {
                            form.inline method="post" action="/console/teams/policy" {
                                (staff.csrf_field())
                                input type="hidden" name="team" value=(team.as_str());
                                div {
                                    label for={ "retention-" (team.as_str()) } { "Retention days (empty: no limit)" }
                                    input id={ "retention-" (team.as_str()) } name="retention_days" type="number" min="0" max=(admin::teams::MAX_DAYS) value=[policy.retention_days];
                                }
                                div {
                                    label for={ "lease-" (team.as_str()) } { "Lease days (empty: no limit)" }
                                    input id={ "lease-" (team.as_str()) } name="lease_days" type="number" min="0" max=(admin::teams::MAX_DAYS) value=[policy.lease_days];
                                }
                                button type="submit" { "Save policy" }
                            }
                        }
                    }
                }
            },
        ),
    ))
}

#[derive(Debug, Deserialize)]
pub struct PolicyForm {
    csrf: Option<String>,
    team: Option<String>,
    retention_days: Option<String>,
    lease_days: Option<String>,
}

fn days_field(value: Option<&str>, field: &str) -> ConsoleResult<Option<i64>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ConsoleError::BadRequest(format!("{field} must be a whole number of days, or empty."))
        }),
    }
}

pub async fn set_policy(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<PolicyForm>,
) -> ConsoleResult {
    staff.check_csrf(form.csrf.as_deref())?;
    staff.require(&[StaffRole::Administrator])?;
    let change = admin::teams::PolicyChange {
        retention_days: Some(days_field(form.retention_days.as_deref(), "Retention")?),
        lease_days: Some(days_field(form.lease_days.as_deref(), "Lease")?),
    };
    admin::teams::set_team_policy_by(
        &*state.storage,
        form.team.as_deref().unwrap_or_default(),
        change,
        &staff.actor(),
        Utc::now(),
    )
    .await?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/console/teams")],
    )
        .into_response())
}

/// The audit page's filters (query string).
#[derive(Debug, Deserialize, Default, Clone)]
pub struct AuditFilter {
    family: Option<String>,
    team: Option<String>,
    device: Option<String>,
    worker: Option<String>,
    action: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// The audit page shows at most this many records (the newest).
const AUDIT_PAGE_ROWS: usize = 500;
/// The most records the audit CSV holds (the newest, if more match: a
/// bound on what one download loads).
const AUDIT_CSV_ROWS: usize = 1_000_000;

fn blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// The records `f` asks for, newest first, at most `limit`; and how many
/// match in all (the storage searches: nothing else is loaded).
async fn audit_rows(
    state: &AppState,
    f: &AuditFilter,
    limit: usize,
) -> ConsoleResult<(Vec<crate::storage::AuditEntry>, u64)> {
    let day = |v: Option<&str>, field: &str| -> ConsoleResult<Option<chrono::NaiveDate>> {
        v.map(|d| {
            d.parse().map_err(|_| {
                ConsoleError::BadRequest(format!("{field} must be a date (YYYY-MM-DD)."))
            })
        })
        .transpose()
    };
    let query = admin::audit::AuditSearchQuery {
        of: admin::audit::AuditQuery {
            family: blank(&f.family).map(str::to_string),
            device: blank(&f.device).map(str::to_string),
            team: blank(&f.team).map(str::to_string),
        },
        worker: blank(&f.worker).map(str::to_string),
        action: blank(&f.action).map(str::to_string),
        from: day(blank(&f.from), "From")?,
        to: day(blank(&f.to), "To")?,
    };
    Ok(admin::audit::search_audit(&*state.storage, &query, limit).await?)
}

fn audit_query_string(f: &AuditFilter) -> String {
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("family", &f.family),
        ("team", &f.team),
        ("device", &f.device),
        ("worker", &f.worker),
        ("action", &f.action),
        ("from", &f.from),
        ("to", &f.to),
    ] {
        if let Some(v) = blank(v) {
            pairs.append_pair(k, v);
        }
    }
    pairs.finish()
}

pub async fn audit(
    State(state): State<AppState>,
    staff: Staff,
    Query(f): Query<AuditFilter>,
) -> ConsoleResult {
    staff.may_open("/console/audit")?;
    let (shown, total) = audit_rows(&state, &f, AUDIT_PAGE_ROWS).await?;
    let actions: Vec<String> = AuditAction::named()
        .iter()
        .map(|a| a.as_str().to_string())
        .collect();
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(Page::respond(
        StatusCode::OK,
        Page::render(
            "Audit",
            Some(&staff),
            "/console/audit",
            html! {
                form.filters method="get" action="/console/audit" {
                    div { label for="f-family" { "Family id" } input #f-family name="family" type="text" value=(field(&f.family)); }
                    div { label for="f-team" { "Team" } input #f-team name="team" type="text" value=(field(&f.team)); }
                    div { label for="f-device" { "Device id" } input #f-device name="device" type="text" value=(field(&f.device)); }
                    div { label for="f-worker" { "Worker or staff" } input #f-worker name="worker" type="text" value=(field(&f.worker)); }
                    div {
                        label for="f-action" { "Action" }
                        select #f-action name="action" {
                            option value="" { "any" }
                            @for a in &actions {
                                option value=(a) selected[f.action.as_deref() == Some(a.as_str())] { (a) }
                            }
                        }
                    }
                    div { label for="f-from" { "From" } input #f-from name="from" type="date" value=(field(&f.from)); }
                    div { label for="f-to" { "To" } input #f-to name="to" type="date" value=(field(&f.to)); }
                    button type="submit" { "Filter" }
                }
                p {
                    (total) " records match"
                    @if total > shown.len() as u64 { "; the newest " (shown.len()) " are shown" }
                    ". "
                    a href={ "/console/audit.csv?" (audit_query_string(&f)) } download { "Download CSV" }
                }
                div.scroll {
                    table #audit {
                        caption.visually-hidden { "Audit records, newest first" }
                        thead { tr {
                            th scope="col" { "When" }
                            th scope="col" { "Action" }
                            th scope="col" { "Who" }
                            th scope="col" { "Device" }
                            th scope="col" { "Team" }
                            th scope="col" { "Document" }
                            th scope="col" { "Address" }
                        } }
                        tbody {
                            @for r in &shown {
                                tr {
                                    td { (date_of(&r.at)) }
                                    td { (r.action.as_str()) }
                                    td { (r.worker.as_deref().unwrap_or("")) }
                                    td { code.small { (r.device_id.as_deref().unwrap_or("")) } }
                                    td { (r.team.as_deref().unwrap_or("")) }
                                    td { code.small { (r.document_id.as_deref().unwrap_or("")) } }
                                    td { (r.client.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            },
        ),
    ))
}

pub async fn audit_csv(
    State(state): State<AppState>,
    staff: Staff,
    Query(f): Query<AuditFilter>,
) -> ConsoleResult {
    staff.may_open("/console/audit")?;
    let (mut rows, _) = audit_rows(&state, &f, AUDIT_CSV_ROWS).await?;
    // Oldest first in the file.
    rows.reverse();
    let now = Utc::now();
    state
        .storage
        .append_audit(&[staff.audit(AuditAction::ReportExported, now)])
        .await?;
    let mut out = vec![
        [
            "at",
            "action",
            "who",
            "device",
            "team",
            "document",
            "address",
            "received_at",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        out.push(vec![
            r.at,
            r.action.as_str().to_string(),
            r.worker.unwrap_or_default(),
            r.device_id.unwrap_or_default(),
            r.team.unwrap_or_default(),
            r.document_id.unwrap_or_default(),
            r.client.unwrap_or_default(),
            r.received_at.unwrap_or_default(),
        ]);
    }
    csv::download(&format!("audit-{}.csv", now.format("%Y%m%d-%H%M")), &out)
}

fn data_protection_page(
    staff: &Staff,
    refused: &[crate::refusals::RefusedDocument],
    message: Option<Markup>,
) -> Markup {
    Page::render(
        "Data protection",
        Some(staff),
        "/console/data-protection",
        html! {
            @if let Some(m) = message { (m) }
            section aria-labelledby="purge-heading" {
                h2 #purge-heading { "Purge a family" }
                p { "Erases a family's case file and all its history from the relay. Every device of the team deletes it at its next sync, and no device can upload it again. The audit keeps the id, who and when; the erasure ledger keeps the id so that a restored backup is purged again." }
                form.stack method="post" action="/console/data-protection/purge" {
                    (staff.csrf_field())
                    input type="hidden" name="step" value="review";
                    label for="purge-id" { "Family id" }
                    input #purge-id name="family" type="text" required autocomplete="off";
                    label for="purge-team" { "Team (only if two teams hold this id)" }
                    input #purge-team name="team" type="text" autocomplete="off";
                    label for="purge-reason" { "Reason (kept with the purge)" }
                    input #purge-reason name="reason" type="text" required autocomplete="off";
                    button type="submit" { "Review purge" }
                }
            }
            section aria-labelledby="sar-heading" {
                h2 #sar-heading { "Subject access export" }
                p { "Every family case file naming a person (or one family by id), whole, with its audit, as a JSON file. Each export is audited." }
                form.stack method="post" action="/console/data-protection/export" {
                    (staff.csrf_field())
                    label for="sar-name" { "Name (at least two letters)" }
                    input #sar-name name="name" type="text" autocomplete="off";
                    label for="sar-family" { "Or family id" }
                    input #sar-family name="family" type="text" autocomplete="off";
                    label for="sar-team" { "Team (optional)" }
                    input #sar-team name="team" type="text" autocomplete="off";
                    button type="submit" { "Download export" }
                }
            }
            section aria-labelledby="retention-heading" {
                h2 #retention-heading { "Retention" }
                p { "The relay applies each team's retention every day. Run it now to purge, at once, every closed case past its team's retention." }
                form method="post" action="/console/data-protection/retention" {
                    (staff.csrf_field())
                    button type="submit" { "Run retention now" }
                }
            }
            section aria-labelledby="refused-heading" {
                h2 #refused-heading { "Documents the relay refused (" (refused.len()) ")" }
                p { "Uploads the relay would not store: a document of a kind it does not know, over its size budget, or breaking a change rule. Ids only: the relay kept none of their content." }
                div.scroll {
                    table #refused {
                        caption.visually-hidden { "Refused documents" }
                        thead { tr {
                            th scope="col" { "Document" }
                            th scope="col" { "Team" }
                            th scope="col" { "Device" }
                            th scope="col" { "Reason" }
                            th scope="col" { "Times" }
                            th scope="col" { "Last" }
                        } }
                        tbody {
                            @for r in refused {
                                tr {
                                    td { code.small { (r.document_id) } }
                                    td { (r.team.as_str()) }
                                    td { code.small { (r.device_id) } }
                                    td { (r.reason) }
                                    td { (r.count) }
                                    td { (date_of(&r.last_at)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub async fn data_protection(State(state): State<AppState>, staff: Staff) -> ConsoleResult {
    staff.may_open("/console/data-protection")?;
    let refused = state.storage.refused_documents(None).await?;
    Ok(Page::respond(
        StatusCode::OK,
        data_protection_page(&staff, &refused, None),
    ))
}

#[derive(Debug, Deserialize)]
pub struct PurgeForm {
    csrf: Option<String>,
    step: Option<String>,
    family: Option<String>,
    team: Option<String>,
    reason: Option<String>,
    confirm: Option<String>,
}

pub async fn purge(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<PurgeForm>,
) -> ConsoleResult {
    staff.check_csrf(form.csrf.as_deref())?;
    staff.require(&[StaffRole::DataProtection])?;
    let id = admin::parse_family_id(form.family.as_deref().unwrap_or_default().trim())?;
    let team_given = form
        .team
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let reason = form
        .reason
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_string();
    if reason.is_empty() {
        return Err(ConsoleError::BadRequest(
            "Say why the family is purged: the reason is kept with the purge.".into(),
        ));
    }
    let team = admin::team_of(&*state.storage, id, team_given)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("The relay holds no family {id}.")))?;
    let devices: Vec<_> = state
        .storage
        .devices()
        .await?
        .into_iter()
        .filter(|d| d.team == team && d.revoked_at.is_none())
        .collect();
    if form.step.as_deref() != Some("confirm") {
        return Ok(Page::respond(
            StatusCode::OK,
            Page::render(
                "Confirm the purge",
                Some(&staff),
                "/console/data-protection",
                html! {
                    p { "Family " code { (id.to_string()) } " of team " strong { (team.as_str()) } "." }
                    h2 { "What will happen" }
                    ul {
                        li { "The relay deletes the case file and every change to it now." }
                        li { "Each of the team's " (devices.len()) " devices deletes it at its next sync, including anything written about the family offline that it has not synced." }
                        li { "No device can upload it again; a restored backup is purged again from the erasure ledger." }
                        li { "The audit keeps the family id, who purged it and when." }
                    }
                    form.stack method="post" action="/console/data-protection/purge" {
                        (staff.csrf_field())
                        input type="hidden" name="step" value="confirm";
                        input type="hidden" name="family" value=(id.to_string());
                        input type="hidden" name="team" value=(team.as_str());
                        input type="hidden" name="reason" value=(reason);
                        label for="confirm" { "Type the family id to confirm" }
                        input #confirm name="confirm" type="text" required autocomplete="off";
                        button.danger type="submit" { "Purge family" }
                    }
                    p { a href="/console/data-protection" { "Cancel" } }
                },
            ),
        ));
    }
    let typed = form.confirm.as_deref().unwrap_or_default().trim();
    let typed_id = admin::parse_family_id(typed).ok();
    if typed_id != Some(id) {
        return Err(ConsoleError::BadRequest(
            "The id typed does not match the family's: nothing was purged.".into(),
        ));
    }
    let now = Utc::now();
    let purged = admin::families::purge_family_by(
        &*state.storage,
        &id.to_string(),
        &reason,
        Some(&team),
        &staff.actor(),
        now,
    )
    .await?;
    let refused = state.storage.refused_documents(None).await?;
    let message = html! {
        p.notice role="status" { "Family " code { (purged.id.to_string()) } " of team " (purged.team.as_str()) " is purged. Devices delete it at their next sync." }
    };
    Ok(Page::respond(
        StatusCode::OK,
        data_protection_page(&staff, &refused, Some(message)),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ExportForm {
    csrf: Option<String>,
    name: Option<String>,
    family: Option<String>,
    team: Option<String>,
}

pub async fn export(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<ExportForm>,
) -> ConsoleResult {
    staff.check_csrf(form.csrf.as_deref())?;
    staff.require(&[StaffRole::DataProtection])?;
    let query = admin::families::SubjectQuery {
        name: blank(&form.name).map(str::to_string),
        family: blank(&form.family).map(str::to_string),
        team: blank(&form.team).map(str::to_string),
    };
    let now = Utc::now();
    let export =
        admin::families::export_person_by(&*state.storage, &query, &staff.actor(), now).await?;
    let json = serde_json::to_vec_pretty(&export)
        .map_err(|e| ConsoleError::Internal(format!("export: {e}")))?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"subject-access-{}.json\"",
                    now.format("%Y%m%d-%H%M%S")
                ),
            ),
        ],
        json,
    )
        .into_response())
}

pub async fn retention(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<CsrfOnly>,
) -> ConsoleResult {
    staff.check_csrf(form.csrf.as_deref())?;
    staff.require(&[StaffRole::DataProtection])?;
    let now = Utc::now();
    state
        .storage
        .append_audit(&[staff.audit(AuditAction::RetentionRun, now)])
        .await?;
    let purged =
        admin::retention::sweep_by(&*state.storage, now.date_naive(), &staff.actor()).await?;
    let refused = state.storage.refused_documents(None).await?;
    let message = html! {
        p.notice role="status" {
            "Retention ran: " (purged.len()) " closed "
            (if purged.len() == 1 { "case was" } else { "cases were" })
            " past their team's retention and purged."
        }
    };
    Ok(Page::respond(
        StatusCode::OK,
        data_protection_page(&staff, &refused, Some(message)),
    ))
}

pub async fn status(State(state): State<AppState>, staff: Staff) -> ConsoleResult {
    staff.may_open("/console/status")?;
    let metrics = crate::metrics::metrics();
    let recent = metrics.recent_syncs();
    let devices = state.storage.devices().await?;
    let names: BTreeMap<&str, &str> = devices
        .iter()
        .map(|d| (d.id.as_str(), d.device_name.as_str()))
        .collect();
    let documents = state.storage.document_ids().await?.len();
    let last_backup = state.storage.last_backup().await?;
    let refused = state.storage.refused_documents(None).await?.len();
    let dirty = state.storage.dirty_projections(10_000).await?.len();
    let now = Utc::now();
    Ok(Page::respond(
        StatusCode::OK,
        Page::render(
            "Status",
            Some(&staff),
            "/console/status",
            html! {
                dl.figures {
                    dt { "Devices connected to this relay now" } dd #connected { (metrics.connected_now()) }
                    dt { "Enrolled devices" } dd { (devices.iter().filter(|d| d.revoked_at.is_none()).count()) " (" (devices.iter().filter(|d| d.revoked_at.is_some()).count()) " revoked)" }
                    dt { "Documents stored" } dd { (documents) }
                    dt { "Documents loaded in memory" } dd { (state.hub.loaded_documents()) }
                    dt { "Documents refused" } dd { (refused) }
                    dt { "Reports waiting to catch up" } dd { (dirty) " documents" }
                    dt { "Last backup" }
                    dd #backup {
                        @match last_backup {
                            Some(at) => { (at.format("%Y-%m-%d %H:%M UTC")) " (" ((now - at).num_hours()) " hours ago)" }
                            None => { "never recorded" }
                        }
                    }
                }
                h2 { "Recent syncs on this relay" }
                @if recent.is_empty() {
                    p { "None since the relay started." }
                } @else {
                    div.scroll {
                        table #recent {
                            caption.visually-hidden { "Recent syncs, newest first" }
                            thead { tr {
                                th scope="col" { "Ended" }
                                th scope="col" { "Device" }
                                th scope="col" { "Team" }
                                th scope="col" { "Outcome" }
                            } }
                            tbody {
                                @for r in &recent {
                                    tr class=[(!matches!(r.outcome, crate::metrics::SyncOutcome::Completed)).then_some("problem")] {
                                        td { (r.at.format("%Y-%m-%d %H:%M:%S")) }
                                        td { (names.get(r.device.as_str()).copied().unwrap_or("")) " " code.small { (r.device) } }
                                        td { (r.team) }
                                        td { (format!("{:?}", r.outcome).to_lowercase()) }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    ))
}
