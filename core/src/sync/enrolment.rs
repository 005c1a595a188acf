//! Enrolling with the relay (`POST /v1/enrol`) and mapping its HTTP
//! refusals to the errors the app acts on.

use super::*;
use crate::model::validate;

/// A device's credentials from the relay; `token` is shown only this once.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    pub device_id: String,
    pub token: String,
    pub team: String,
    pub worker: String,
    /// The team directory's id, chosen at random by the relay.
    pub directory_id: Option<DocumentId>,
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("device_id", &self.device_id)
            .field("team", &self.team)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// Enrols a device with the relay (`POST /v1/enrol`) without storing
/// anything: [`Repo::enrol`] uses it; so can a peer that is not a Linkbook
/// store (an automerge-repo client needs a token too).
pub fn enrol_device(
    server_url: &str,
    code: &str,
    ca_pem: Option<&str>,
    device_name: &str,
) -> Result<DeviceCredentials> {
    let endpoint = Endpoint::parse(server_url)?;
    let code = validate::required_text("enrolment code", code, 64)?;
    let device_name = validate::required_text("device name", device_name, 200)?;
    let (status, body) = net::post_json(
        &endpoint,
        ca_pem,
        "/v1/enrol",
        &serde_json::to_value(dto::EnrolRequest { code, device_name })
            .map_err(|e| Error::Network(format!("encoding the enrolment: {e}")))?,
    )?;
    if status != 200 {
        let why = body["message"]
            .as_str()
            .unwrap_or("enrolment refused")
            .to_string();
        return Err(match status {
            400..=499 => Error::Unauthorized(why),
            _ => Error::Network(format!("the relay answered {status}: {why}")),
        });
    }
    let enrolled: dto::Enrolled =
        serde_json::from_value(body).map_err(|e| network("relay answer", e.to_string()))?;
    Ok(DeviceCredentials {
        device_id: enrolled.device_id,
        token: enrolled.token,
        team: enrolled.team,
        worker: enrolled.worker,
        directory_id: Some(DocumentId::parse(&enrolled.directory_id, "directory id")?),
    })
}

/// Maps the relay's HTTP refusal to the error the app acts on.
pub(super) fn refused(status: u16, body: Option<&[u8]>) -> Error {
    let json: serde_json::Value = body
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    match (status, json["error"].as_str()) {
        (403, Some("revoked")) => Error::Revoked,
        (401, _) => Error::Unauthorized("the relay does not accept this device's token".into()),
        // Too many connections of this device, or too many failed
        // authentications from this address: the relay says which, and when.
        (429, _) => Error::Network(
            json["message"]
                .as_str()
                .map_or("the relay is busy; try again shortly".into(), |m| {
                    format!("the relay refused the sync connection: {m}")
                }),
        ),
        _ => Error::Network(format!("the relay refused the sync connection ({status})")),
    }
}
