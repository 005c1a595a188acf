//! The devices' logs of case-file reads (`POST /v1/audit`), made
//! trustworthy (issue 11, finding 7): a device records reads only of its
//! own team's families; a claimed time is clamped to what the relay can
//! vouch for (not after its receipt, not before the device's enrolment),
//! the receipt time stored beside it; and a device may upload only so many
//! reads a day, so the append-only table cannot be flooded.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::storage::{Device, Storage};

/// Reads one upload may carry (the device sends 100 at a time).
pub const MAX_READS_PER_UPLOAD: usize = 500;
/// Reads one device may upload per UTC day: a worker opening a case file
/// every 10 s for 8 hours logs ~2,900.
pub const MAX_READS_PER_DAY: i64 = 10_000;

/// Devices whose quota refusal was audited today: once per device and day.
static QUOTA_AUDITED: Mutex<Option<HashMap<String, chrono::NaiveDate>>> = Mutex::new(None);

/// Stores the reads of `device` that it may log; returns (stored, refused).
pub(crate) fn record(
    storage: &dyn Storage,
    device: &Device,
    reads: Vec<(String, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Result<(usize, usize)> {
    if reads.len() > MAX_READS_PER_UPLOAD {
        return Err(Error::BadRequest(format!(
            "at most {MAX_READS_PER_UPLOAD} reads per upload; send the rest in another"
        )));
    }
    let day_start = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or(now);
    let used = storage.reads_received_since(&device.id, &day_start.to_rfc3339())?;
    if used + reads.len() as i64 > MAX_READS_PER_DAY {
        let first_today = {
            let mut audited = QUOTA_AUDITED.lock().unwrap_or_else(|p| p.into_inner());
            let map = audited.get_or_insert_with(HashMap::new);
            map.insert(device.id.clone(), now.date_naive()) != Some(now.date_naive())
        };
        if first_today {
            tracing::warn!(device = %device.id, used, "read log quota reached: uploads refused until tomorrow");
            storage.audit(Some(device), "read-quota-exceeded", None, now)?;
        }
        return Err(Error::AuditQuota);
    }
    let enrolled = DateTime::parse_from_rfc3339(&device.enrolled_at)
        .map(|t| t.with_timezone(&Utc))
        .ok();
    let mut kept = Vec::with_capacity(reads.len());
    let mut refused = 0;
    for (family, at) in reads {
        // Another team's family and a never-stored id alike: not recorded.
        if !storage.document_exists(&device.team, &family)? {
            refused += 1;
            continue;
        }
        let at = at.min(now);
        let at = enrolled.map_or(at, |e| at.max(e));
        kept.push((family, at.to_rfc3339()));
    }
    if refused > 0 {
        tracing::warn!(device = %device.id, refused, "read log names families not of the device's team");
    }
    storage.record_reads_received(device, &kept, &now.to_rfc3339())?;
    Ok((kept.len(), refused))
}
