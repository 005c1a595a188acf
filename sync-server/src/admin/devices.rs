//! Devices: enrolment codes, the list of enrolled devices, revocation.

use chrono::{DateTime, Duration, Utc};

use super::{ADMINISTRATOR, AdminError, Result};
use crate::storage::{Device, DeviceId, Storage, Team};

/// The longest team or worker name a code is made for.
pub const MAX_NAME: usize = 100;

/// The longest an enrolment code may stay valid, in hours (30 days).
pub const MAX_CODE_HOURS: i64 = 24 * 30;

/// A one-time enrolment code made for a worker's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// `XXXX-XXXX-XXXX`, shown once (only its hash is stored).
    pub code: String,
    pub team: Team,
    pub worker: String,
    pub expires_at: DateTime<Utc>,
}

/// Makes a one-time enrolment code for `worker` of `team`, valid for
/// `expires_hours` (1 to [`MAX_CODE_HOURS`]).
pub async fn enrol(
    storage: &dyn Storage,
    team: &str,
    worker: &str,
    expires_hours: i64,
    now: DateTime<Utc>,
) -> Result<Enrolment> {
    if !(1..=MAX_CODE_HOURS).contains(&expires_hours) {
        return Err(AdminError::InvalidInput {
            field: "expires_hours",
            reason: format!("must be 1 to {MAX_CODE_HOURS}"),
        });
    }
    for (field, value) in [("team", team), ("worker", worker)] {
        if value.trim().is_empty() {
            return Err(AdminError::InvalidInput {
                field,
                reason: "must not be empty".into(),
            });
        }
        if value.trim().chars().count() > MAX_NAME || value.chars().any(char::is_control) {
            return Err(AdminError::InvalidInput {
                field,
                reason: format!(
                    "must be at most {MAX_NAME} characters, without control characters"
                ),
            });
        }
    }
    let valid_for = Duration::hours(expires_hours);
    let code = crate::auth::new_enrolment_code(storage, team, worker, valid_for, now).await?;
    Ok(Enrolment {
        code,
        team: Team::from(team.trim()),
        worker: worker.trim().to_string(),
        expires_at: now + valid_for,
    })
}

/// What the enrolment QR code holds: the code and, if known, the relay's
/// address as devices reach it.
pub fn enrolment_link(code: &str, server: Option<&str>) -> String {
    match server {
        Some(s) => format!("linkbook://enrol?code={code}&server={s}"),
        None => format!("linkbook://enrol?code={code}"),
    }
}

/// Every enrolled device (revoked ones too).
pub async fn list_devices(storage: &dyn Storage) -> Result<Vec<Device>> {
    Ok(storage.devices().await?)
}

/// Revokes a device (its next connection is refused and told to wipe),
/// audited once as the office administrator's; revoking it again changes
/// nothing.
pub async fn revoke_device(storage: &dyn Storage, id: &str, now: DateTime<Utc>) -> Result<()> {
    revoke_device_by(storage, id, ADMINISTRATOR, now).await
}

/// [`revoke_device`], audited as `by`'s (a console account).
pub async fn revoke_device_by(
    storage: &dyn Storage,
    id: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if !storage
        .revoke_device(&DeviceId::from(id), Some(by), now)
        .await?
    {
        return Err(AdminError::NotFound {
            what: "device",
            id: id.to_string(),
            team: None,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::super::test_support::Relay;
    use super::*;

    #[tokio::test]
    async fn a_code_enrols_one_device_which_can_be_revoked_once() {
        let relay = Relay::new();
        let s = relay.storage();
        let now = Utc::now();
        let e = enrol(s, " north ", "Asha", 2, now).await.expect("enrol");
        assert_eq!((e.team.as_str(), e.worker.as_str()), ("north", "Asha"));
        assert_eq!(e.expires_at, now + Duration::hours(2));
        assert_eq!(e.code.len(), 14);
        let device = crate::auth::enrol(s, &e.code, "tablet", now)
            .await
            .expect("redeem")
            .device_id;
        let listed = list_devices(s).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].team, "north");
        assert!(listed[0].revoked_at.is_none());
        revoke_device(s, &device, now).await.expect("revoke");
        revoke_device(s, &device, now)
            .await
            .expect("revoking again is no error");
        assert!(list_devices(s).await.expect("list")[0].revoked_at.is_some());
        let revoked = s
            .audit_log(None, Some(&DeviceId::from(&device)), None)
            .await
            .expect("audit")
            .into_iter()
            .filter(|a| a.action == "revoked")
            .count();
        assert_eq!(revoked, 1, "audited once");
        assert!(matches!(
            revoke_device(s, "no-such-device", now).await,
            Err(AdminError::NotFound { what: "device", .. })
        ));
    }

    #[tokio::test]
    async fn bad_enrolment_arguments_are_refused_by_field() {
        let relay = Relay::new();
        let s = relay.storage();
        for (team, worker, hours, field) in [
            ("north", "Asha", 0, "expires_hours"),
            ("north", "Asha", MAX_CODE_HOURS + 1, "expires_hours"),
            ("  ", "Asha", 1, "team"),
            ("north", "", 1, "worker"),
        ] {
            match enrol(s, team, worker, hours, Utc::now()).await {
                Err(AdminError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            enrol(s, "north", "Asha", MAX_CODE_HOURS, Utc::now())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_link_carries_the_server_when_known() {
        assert_eq!(enrolment_link("A-B-C", None), "linkbook://enrol?code=A-B-C");
        assert_eq!(
            enrolment_link("A-B-C", Some("https://r:8443")),
            "linkbook://enrol?code=A-B-C&server=https://r:8443"
        );
    }
}
