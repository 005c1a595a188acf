//! The devices' logs of case-file reads (`POST /v1/audit`), made
//! trustworthy (issue 11, finding 7): a device records reads only of its
//! own team's families; a claimed time is clamped to what the relay can
//! vouch for (see [`record`]), the receipt time stored beside it; and a
//! device may upload only so many reads per upload and per day
//! ([`AuditQuotas`], `--audit-rows-per-upload`, `--audit-rows-per-day`), so
//! the append-only table cannot be flooded.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::storage::{AuditAction, Device, Storage};

/// How many read rows a device may upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuotas {
    /// Reads one upload may carry (the device sends 100 at a time, fewer
    /// when the relay's refusal states a smaller `max_reads`).
    pub rows_per_upload: usize,
    /// Reads one device may upload per UTC day.
    pub rows_per_day: u64,
}

impl Default for AuditQuotas {
    fn default() -> Self {
        AuditQuotas {
            rows_per_upload: 500,
            // A worker opening a case file every 10 s for 8 hours logs ~2,900.
            rows_per_day: 10_000,
        }
    }
}

/// The relay records a sync's end when it has closed the connection, which
/// may come after the device's first uploads that follow it (the device does
/// not wait): uploads this close before `last_sync_at` may belong to the
/// current run of uploads, so they do not bound its claims (else a good
/// device's second upload of a run would be moved to the first one's
/// receipt).
const SYNC_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// Devices whose quota refusal was audited today: once per device and day.
static QUOTA_AUDITED: Mutex<Option<HashMap<String, chrono::NaiveDate>>> = Mutex::new(None);

/// Stores the reads of `device` that it may log; returns (stored, refused).
///
/// A claimed time is clamped to what the relay can vouch for: not after
/// its receipt (`now`), and not before the latest of
/// - the device's enrolment;
/// - the receipt of the device's last upload more than [`SYNC_GRACE`]
///   before the end of its last sync session (`last_sync_at`): a device
///   uploads every read it logged after each sync, so a read uploaded now
///   was logged after the uploads that followed an earlier sync (a read
///   logged while such an upload was on the wire moves later by the
///   request's duration; reads refused by the day quota and uploaded the
///   next day, by up to a day);
/// - the device's latest recorded read: a device uploads its log in the
///   order it wrote it, so its reads only go forward (within one upload
///   too).
///
/// So a stolen device cannot backdate reads to before its last sync.
pub(crate) async fn record(
    storage: &dyn Storage,
    device: &Device,
    reads: Vec<(String, DateTime<Utc>)>,
    now: DateTime<Utc>,
    quotas: &AuditQuotas,
) -> Result<(usize, usize)> {
    if reads.len() > quotas.rows_per_upload {
        return Err(Error::TooManyReads {
            max: quotas.rows_per_upload,
        });
    }
    let day_start = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or(now);
    let used = storage
        .reads_received_since(&device.id, &day_start.to_rfc3339())
        .await?;
    if u64::try_from(used).unwrap_or(0) + reads.len() as u64 > quotas.rows_per_day {
        let first_today = {
            let mut audited = QUOTA_AUDITED.lock().unwrap_or_else(|p| p.into_inner());
            let map = audited.get_or_insert_with(HashMap::new);
            map.insert(device.id.to_string(), now.date_naive()) != Some(now.date_naive())
        };
        if first_today {
            tracing::warn!(device = %device.id, used, "read log quota reached: uploads refused until tomorrow");
            storage
                .audit(Some(device), AuditAction::ReadQuotaExceeded, None, now)
                .await?;
        }
        return Err(Error::AuditQuota);
    }
    let parse = |t: &str| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .ok()
    };
    let synced = device
        .last_sync_at
        .as_deref()
        .and_then(parse)
        .map(|t| (t - SYNC_GRACE).to_rfc3339());
    let marks = storage.read_marks(&device.id, synced.as_deref()).await?;
    let mut floor = [
        parse(&device.enrolled_at),
        marks.received_before_sync.as_deref().and_then(parse),
        marks.latest_at.as_deref().and_then(parse),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(DateTime::<Utc>::MIN_UTC)
    .min(now);
    let mut kept = Vec::with_capacity(reads.len());
    let mut refused = 0;
    for (family, at) in reads {
        // Another team's family and a never-stored id alike: not recorded.
        let stored = match linkbook_core::DocumentId::parse(&family, "family id") {
            Ok(id) => storage.document_exists(&device.team, id).await?,
            Err(_) => false,
        };
        if !stored {
            refused += 1;
            continue;
        }
        let at = at.clamp(floor, now);
        floor = at;
        kept.push((family, at.to_rfc3339()));
    }
    if refused > 0 {
        tracing::warn!(device = %device.id, refused, "read log names families not of the device's team");
    }
    storage
        .record_reads(device, &kept, Some(&now.to_rfc3339()))
        .await?;
    Ok((kept.len(), refused))
}
