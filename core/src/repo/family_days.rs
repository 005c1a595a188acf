//! Family days at a prison: bookings and check-ins.

use super::*;

impl Repo {
    pub fn create_family_day(&self, new: &NewFamilyDay) -> Result<DocumentId> {
        self.check_lease()?;
        let dir = self.directory_id();
        self.write(|txn| {
            let id = DocumentId::random();
            let author = txn.author.clone();
            let doc = txn.create(id, DocumentType::FamilyDay, AutoCommit::new())?;
            family_day::create(doc, new, &author)?;
            let day = family_day::read(doc, id);
            directory::put_family_day(
                txn.doc_of(dir, DocumentType::TeamDirectory, "team directory")?,
                &day,
            )?;
            Ok(id)
        })
    }

    pub(super) fn day_write(
        &self,
        day_id: DocumentId,
        family_id: DocumentId,
        f: impl FnOnce(&mut AutoCommit, &Author) -> Result<()>,
    ) -> Result<()> {
        self.check_lease()?;
        self.write(|txn| {
            if txn.kind_of(family_id)? != Some(DocumentType::Family) {
                return Err(Error::not_found("family", family_id));
            }
            let author = txn.author.clone();
            f(
                txn.doc_of(day_id, DocumentType::FamilyDay, "family day")?,
                &author,
            )
        })
    }

    pub fn book(
        &self,
        day_id: DocumentId,
        family_id: DocumentId,
        adults: u32,
        children: u32,
    ) -> Result<()> {
        self.day_write(day_id, family_id, |doc, by| {
            family_day::book(doc, family_id, adults, children, by)
        })
    }

    /// Checks a family in at a family day (again: corrects the head count).
    pub fn check_in(
        &self,
        day_id: DocumentId,
        family_id: DocumentId,
        adults: u32,
        children: u32,
    ) -> Result<Attendance> {
        self.day_write(day_id, family_id, |doc, by| {
            family_day::check_in(doc, family_id, adults, children, by)
        })?;
        self.family_day(day_id)?
            .attendance
            .into_iter()
            .find(|a| a.family_id == family_id)
            .ok_or_else(|| Error::not_found("attendance", family_id))
    }

    pub fn family_day(&self, id: DocumentId) -> Result<FamilyDay> {
        self.check_lease()?;
        self.read(id, DocumentType::FamilyDay, "family day", |doc| {
            family_day::read(doc, id)
        })
    }

    pub fn family_days(&self) -> Result<Vec<FamilyDaySummary>> {
        self.check_lease()?;
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT id, prison, date, capacity, families, adults, children FROM family_days ORDER BY date, prison, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<u32>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, u32>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, prison, date, capacity, families, adults, children) = row?;
            out.push(FamilyDaySummary {
                id: DocumentId::parse(&id, "family day id")?,
                prison,
                date: date.parse().unwrap_or_default(),
                capacity,
                families_attended: families,
                adults,
                children,
            });
        }
        Ok(out)
    }
}
