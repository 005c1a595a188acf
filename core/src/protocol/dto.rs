//! The JSON bodies of the relay's HTTP endpoints, typed once and shared by
//! the relay (which serves them) and the device (which reads them), so a
//! field renamed on one side fails to compile on the other instead of
//! turning into a silently missing value.
//!
//! - `POST /v1/enrol`: [`EnrolRequest`] → [`Enrolled`]
//! - `POST /v1/audit`: [`ReadLog`] → [`AuditStored`] (or a 413 naming `max_reads`)
//! - `GET /v1/changes?since=N`: [`Changes`]

use serde::{Deserialize, Serialize};

/// `POST /v1/enrol`: the one-time code the office gave and the device's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub code: String,
    pub device_name: String,
}

/// What a device receives when it enrols: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub device_id: String,
    pub token: String,
    pub team: String,
    pub worker: String,
    /// The team directory's document id.
    pub directory_id: String,
}

/// `POST /v1/audit`: a device's log of case-file reads (ids and times only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLog {
    pub reads: Vec<Read>,
}

/// One logged read of a family's case file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub family_id: String,
    /// RFC 3339.
    pub at: String,
}

/// The relay's answer to a read log: how many it stored and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStored {
    pub stored: usize,
    pub refused: usize,
}

/// `GET /v1/changes?since=CURSOR`: the team's documents changed since the
/// cursor, every document the office purged (with when) and the team's
/// policy. The same facts travel in the sync protocol's `changed-since`
/// message (`Message::ChangedSince`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// The cursor to ask with next time.
    pub cursor: i64,
    // Only the cursor is required of an answer, as before these types: a
    // relay that leaves out the rest still has its purges applied.
    #[serde(default)]
    pub documents: Vec<String>,
    #[serde(default)]
    pub purged: Vec<Purged>,
    #[serde(default)]
    pub policy: Policy,
}

/// A document the office purged, and when (RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub id: String,
    /// Empty if the relay sent none: the device then uses its own clock.
    #[serde(default)]
    pub purged_at: String,
}

/// A team's policy, in days; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Closed cases are purged this many days after their closure date.
    pub retention_days: Option<i64>,
    /// A device unsynced for longer than this locks its records.
    pub lease_days: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format is what old devices and relays read: a golden test,
    /// so a rename shows up in review.
    #[test]
    fn changes_keep_their_json_shape() -> serde_json::Result<()> {
        let changes = Changes {
            cursor: 7,
            documents: vec!["d1".into()],
            purged: vec![Purged {
                id: "d2".into(),
                purged_at: "2026-01-02T03:04:05+00:00".into(),
            }],
            policy: Policy {
                retention_days: Some(365),
                lease_days: None,
            },
        };
        let json = serde_json::to_string(&changes)?;
        assert_eq!(
            json,
            r#"{"cursor":7,"documents":["d1"],"purged":[{"id":"d2","purged_at":"2026-01-02T03:04:05+00:00"}],"policy":{"retention_days":365,"lease_days":null}}"#
        );
        assert_eq!(serde_json::from_str::<Changes>(&json)?, changes);
        // A purge without its time is still a purge.
        let sparse: Changes = serde_json::from_str(r#"{"cursor":3,"purged":[{"id":"d2"}]}"#)?;
        assert_eq!(sparse.purged[0].id, "d2");
        assert_eq!(sparse.purged[0].purged_at, "");
        assert!(sparse.documents.is_empty());
        Ok(())
    }

    #[test]
    fn enrolment_and_audit_keep_their_json_shape() -> serde_json::Result<()> {
        let req = EnrolRequest {
            code: "ABCD-EFGH-JKLM".into(),
            device_name: "tablet 3".into(),
        };
        assert_eq!(
            serde_json::to_string(&req)?,
            r#"{"code":"ABCD-EFGH-JKLM","device_name":"tablet 3"}"#
        );
        let log: ReadLog = serde_json::from_str(r#"{"reads":[{"family_id":"f","at":"t"}]}"#)?;
        assert_eq!(log.reads[0].family_id, "f");
        assert_eq!(
            serde_json::to_string(&AuditStored {
                stored: 2,
                refused: 1
            })?,
            r#"{"stored":2,"refused":1}"#
        );
        Ok(())
    }
}
