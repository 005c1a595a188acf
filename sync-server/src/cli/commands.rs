//! The admin commands (`device`, `team`, `family`, `retention`, `audit`,
//! `export-person`): each parses nothing more, calls the admin service
//! layer (`crate::admin`) on the relay's storage, and prints.

use super::*;

/// An admin error as the command line has always said it (`--flag` names).
fn cli_error(e: AdminError) -> crate::Error {
    use crate::Error::BadRequest;
    match e {
        AdminError::InvalidInput {
            field: "family_id",
            reason,
        } => BadRequest(reason),
        AdminError::InvalidInput { field, reason } => {
            BadRequest(format!("--{} {reason}", field.replace('_', "-")))
        }
        AdminError::AmbiguousId { id, teams } => BadRequest(format!(
            "{id} is held by {} teams ({}): ids are per team, so say which with --team",
            teams.len(),
            teams.join(", ")
        )),
        AdminError::NotFound {
            what: "device", id, ..
        } => BadRequest(format!("no device {id}")),
        AdminError::NotFound { what, id, team } => BadRequest(match team {
            Some(team) => format!("no {what} {id} of team {team} on this relay"),
            None => format!("no {what} {id} on this relay"),
        }),
        AdminError::Refused(reason) => BadRequest(reason),
        AdminError::Storage(e) => e,
    }
}

/// Pretty JSON on stdout (`fallback` if it cannot be made).
fn print_json<T: serde::Serialize>(value: &T, fallback: &str) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| fallback.into())
    );
}

/// `admin add|reset|disable|list`: console accounts. The set-up link alone
/// goes to stdout (for scripts); what it is for, to stderr.
pub(super) async fn admin(data: Data<'_>, cmd: AdminCommand) -> crate::Result<()> {
    use crate::storage::{AuditAction, AuditRecord, StaffRole};
    let state = data.open(Limits::default()).await?;
    let storage = &*state.storage;
    let now = Utc::now();
    let changed = |name: &str| {
        AuditRecord::new(AuditAction::StaffAccountChanged, now)
            .worker(&admin::accounts::actor(name))
    };
    match cmd {
        AdminCommand::Add {
            name,
            role,
            expires_hours,
            server,
        } => {
            let role = StaffRole::parse(&role)
                .ok_or_else(|| crate::Error::BadRequest(format!("--role {role} is not a role")))?;
            let new = admin::accounts::add_account(storage, &name, role, expires_hours, now)
                .await
                .map_err(cli_error)?;
            storage.append_audit(&[changed(&new.account.name)]).await?;
            println!("{}", new.link(server.as_deref()));
            eprintln!(
                "set-up link for {} ({}); it works once and expires in {expires_hours} h{}",
                new.account.name,
                role.as_str(),
                if server.is_none() {
                    ": open it on the relay's address (give --server or LINKBOOK_PUBLIC_URL to print the whole link)"
                } else {
                    ""
                }
            );
        }
        AdminCommand::Reset {
            name,
            expires_hours,
            server,
        } => {
            let new = admin::accounts::reset_account(storage, &name, expires_hours, now)
                .await
                .map_err(cli_error)?;
            storage.append_audit(&[changed(&new.account.name)]).await?;
            println!("{}", new.link(server.as_deref()));
            eprintln!(
                "new set-up link for {}; the old password, second factor and sessions no longer work",
                new.account.name
            );
        }
        AdminCommand::Disable { name } => {
            admin::accounts::disable_account(storage, &name, now)
                .await
                .map_err(cli_error)?;
            storage.append_audit(&[changed(name.trim())]).await?;
            println!("disabled {}", name.trim());
        }
        AdminCommand::List { json } => {
            let accounts = admin::accounts::list_accounts(storage)
                .await
                .map_err(cli_error)?;
            let rows: Vec<_> = accounts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "name": a.name,
                        "role": a.role.as_str(),
                        "created_at": a.created_at.to_rfc3339(),
                        "set_up": a.password_hash.is_some(),
                        "disabled_at": a.disabled_at.map(|t| t.to_rfc3339()),
                    })
                })
                .collect();
            if json {
                print_json(&rows, "[]");
            } else {
                for a in &accounts {
                    let state = match (a.disabled_at, &a.password_hash) {
                        (Some(_), _) => "disabled",
                        (None, Some(_)) => "active",
                        (None, None) => "awaiting set-up",
                    };
                    println!("{:<24} {:<16} {state}", a.name, a.role.as_str());
                }
            }
        }
    }
    Ok(())
}

pub(super) async fn device(data: Data<'_>, cmd: DeviceCommand) -> crate::Result<()> {
    let state = data.open(Limits::default()).await?;
    let storage = &*state.storage;
    match cmd {
        DeviceCommand::Enrol {
            team,
            worker,
            expires_hours,
            server,
        } => {
            let code = admin::devices::enrol(storage, &team, &worker, expires_hours, Utc::now())
                .await
                .map_err(|e| match e {
                    AdminError::InvalidInput {
                        field: "team" | "worker",
                        ..
                    } => crate::Error::BadRequest("team and worker must not be empty".into()),
                    AdminError::InvalidInput {
                        field: "expires_hours",
                        ..
                    } => crate::Error::BadRequest("--expires-hours must be 1 to 720".into()),
                    e => cli_error(e),
                })?
                .code;
            // The code alone on stdout, for scripts; the QR code (for the
            // app's camera) and the explanation on the terminal.
            println!("{code}");
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                let link = admin::devices::enrolment_link(&code, server.as_deref());
                if let Ok(qr) = qrcode::QrCode::new(link.as_bytes()) {
                    let art = qr
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build();
                    eprintln!("{art}\n{link}");
                }
            }
            eprintln!(
                "one-time enrolment code for {worker} ({team}); expires in {expires_hours} h"
            );
        }
        DeviceCommand::List { json } => {
            let devices = admin::devices::list_devices(storage)
                .await
                .map_err(cli_error)?;
            if json {
                print_json(&devices, "[]");
            } else {
                for d in devices {
                    let status = if d.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {:<12} {:<20} {:<20} {}",
                        d.id, d.team, d.worker, d.device_name, status
                    );
                }
            }
        }
        DeviceCommand::Revoke { id } => {
            admin::devices::revoke_device(storage, &id, Utc::now())
                .await
                .map_err(cli_error)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

pub(super) async fn team(data: Data<'_>, cmd: TeamCommand) -> crate::Result<()> {
    let TeamCommand::Policy {
        team,
        retention_days,
        lease_days,
    } = cmd;
    let state = data.open(Limits::default()).await?;
    let change = admin::teams::PolicyChange {
        retention_days: retention_days.map(|Limit(d)| d),
        lease_days: lease_days.map(|Limit(d)| d),
    };
    let (team, policy) = admin::teams::set_team_policy(&*state.storage, &team, change, Utc::now())
        .await
        .map_err(cli_error)?;
    let show = |d: Option<i64>| d.map_or("off".to_string(), |d| format!("{d} days"));
    println!(
        "team {team}: retention {}, offline lease {}",
        show(policy.retention_days),
        show(policy.lease_days)
    );
    Ok(())
}

pub(super) async fn retention_apply(
    data: Data<'_>,
    today: Option<chrono::NaiveDate>,
) -> crate::Result<()> {
    let state = data.open(Limits::default()).await?;
    let today = today.unwrap_or_else(|| Utc::now().date_naive());
    let purged = admin::retention::sweep(&*state.storage, today)
        .await
        .map_err(cli_error)?;
    for id in &purged {
        println!("purged {id}");
    }
    eprintln!("{} closed case(s) past retention purged", purged.len());
    Ok(())
}

pub(super) async fn audit(
    data: Data<'_>,
    family: Option<String>,
    device: Option<String>,
    team: Option<String>,
    json: bool,
) -> crate::Result<()> {
    // A malformed id is refused before the database is opened.
    if let Some(f) = &family {
        admin::parse_family_id(f).map_err(cli_error)?;
    }
    let state = data.open(Limits::default()).await?;
    let query = admin::audit::AuditQuery {
        family,
        device,
        team,
    };
    let entries = admin::audit::audit_log(&*state.storage, &query)
        .await
        .map_err(cli_error)?;
    if json {
        print_json(&entries, "[]");
        return Ok(());
    }
    for e in entries {
        println!(
            "{}  {:<9} {:<36} {:<20} {}",
            e.at,
            e.action,
            e.device_id
                .as_deref()
                .or(e.client.as_deref())
                .unwrap_or("-"),
            e.worker.as_deref().unwrap_or("-"),
            e.document_id.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

pub(super) async fn family(data: Data<'_>, cmd: FamilyCommand) -> crate::Result<()> {
    let state = data.open(Limits::default()).await?;
    let FamilyCommand::Purge { id, reason, team } = cmd;
    let purged =
        admin::families::purge_family(&*state.storage, &id, &reason, team.as_deref(), Utc::now())
            .await
            .map_err(cli_error)?;
    println!(
        "purged family {} of team {}; devices delete it at their next sync",
        purged.id, purged.team
    );
    Ok(())
}

pub(super) async fn export_person(
    data: Data<'_>,
    name: Option<String>,
    family: Option<String>,
    team: Option<String>,
) -> crate::Result<()> {
    let query = admin::families::SubjectQuery { name, family, team };
    // Malformed arguments are refused before the database is opened.
    let invalid = |e| match e {
        AdminError::NotFound { .. } => {
            crate::Error::BadRequest("no family with that id on this relay".into())
        }
        e => cli_error(e),
    };
    query.answered().map_err(invalid)?;
    let state = data.open(Limits::default()).await?;
    let export = admin::families::export_person(&*state.storage, &query, Utc::now())
        .await
        .map_err(invalid)?;
    for s in &export.skipped {
        eprintln!(
            "skipped {} of team {}: the stored document is damaged ({})",
            s.family_id, s.team, s.reason
        );
    }
    print_json(&export, "{}");
    Ok(())
}

pub(super) fn backup(data: Data<'_>, file: &std::path::Path, force: bool) -> crate::Result<()> {
    if data.database_url.is_some() {
        return Err(crate::Error::BackupOnPostgres);
    }
    let done = crate::backup::backup(data.path, data.key, file, force)?;
    println!(
        "backed up the relay database to {} ({} bytes, encrypted with the relay's key: keep the key apart)",
        done.file.display(),
        done.bytes
    );
    Ok(())
}

pub(super) async fn restore(data: Data<'_>, file: &std::path::Path) -> crate::Result<()> {
    if data.database_url.is_some() {
        return Err(crate::Error::BackupOnPostgres);
    }
    let ledger = data.ledger()?;
    // No relay may serve the directory meanwhile (and none can start).
    let _lock = super::serve::lock_data_dir(data.path)?;
    let restored = crate::backup::restore(data.path, data.key, file, &ledger).await?;
    println!(
        "restored {} into {}: {} documents, new store id {} (every device sends all it holds at its next sync); erasure ledger: {} records, {} purged again",
        file.display(),
        data.path.display(),
        restored.documents,
        restored.store_id,
        restored.replayed.records,
        restored.replayed.purged_again
    );
    Ok(())
}

pub(super) async fn erasures_replay(data: Data<'_>) -> crate::Result<()> {
    let ledger = data.ledger()?;
    let state = data.open(Limits::default()).await?;
    let replayed = crate::erasure_ledger::replay(&*state.storage, &ledger, Utc::now()).await?;
    println!(
        "erasure ledger {}: {} records, {} purged again",
        ledger.path().display(),
        replayed.records,
        replayed.purged_again
    );
    Ok(())
}

pub(super) async fn after_restore(data: Data<'_>) -> crate::Result<()> {
    let ledger = data.ledger()?;
    // No relay may serve meanwhile: on SQLite the data directory's lock, on
    // PostgreSQL the serving lock, exclusively (every node holds it shared).
    let _lock = match data.database_url {
        None => Some(super::serve::lock_data_dir(data.path)?),
        Some(_) => None,
    };
    let (storage, _) = match data.database_url {
        Some(url) => {
            let hold = Some(crate::storage::postgres::Hold::Exclusive);
            crate::AppState::connect_postgres_storage(url, hold).await?
        }
        None => crate::AppState::open_sqlite(data.path, data.key)?,
    };
    let (store_id, replayed) = crate::backup::after_restore(&*storage, &ledger).await?;
    println!(
        "new store id {store_id} (every device sends all it holds at its next sync); erasure ledger: {} records, {} purged again",
        replayed.records, replayed.purged_again
    );
    Ok(())
}
