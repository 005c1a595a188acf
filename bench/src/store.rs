//! Workload 4, **device-store**: one device holding a caseload; open, list
//! the caseload, full-text search, add a note (durably committed). The
//! baseline is the same operation on plain rusqlite (the same SQLCipher
//! build, WAL, `synchronous = FULL`) over an equivalent table with an FTS5
//! index: what an app without Automerge documents would do.

use std::path::Path;
use std::time::{Duration, Instant};

use linkbook_core::{NoteCategory, Repo};
use rusqlite::{Connection, params};

use crate::Result;
use crate::data::{self, Sizes, Store};
use crate::report::{Against, Better, Report};

pub const NAME: &str = "device-store";

const QUERIES: &[&str] = &["school", "housing benefits", "probation officer", "swim*"];

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2)
        .copied()
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed(), v))
}

const BASELINE_SCHEMA: &str = "
CREATE TABLE families (
    id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    key_worker TEXT, address TEXT, notes INTEGER NOT NULL, last_activity TEXT NOT NULL
) STRICT;
CREATE INDEX families_by_name ON families(name COLLATE NOCASE);
CREATE TABLE notes (
    seq INTEGER PRIMARY KEY, family_id TEXT NOT NULL, id TEXT NOT NULL, author TEXT NOT NULL,
    category TEXT NOT NULL, created_at TEXT NOT NULL, text TEXT NOT NULL
) STRICT;
CREATE INDEX notes_by_family ON notes(family_id);
CREATE VIRTUAL TABLE notes_fts USING fts5(
    text, content = 'notes', content_rowid = 'seq', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER notes_ai AFTER INSERT ON notes BEGIN
    INSERT INTO notes_fts(rowid, text) VALUES (new.seq, new.text);
END;
";

fn baseline_open(path: &Path, key_hex: &str) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!("PRAGMA key = \"x'{key_hex}'\";"))?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = 2;",
    )?;
    Ok(conn)
}

/// The plain table, filled with the same families and notes as `repo`.
fn build_baseline(repo: &Repo, path: &Path, key_hex: &str) -> Result<()> {
    let mut conn = baseline_open(path, key_hex)?;
    conn.execute_batch(BASELINE_SCHEMA)?;
    let tx = conn.transaction()?;
    for f in repo.families()? {
        let family = repo.family(f.id)?;
        tx.execute(
            "INSERT INTO families (id, name, status, key_worker, address, notes, last_activity) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                f.id.to_string(),
                f.name,
                f.status.as_str(),
                f.key_worker,
                family.address,
                family.notes.len() as i64,
                f.last_activity.to_rfc3339()
            ],
        )?;
        for n in &family.notes {
            tx.execute(
                "INSERT INTO notes (family_id, id, author, category, created_at, text) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![f.id.to_string(), n.id, n.author, n.category.as_str(), n.created_at.to_rfc3339(), n.text],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn fts(query: &str) -> String {
    query
        .split_whitespace()
        .map(|w| match w.strip_suffix('*') {
            Some(p) => format!("\"{p}\"*"),
            None => format!("\"{w}\""),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(sizes: &Sizes, work: &Path, scratch: &Path, report: &mut Report) -> Result<()> {
    let seed_sizes = Sizes {
        family_days: 0,
        checkins_per_day: 0,
        ..*sizes
    };
    let seed_store = Store::new(&scratch.join("store-seed"))?;
    let t = Instant::now();
    let families = {
        let repo = seed_store.open()?;
        data::seed(&repo, &seed_sizes, &mut data::rng(4))?.families
    };
    eprintln!(
        "seeded the device store in {:.1} s ({:.1} MB)",
        t.elapsed().as_secs_f64(),
        seed_store.size() as f64 / 1e6
    );
    // Measured on disk, not tmpfs.
    let store = Store {
        dir: work.join("device-store"),
        key: seed_store.key.clone(),
    };
    std::fs::create_dir_all(&store.dir).map_err(|e| format!("store dir: {e}"))?;
    std::fs::copy(seed_store.db(), store.db()).map_err(|e| format!("copy: {e}"))?;
    let _ = std::fs::remove_dir_all(&seed_store.dir);
    let key_hex = store.key.to_hex();
    let baseline_path = work.join("baseline.db");
    {
        let repo = store.open()?;
        build_baseline(&repo, &baseline_path, &key_hex)?;
    }

    // Open.
    let mut lb = Vec::new();
    let mut base = Vec::new();
    for _ in 0..7 {
        lb.push(time(|| store.open().map(|_| ()))?.0);
        base.push(time(|| baseline_open(&baseline_path, &key_hex).map(|_| ()))?.0);
    }
    let open = (median(lb), median(base));

    let repo = store.open()?;
    let conn = baseline_open(&baseline_path, &key_hex)?;

    // List the caseload.
    let (mut lb, mut base) = (Vec::new(), Vec::new());
    let mut listed = 0;
    for _ in 0..11 {
        let (d, v) = time(|| Ok(repo.families()?))?;
        listed = v.len();
        lb.push(d);
        base.push(
            time(|| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, name, status, key_worker, notes, last_activity FROM families ORDER BY name COLLATE NOCASE, id",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows.len())
            })?
            .0,
        );
    }
    let list = (median(lb), median(base));

    // Full-text search.
    let (mut lb, mut base) = (Vec::new(), Vec::new());
    let mut hits = 0;
    for i in 0..12 {
        let q = QUERIES[i % QUERIES.len()];
        let (d, v) = time(|| Ok(repo.search(q)?))?;
        hits += v.len();
        lb.push(d);
        base.push(
            time(|| {
                let mut stmt = conn.prepare_cached(
                    "SELECT n.id, n.family_id, coalesce(f.name, ''), n.category, n.created_at,
                            snippet(notes_fts, 0, '[', ']', '…', 16)
                     FROM notes_fts JOIN notes n ON n.seq = notes_fts.rowid
                     LEFT JOIN families f ON f.id = n.family_id
                     WHERE notes_fts MATCH ?1 ORDER BY rank LIMIT 100",
                )?;
                let rows = stmt
                    .query_map([fts(q)], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows.len())
            })?
            .0,
        );
    }
    let search = (median(lb), median(base));

    // Add a note, durably.
    let (mut lb, mut base) = (Vec::new(), Vec::new());
    let mut rng = data::rng(44);
    for i in 0..21 {
        let family = families[(i * 37) % families.len()];
        let text = data::note_text(&mut rng);
        lb.push(time(|| Ok(repo.add_note(family, &text, NoteCategory::Visit)?))?.0);
        base.push(
            time(|| {
                let now = chrono::Utc::now().to_rfc3339();
                conn.execute_batch("BEGIN IMMEDIATE")?;
                conn.execute(
                    "INSERT INTO notes (family_id, id, author, category, created_at, text) VALUES (?1, ?2, 'bench', 'visit', ?3, ?4)",
                    params![family.to_string(), uuid::Uuid::new_v4().to_string(), now, text],
                )?;
                conn.execute(
                    "UPDATE families SET notes = notes + 1, last_activity = ?2 WHERE id = ?1",
                    params![family.to_string(), now],
                )?;
                conn.execute_batch("COMMIT")?;
                Ok(())
            })?
            .0,
        );
    }
    let add = (median(lb), median(base));

    report.note(
        NAME,
        format!(
            "{} families x {} notes on one device ({:.1} MB on disk; baseline {:.1} MB); medians; {listed} families listed, {} hits per search",
            sizes.families,
            sizes.notes_per_family,
            store.size() as f64 / 1e6,
            std::fs::metadata(&baseline_path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6,
            hits / 12
        ),
    );
    for (name, (l, b)) in [
        ("open_ms", open),
        ("list_caseload_ms", list),
        ("search_ms", search),
        ("add_note_ms", add),
    ] {
        report.add(NAME, name, "ms", l, Against::Baseline(b), Better::Lower);
    }
    Ok(())
}
