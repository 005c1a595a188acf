//! The family day: one event at a prison, written by several tablets at once.
//!
//! Bookings and attendance are flat maps of scalars keyed `<family id>.<field>`
//! (and `<family id>.by.<device id>` for who checked a family in) rather than a
//! map object per family: two tablets checking in the same family offline would
//! each create their own object under the same key, and Automerge would keep
//! one and hide the other. With scalars the two check-ins merge into one
//! record: the earliest arrival wins, every device is listed, and differing
//! head counts are kept as a conflict for a worker to settle.
//! ```text
//! { type: "family_day", schema_version, team, prison, date, capacity,
//!   bookings:   { "<fid>.adults", "<fid>.children", "<fid>.booked_at", "<fid>.booked_by" },
//!   attendance: { "<fid>.adults", "<fid>.children", "<fid>.arrived_at", "<fid>.by.<device>": time } }
//! ```

use std::collections::BTreeMap;

use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, Value, transaction::Transactable};
use chrono::{DateTime, NaiveDate, Utc};

use super::am::{ensure_map, get_map, get_str, get_u64, keys, scalar_u64, write_header};
use super::validate::{MAX_NAME, required_text};
use super::*;
use crate::error::{Error, Result};
use crate::ids::DocumentId;

/// Most people one family brings to a family day; more is a typing mistake.
pub(crate) const MAX_PEOPLE: u32 = 30;

pub(crate) fn create(doc: &mut AutoCommit, new: &NewFamilyDay, by: &Author) -> Result<()> {
    let prison = required_text("prison", &new.prison, MAX_NAME)?;
    if new.capacity == Some(0) {
        return Err(Error::invalid(
            "capacity",
            "capacity must be at least 1 family",
        ));
    }
    write_header(doc, DocumentType::FamilyDay)?;
    doc.put(ROOT, "team", by.team.as_str())?;
    doc.put(ROOT, "prison", prison)?;
    doc.put(ROOT, "date", new.date.to_string())?;
    if let Some(c) = new.capacity {
        doc.put(ROOT, "capacity", i64::from(c))?;
    }
    doc.put(ROOT, "created_by", by.worker.as_str())?;
    doc.put_object(ROOT, "bookings", ObjType::Map)?;
    doc.put_object(ROOT, "attendance", ObjType::Map)?;
    Ok(())
}

fn check_counts(adults: u32, children: u32) -> Result<()> {
    if adults == 0 && children == 0 {
        return Err(Error::invalid(
            "attendance",
            "a family brings at least one person",
        ));
    }
    if adults > MAX_PEOPLE || children > MAX_PEOPLE {
        return Err(Error::invalid(
            "attendance",
            format!("more than {MAX_PEOPLE} adults or children for one family"),
        ));
    }
    Ok(())
}

pub(crate) fn book(
    doc: &mut AutoCommit,
    family: DocumentId,
    adults: u32,
    children: u32,
    by: &Author,
) -> Result<()> {
    check_counts(adults, children)?;
    let bookings = ensure_map(doc, &ROOT, "bookings")?;
    let f = family.to_string();
    doc.put(&bookings, format!("{f}.adults"), i64::from(adults))?;
    doc.put(&bookings, format!("{f}.children"), i64::from(children))?;
    doc.put(&bookings, format!("{f}.booked_at"), by.now.to_rfc3339())?;
    doc.put(&bookings, format!("{f}.booked_by"), by.worker.as_str())?;
    Ok(())
}

/// Checks a family in (or corrects the head count of one already in).
pub(crate) fn check_in(
    doc: &mut AutoCommit,
    family: DocumentId,
    adults: u32,
    children: u32,
    by: &Author,
) -> Result<()> {
    check_counts(adults, children)?;
    let att = ensure_map(doc, &ROOT, "attendance")?;
    let f = family.to_string();
    doc.put(&att, format!("{f}.adults"), i64::from(adults))?;
    doc.put(&att, format!("{f}.children"), i64::from(children))?;
    let arrived = format!("{f}.arrived_at");
    if doc.get(&att, arrived.as_str())?.is_none() {
        doc.put(&att, arrived, by.now.to_rfc3339())?;
    }
    doc.put(
        &att,
        format!("{f}.by.{}", by.device_id),
        by.now.to_rfc3339(),
    )?;
    Ok(())
}

/// Every concurrent value at `key` (a merged record reads all of them).
fn all_values(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Vec<automerge::ScalarValue> {
    doc.get_all(obj, key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, _)| match v {
            Value::Scalar(s) => Some(s.into_owned()),
            _ => None,
        })
        .collect()
}

fn earliest(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<DateTime<Utc>> {
    all_values(doc, obj, key)
        .iter()
        .filter_map(|v| v.as_str())
        .filter_map(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .min()
}

/// Family ids that have a field in a flat map.
fn families_in(doc: &impl ReadDoc, obj: &ObjId) -> BTreeMap<String, ()> {
    keys(doc, obj)
        .into_iter()
        .filter_map(|k| k.split_once('.').map(|(f, _)| (f.to_string(), ())))
        .collect()
}

fn count(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> u32 {
    get_u64(doc, obj, key)
        .or_else(|| all_values(doc, obj, key).iter().find_map(scalar_u64))
        .map(|n| n.min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

pub(crate) fn read(doc: &impl ReadDoc, id: DocumentId) -> FamilyDay {
    let mut bookings = Vec::new();
    if let Some(b) = get_map(doc, &ROOT, "bookings") {
        for f in families_in(doc, &b).into_keys() {
            let Ok(family_id) = DocumentId::parse(&f, "family id") else {
                continue;
            };
            bookings.push(Booking {
                family_id,
                adults: count(doc, &b, &format!("{f}.adults")),
                children: count(doc, &b, &format!("{f}.children")),
                booked_at: earliest(doc, &b, &format!("{f}.booked_at")).unwrap_or_default(),
                booked_by: get_str(doc, &b, &format!("{f}.booked_by")).unwrap_or_default(),
            });
        }
    }
    let mut attendance = Vec::new();
    if let Some(a) = get_map(doc, &ROOT, "attendance") {
        let all_keys = keys(doc, &a);
        for f in families_in(doc, &a).into_keys() {
            let Ok(family_id) = DocumentId::parse(&f, "family id") else {
                continue;
            };
            let by_prefix = format!("{f}.by.");
            attendance.push(Attendance {
                family_id,
                adults: count(doc, &a, &format!("{f}.adults")),
                children: count(doc, &a, &format!("{f}.children")),
                arrived_at: earliest(doc, &a, &format!("{f}.arrived_at")).unwrap_or_default(),
                checked_in_by: all_keys
                    .iter()
                    .filter_map(|k| k.strip_prefix(&by_prefix).map(str::to_string))
                    .collect(),
            });
        }
        attendance.sort_by_key(|a| (a.arrived_at, a.family_id));
    }
    FamilyDay {
        id,
        prison: get_str(doc, &ROOT, "prison").unwrap_or_default(),
        date: get_str(doc, &ROOT, "date")
            .and_then(|d| d.parse::<NaiveDate>().ok())
            .unwrap_or_default(),
        capacity: get_u64(doc, &ROOT, "capacity").map(|c| c.min(u64::from(u32::MAX)) as u32),
        bookings,
        attendance,
    }
}

/// Fields whose concurrent values merge by rule rather than by asking a worker.
pub(crate) fn merges_by_rule(path: &str) -> bool {
    path.ends_with(".arrived_at") || path.ends_with(".booked_at") || path.contains(".by.")
}

#[cfg(test)]
mod tests {
    use automerge::{AutoCommit, ROOT, ReadDoc, ScalarValue, Value, transaction::Transactable};

    use super::*;

    fn author() -> Author {
        Author {
            device_id: "a".into(),
            worker: "Worker".into(),
            team: "north".into(),
            now: chrono::Utc::now(),
        }
    }

    fn scalar(doc: &AutoCommit, obj: &ObjId, key: &str) -> ScalarValue {
        match doc.get(obj, key).expect("get") {
            Some((Value::Scalar(s), _)) => s.into_owned(),
            other => panic!("{key}: not a scalar: {other:?}"),
        }
    }

    /// Counts are written as Automerge ints (a JavaScript number; a uint
    /// reads as a BigInt there, and `capacity + 1` throws).
    #[test]
    fn counts_are_written_as_ints() {
        let by = author();
        let mut doc = AutoCommit::new();
        let new = NewFamilyDay {
            prison: "HMP X".into(),
            date: by.now.date_naive(),
            capacity: Some(10),
        };
        create(&mut doc, &new, &by).expect("create");
        let fid = DocumentId::random();
        book(&mut doc, fid, 2, 1, &by).expect("book");
        check_in(&mut doc, fid, 3, 2, &by).expect("check in");
        assert_eq!(scalar(&doc, &ROOT, "capacity"), ScalarValue::Int(10));
        assert_eq!(scalar(&doc, &ROOT, "schema_version"), ScalarValue::Int(1));
        let b = get_map(&doc, &ROOT, "bookings").expect("bookings");
        let a = get_map(&doc, &ROOT, "attendance").expect("attendance");
        for (obj, key, n) in [
            (&b, "adults", 2),
            (&b, "children", 1),
            (&a, "adults", 3),
            (&a, "children", 2),
        ] {
            assert_eq!(
                scalar(&doc, obj, &format!("{fid}.{key}")),
                ScalarValue::Int(n)
            );
        }
        let day = read(&doc, DocumentId::random());
        assert_eq!(day.capacity, Some(10));
        assert_eq!((day.bookings[0].adults, day.bookings[0].children), (2, 1));
    }

    /// Documents written before counts were ints hold uints: still read.
    #[test]
    fn old_uint_counts_still_read() {
        let by = author();
        let mut doc = AutoCommit::new();
        let new = NewFamilyDay {
            prison: "HMP X".into(),
            date: by.now.date_naive(),
            capacity: None,
        };
        create(&mut doc, &new, &by).expect("create");
        let fid = DocumentId::random();
        book(&mut doc, fid, 1, 1, &by).expect("book");
        doc.put(ROOT, "capacity", ScalarValue::Uint(12))
            .expect("put");
        doc.put(ROOT, "schema_version", ScalarValue::Uint(1))
            .expect("put");
        let b = get_map(&doc, &ROOT, "bookings").expect("bookings");
        doc.put(&b, format!("{fid}.adults"), ScalarValue::Uint(4))
            .expect("put");
        doc.put(&b, format!("{fid}.children"), ScalarValue::Uint(5))
            .expect("put");
        crate::model::am::read_header(&doc, "day").expect("an old uint version reads");
        let day = read(&doc, DocumentId::random());
        assert_eq!(day.capacity, Some(12));
        assert_eq!((day.bookings[0].adults, day.bookings[0].children), (4, 5));
        // A conflict between two old uints is settled with an int.
        let mut other = doc.fork();
        other
            .put(&b, format!("{fid}.adults"), ScalarValue::Uint(6))
            .expect("put");
        doc.put(&b, format!("{fid}.adults"), ScalarValue::Uint(7))
            .expect("put");
        doc.merge(&mut other).expect("merge");
        let path = format!("bookings/{fid}.adults");
        super::super::conflicts::resolve(&mut doc, &path, &serde_json::json!(6), &by)
            .expect("resolve");
        assert_eq!(
            scalar(&doc, &b, &format!("{fid}.adults")),
            ScalarValue::Int(6)
        );
    }
}
