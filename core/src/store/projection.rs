//! Projections: plain SQL rows derived from documents, rewritten in the same
//! transaction as the change that caused them, so listing a caseload,
//! searching notes or listing conflicts never loads a document.

use std::collections::HashMap;

use automerge::AutoCommit;
use rusqlite::{Connection, params};

use crate::error::Result;
use crate::ids::DocumentId;
use crate::model::{DocumentType, conflicts, family, family_day};

pub(crate) fn project(
    conn: &Connection,
    id: DocumentId,
    kind: DocumentType,
    doc: &AutoCommit,
) -> Result<()> {
    let key = id.to_string();
    match kind {
        DocumentType::Family => project_family(conn, &key, &family::read(doc, id))?,
        DocumentType::FamilyDay => {
            let day = family_day::read(doc, id);
            conn.execute(
                "INSERT OR REPLACE INTO family_days (id, prison, date, capacity, families, adults, children)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key,
                    day.prison,
                    day.date.to_string(),
                    day.capacity,
                    day.attendance.len() as i64,
                    day.attendance.iter().map(|a| i64::from(a.adults)).sum::<i64>(),
                    day.attendance.iter().map(|a| i64::from(a.children)).sum::<i64>(),
                ],
            )?;
        }
        DocumentType::TeamDirectory => {}
    }
    project_conflicts(conn, id, kind, doc)
}

/// Rewrites a document's rows in `conflicts`: each value with its device,
/// worker and time (`model::conflicts::find`).
fn project_conflicts(
    conn: &Connection,
    id: DocumentId,
    kind: DocumentType,
    doc: &AutoCommit,
) -> Result<()> {
    let key = id.to_string();
    conn.execute("DELETE FROM conflicts WHERE doc_id = ?1", [&key])?;
    if kind == DocumentType::TeamDirectory {
        // Directory entries mirror family and family-day fields: a conflict
        // there is reported (and settled) on the document it mirrors.
        return Ok(());
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO conflicts (doc_id, doc_type, path, doc_values) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for c in conflicts::find(doc, id, kind) {
        let values = serde_json::to_string(&c.values).unwrap_or_else(|_| "[]".into());
        insert.execute(params![key, kind.as_str(), c.path, values])?;
    }
    Ok(())
}

/// Conflicts projected before values carried their worker and time (rows
/// whose values lack a `time` key) are projected again from their
/// documents, once, when the store is opened; conflicts are few, so this is
/// one indexed scan when there is nothing to do.
pub(crate) fn refresh_old_conflicts(conn: &Connection) -> Result<()> {
    let stale: Vec<String> = conn
        .prepare(
            "SELECT DISTINCT doc_id FROM conflicts
             WHERE EXISTS (SELECT 1 FROM json_each(doc_values) WHERE json_type(value, '$.time') IS NULL)",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in stale {
        let id = DocumentId::parse(&id, "document id")?;
        let (doc, kind) = super::documents::load(conn, id)?;
        project_conflicts(conn, id, kind, &doc)?;
    }
    Ok(())
}

fn project_family(conn: &Connection, key: &str, f: &crate::model::Family) -> Result<()> {
    let last_activity = f
        .notes
        .iter()
        .flat_map(|n| [Some(n.created_at), n.edited_at])
        .flatten()
        .chain(std::iter::once(f.created_at))
        .max()
        .unwrap_or(f.created_at);
    conn.execute(
        "INSERT OR REPLACE INTO families (id, name, status, key_worker, members, notes, safeguarding_flags, last_activity)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            key,
            f.name,
            f.status.as_str(),
            f.key_worker,
            f.members.len() as i64,
            f.notes.len() as i64,
            f.safeguarding.iter().filter(|s| s.cleared_at.is_none()).count() as i64,
            last_activity.to_rfc3339(),
        ],
    )?;
    // Only the notes that changed are rewritten: the FTS triggers then touch
    // one row per new note, not every note of the family.
    let mut existing: HashMap<String, (String, String)> = HashMap::new();
    {
        let mut stmt =
            conn.prepare_cached("SELECT id, text, category FROM notes WHERE family_id = ?1")?;
        let rows = stmt.query_map([key], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
        for row in rows {
            let (id, v) = row?;
            existing.insert(id, v);
        }
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO notes (family_id, id, author, category, created_at, text) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE notes SET text = ?3, category = ?4 WHERE family_id = ?1 AND id = ?2",
    )?;
    for n in &f.notes {
        match existing.remove(&n.id) {
            None => {
                insert.execute(params![
                    key,
                    n.id,
                    n.author,
                    n.category.as_str(),
                    n.created_at.to_rfc3339(),
                    n.text
                ])?;
            }
            Some((text, category)) if text != n.text || category != n.category.as_str() => {
                update.execute(params![key, n.id, n.text, n.category.as_str()])?;
            }
            Some(_) => {}
        }
    }
    let mut delete = conn.prepare_cached("DELETE FROM notes WHERE family_id = ?1 AND id = ?2")?;
    for gone in existing.into_keys() {
        delete.execute(params![key, gone])?;
    }
    Ok(())
}
