//! Linkbook's core for the Android and iOS apps, through uniffi.
//!
//! A thin layer: one [`Repo`] object over `linkbook_core::Repo`, plain
//! records mirrored from core, one error enum ([`LinkbookError`]) and a
//! progress listener. No logic of its own.
//!
//! **Blocking, called off the main thread** (docs/adr/0004): every method
//! does its work before it returns, a store write has committed to SQLite
//! when it returns, and `sync`/`enrol` block for the network. Apps call them
//! from a worker thread (Kotlin: `withContext(Dispatchers.IO)`; Swift: a
//! background `Task` or queue). The object is thread-safe; calls from several
//! threads are serialised on the store's single writer.
//!
//! Dates cross as ISO-8601 strings: calendar dates `YYYY-MM-DD`, instants RFC
//! 3339 UTC (`2026-11-23T09:30:00.123Z`).

mod error;
mod records;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use linkbook_core as core;

pub use error::LinkbookError;
use error::{Result, invalid};
pub use records::*;

uniffi::setup_scaffolding!();

/// A fresh random 256-bit database key. The app stores it in the Android
/// Keystore / iOS Keychain (wrapped by a key that never leaves the secure
/// hardware) and passes it to [`Repo::new`] on every start.
#[uniffi::export]
pub fn generate_database_key() -> Vec<u8> {
    core::DatabaseKey::generate().to_bytes().to_vec()
}

/// Told about progress while `sync` runs, on the syncing thread (not the
/// main thread): post to the UI from there.
#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    fn on_progress(&self, progress: SyncProgress);
}

/// Adapts the app's listener to core's. A listener that throws (or panics)
/// only loses its own progress reports: the sync carries on.
struct Listener(Arc<dyn SyncListener>);

impl core::SyncListener for Listener {
    fn progress(&self, progress: &core::SyncProgress) {
        let progress = SyncProgress::from(progress);
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.on_progress(progress)));
    }
}

/// One device's Linkbook store: families, case notes, family days, and the
/// sync with the office relay. Open it once per app process and share it.
///
/// Kotlin: `Repo(path, key).use { ... }` (or `close()` when the app stops
/// using it); Python: `del repo`. Closing releases the database file after
/// any call still running on another thread returns.
#[derive(Debug, uniffi::Object)]
pub struct Repo {
    inner: core::Repo,
}

fn key_of(key: &[u8]) -> Result<core::DatabaseKey> {
    let bytes = <[u8; 32]>::try_from(key).map_err(|_| {
        invalid(
            "database key",
            format!("expected 32 bytes (256 bits), got {}", key.len()),
        )
    })?;
    Ok(core::DatabaseKey::from_bytes(bytes))
}

#[uniffi::export]
impl Repo {
    /// Opens the device store at `path` (creating it, and this device's
    /// identity, if it does not exist) with its 32-byte database key.
    #[uniffi::constructor]
    pub fn new(path: String, key: Vec<u8>) -> Result<Arc<Self>> {
        if path.trim().is_empty() {
            return Err(invalid("path", "must not be empty"));
        }
        let key = key_of(&key)?;
        let inner = core::Repo::open(&path, &key)?;
        Ok(Arc::new(Repo { inner }))
    }

    /// Who this device is (its id, team and worker).
    pub fn profile(&self) -> DeviceProfile {
        self.inner.profile().into()
    }

    /// Sets the worker's name recorded as the author of what this device
    /// writes (enrolment sets it from the office's records).
    pub fn set_worker(&self, worker: String) -> Result<()> {
        Ok(self.inner.set_worker(&worker)?)
    }

    // ----- families -----

    /// Creates a family case file; returns its id.
    #[uniffi::method(default(address = None, key_worker = None))]
    pub fn add_family(
        &self,
        name: String,
        address: Option<String>,
        key_worker: Option<String>,
    ) -> Result<String> {
        let id = self.inner.add_family(&core::NewFamily {
            name,
            address,
            key_worker,
        })?;
        Ok(id.to_string())
    }

    pub fn update_family(&self, family_id: String, update: FamilyUpdate) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.update_family(
            id,
            &core::FamilyUpdate {
                name: update.name,
                address: update.address,
                key_worker: update.key_worker,
            },
        )?)
    }

    /// The caseload, from the projection (no case file is loaded).
    pub fn families(&self) -> Result<Vec<FamilySummary>> {
        Ok(self.inner.families()?.into_iter().map(Into::into).collect())
    }

    /// A whole case file.
    pub fn family(&self, family_id: String) -> Result<Family> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.family(id)?.into())
    }

    /// Adds a household member; returns the member id.
    pub fn add_member(&self, family_id: String, member: NewMember) -> Result<String> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.add_member(id, &member.try_into()?)?)
    }

    pub fn update_member(
        &self,
        family_id: String,
        member_id: String,
        update: MemberUpdate,
    ) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self
            .inner
            .update_member(id, &member_id, &update.try_into()?)?)
    }

    pub fn remove_member(&self, family_id: String, member_id: String) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.remove_member(id, &member_id)?)
    }

    /// Links a prisoner to the family; returns the prisoner's id.
    pub fn link_prisoner(&self, family_id: String, prisoner: NewPrisoner) -> Result<String> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.link_prisoner(id, &prisoner.try_into()?)?)
    }

    pub fn record_consent(&self, family_id: String, consent: Consent) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.record_consent(id, &consent.try_into()?)?)
    }

    /// Raises a safeguarding flag; returns its id.
    pub fn raise_safeguarding_flag(&self, family_id: String, text: String) -> Result<String> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.raise_safeguarding_flag(id, &text)?)
    }

    pub fn clear_safeguarding_flag(&self, family_id: String, flag_id: String) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.clear_safeguarding_flag(id, &flag_id)?)
    }

    /// Adds a referral or signposting; returns its id.
    pub fn add_referral(&self, family_id: String, referral: NewReferral) -> Result<String> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.add_referral(id, &referral.try_into()?)?)
    }

    pub fn set_referral_outcome(
        &self,
        family_id: String,
        referral_id: String,
        outcome: String,
    ) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self
            .inner
            .set_referral_outcome(id, &referral_id, &outcome)?)
    }

    /// Closes the case on `date` (`YYYY-MM-DD`) for `reason`.
    pub fn close_family(&self, family_id: String, date: String, reason: String) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        let date = records::parse_date("closure date", &date)?;
        Ok(self.inner.close_family(id, date, &reason)?)
    }

    pub fn reopen_family(&self, family_id: String) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.reopen_family(id)?)
    }

    // ----- case notes -----

    /// Adds a case note; when this returns the note is committed to disk.
    /// Returns the note id.
    pub fn add_note(
        &self,
        family_id: String,
        text: String,
        category: NoteCategory,
    ) -> Result<String> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.add_note(id, &text, category.into())?)
    }

    /// Replaces a note's text; the old text stays in its `history`.
    pub fn edit_note(&self, family_id: String, note_id: String, text: String) -> Result<()> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.edit_note(id, &note_id, &text)?)
    }

    /// A family's notes, oldest first.
    pub fn notes(&self, family_id: String) -> Result<Vec<CaseNote>> {
        let id = records::parse_id("family id", &family_id)?;
        Ok(self.inner.notes(id)?.into_iter().map(Into::into).collect())
    }

    /// Full-text search over every note on the device (best first, at most
    /// 100); all words must match, `word*` matches a prefix.
    pub fn search(&self, query: String) -> Result<Vec<NoteHit>> {
        Ok(self
            .inner
            .search(&query)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    // ----- family days -----

    /// Creates a family day at `prison` on `date` (`YYYY-MM-DD`); returns its id.
    #[uniffi::method(default(capacity = None))]
    pub fn create_family_day(
        &self,
        prison: String,
        date: String,
        capacity: Option<u32>,
    ) -> Result<String> {
        let date = records::parse_date("family day date", &date)?;
        let id = self.inner.create_family_day(&core::NewFamilyDay {
            prison,
            date,
            capacity,
        })?;
        Ok(id.to_string())
    }

    pub fn family_days(&self) -> Result<Vec<FamilyDaySummary>> {
        Ok(self
            .inner
            .family_days()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub fn family_day(&self, day_id: String) -> Result<FamilyDay> {
        let id = records::parse_id("family day id", &day_id)?;
        Ok(self.inner.family_day(id)?.into())
    }

    /// Books a family onto a family day.
    pub fn book(
        &self,
        day_id: String,
        family_id: String,
        adults: u32,
        children: u32,
    ) -> Result<()> {
        let day = records::parse_id("family day id", &day_id)?;
        let family = records::parse_id("family id", &family_id)?;
        Ok(self.inner.book(day, family, adults, children)?)
    }

    /// Checks a family in (again: corrects the head count); returns the
    /// family's attendance as it now stands on this device.
    pub fn check_in(
        &self,
        day_id: String,
        family_id: String,
        adults: u32,
        children: u32,
    ) -> Result<Attendance> {
        let day = records::parse_id("family day id", &day_id)?;
        let family = records::parse_id("family id", &family_id)?;
        Ok(self.inner.check_in(day, family, adults, children)?.into())
    }

    /// Who attended a family day, one record per family.
    pub fn attendance(&self, day_id: String) -> Result<Vec<Attendance>> {
        let id = records::parse_id("family day id", &day_id)?;
        Ok(self
            .inner
            .family_day(id)?
            .attendance
            .into_iter()
            .map(Into::into)
            .collect())
    }

    // ----- conflicts -----

    /// Every field written concurrently on different devices, with all values.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        Ok(self
            .inner
            .conflicts()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Settles a conflict: writes `value_json` (one of the conflict's
    /// `valueJson`s, or any other JSON value) at `path`.
    pub fn resolve_conflict(
        &self,
        document_id: String,
        path: String,
        value_json: String,
    ) -> Result<()> {
        let id = records::parse_id("document id", &document_id)?;
        let value = records::parse_json("value", &value_json)?;
        Ok(self.inner.resolve_conflict(id, &path, &value)?)
    }

    // ----- enrolment and sync -----

    /// Exchanges a one-time enrolment code from the office for this device's
    /// credentials. `ca_pem` pins the office's own CA (or the relay's
    /// development certificate) beside the platform's roots.
    #[uniffi::method(default(device_name = "Linkbook app"))]
    pub fn enrol(
        &self,
        server_url: String,
        code: String,
        ca_pem: Option<String>,
        device_name: String,
    ) -> Result<Enrolment> {
        Ok(self
            .inner
            .enrol(&server_url, &code, ca_pem.as_deref(), &device_name)?
            .into())
    }

    /// The relay this device is enrolled with, if any.
    pub fn enrolment(&self) -> Result<Option<Enrolment>> {
        Ok(self.inner.enrolment()?.map(Into::into))
    }

    /// Syncs with the relay until both sides hold the same documents, telling
    /// `listener` about progress. Blocks: call it off the main thread. A
    /// broken connection keeps everything received so far.
    #[uniffi::method(default(listener = None))]
    pub fn sync(&self, listener: Option<Arc<dyn SyncListener>>) -> Result<SyncSummary> {
        let listener = listener.map(Listener);
        let summary = self
            .inner
            .sync(listener.as_ref().map(|l| l as &dyn core::SyncListener))?;
        Ok(summary.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> Arc<Repo> {
        Repo::new(
            dir.path().join("device.db").display().to_string(),
            vec![7; 32],
        )
        .expect("open")
    }

    #[test]
    fn keys_are_32_random_bytes() {
        let (a, b) = (generate_database_key(), generate_database_key());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn a_short_key_is_invalid_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Repo::new(dir.path().join("x.db").display().to_string(), vec![1; 16])
            .expect_err("short key");
        assert!(
            matches!(&err, LinkbookError::InvalidInput { field, .. } if field == "database key"),
            "{err:?}"
        );
    }

    #[test]
    fn records_cross_with_iso_dates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = open(&dir);
        let family = repo.add_family("Smith".into(), None, None).expect("family");
        repo.add_member(
            family.clone(),
            NewMember {
                name: "Jo".into(),
                role: MemberRole::Child,
                relationship: Some("daughter".into()),
                date_of_birth: Some("2015-04-01".into()),
                school: None,
                looked_after: false,
                social_worker: None,
            },
        )
        .expect("member");
        let f = repo.family(family.clone()).expect("family");
        assert_eq!(f.members[0].date_of_birth.as_deref(), Some("2015-04-01"));
        assert!(f.created_at.ends_with('Z'), "{}", f.created_at);
        let err = repo
            .add_member(
                family,
                NewMember {
                    name: "Al".into(),
                    role: MemberRole::Adult,
                    relationship: None,
                    date_of_birth: Some("01/04/2015".into()),
                    school: None,
                    looked_after: false,
                    social_worker: None,
                },
            )
            .expect_err("bad date");
        assert!(matches!(err, LinkbookError::InvalidInput { .. }), "{err:?}");
    }

    #[test]
    fn a_throwing_listener_does_not_stop_anything() {
        struct Panics;
        impl SyncListener for Panics {
            fn on_progress(&self, _: SyncProgress) {
                panic!("listener bug");
            }
        }
        let l = Listener(Arc::new(Panics));
        core::SyncListener::progress(&l, &core::SyncProgress::default());
    }
}
