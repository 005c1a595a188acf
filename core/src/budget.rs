//! A budget for Automerge bytes from outside (a peer's sync message, an
//! export file), checked before Automerge sees them.
//!
//! Automerge 0.12's `load` has no limit and its column decoder (hexane)
//! trusts declared counts: a 167-byte bundle chunk declaring a run of
//! billions of counters makes `load` allocate 4 GiB and abort the process
//! (tests/fuzz-crashers/automerge-load/oom-167-bytes-take-4gb.bin), and
//! `catch_unwind` cannot catch a failed allocation. This module walks every
//! chunk's header and column metadata, inflates DEFLATE columns through a
//! bounded reader, and counts each column's rows from its run lengths
//! without materialising them; more rows, actors, heads or inflated bytes
//! than the budget is refused. Phones cannot run a decoder in a limited
//! subprocess, so this check is the one both device and relay rely on
//! (docs/adr/0006-bounded-automerge-input.md).

use std::io::Read;

/// Limits for one message or file of Automerge chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Rows (ops, or changes) any one column may declare. Automerge 0.12
    /// holds ~115 bytes per op in memory (a 9.5 MB JavaScript Text document
    /// of ~9.5 M ops took 1.1 GB on the relay), so 1 M ops is ~120 MB.
    pub max_rows: u64,
    /// Bytes all DEFLATE columns and compressed changes may inflate to.
    pub max_inflated: u64,
    /// Actors or heads/deps one chunk may list.
    pub max_actors: u64,
}

impl Default for Budget {
    /// Generous for Linkbook: a family of 10,000 notes of ~1 KB is ~200,000
    /// ops; a 1 M-op document loads in ~120 MB, under the 256 MiB per
    /// message the relay and devices allow themselves.
    fn default() -> Self {
        Budget {
            max_rows: 1_000_000,
            max_inflated: 64 * 1024 * 1024,
            max_actors: 100_000,
        }
    }
}

/// Why bytes were refused before Automerge saw them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("Automerge bytes are malformed ({0})")]
    Malformed(&'static str),
    #[error("an Automerge column declares {declared} rows, more than the {limit} allowed")]
    TooManyRows { declared: u64, limit: u64 },
    #[error("Automerge columns inflate to more than the {limit} bytes allowed")]
    TooLarge { limit: u64 },
    #[error("an Automerge chunk lists {declared} actors or hashes, more than the {limit} allowed")]
    TooManyActors { declared: u64, limit: u64 },
}

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Checks every chunk in `bytes` (as `load_incremental` would read them)
/// against `budget`. Empty input is fine (nothing to load).
pub fn check(bytes: &[u8], budget: &Budget) -> Result<(), OverBudget> {
    let mut inflated = 0u64;
    let mut rest = bytes;
    while !rest.is_empty() {
        let mut r = Reader(rest);
        if r.take(4)? != MAGIC {
            return Err(OverBudget::Malformed("no chunk magic"));
        }
        r.take(4)?; // checksum: Automerge verifies it
        let chunk_type = r.take(1)?[0];
        let len = r.uleb()?;
        let len = usize::try_from(len).map_err(|_| OverBudget::Malformed("chunk length"))?;
        let body = r.take(len)?;
        rest = r.0;
        let mut c = Chunk {
            budget,
            inflated: &mut inflated,
        };
        match chunk_type {
            0 => c.document(body)?,
            1 => c.change(body)?,
            2 => {
                let body = c.inflate(body)?;
                c.change(&body)?
            }
            3 => c.bundle(body)?,
            _ => return Err(OverBudget::Malformed("unknown chunk type")),
        }
    }
    Ok(())
}

struct Chunk<'b> {
    budget: &'b Budget,
    inflated: &'b mut u64,
}

impl Chunk<'_> {
    /// actors, heads, change columns, op columns, their data, head indexes.
    fn document(&mut self, body: &[u8]) -> Result<(), OverBudget> {
        let mut r = Reader(body);
        self.actors(&mut r)?;
        self.hashes(&mut r)?;
        let changes = self.columns(&mut r)?;
        let ops = self.columns(&mut r)?;
        self.column_data(&mut r, &changes)?;
        self.column_data(&mut r, &ops)
    }

    /// deps, actor, seq, start op, time, message, other actors, op columns.
    fn change(&mut self, body: &[u8]) -> Result<(), OverBudget> {
        let mut r = Reader(body);
        self.hashes(&mut r)?;
        r.bytes()?;
        r.uleb()?;
        r.uleb()?;
        r.sleb()?;
        r.bytes()?;
        self.actors(&mut r)?;
        let ops = self.columns(&mut r)?;
        self.column_data(&mut r, &ops)
    }

    /// deps, actors, change columns and data, op columns and data.
    fn bundle(&mut self, body: &[u8]) -> Result<(), OverBudget> {
        let mut r = Reader(body);
        self.hashes(&mut r)?;
        self.actors(&mut r)?;
        let changes = self.columns(&mut r)?;
        self.column_data(&mut r, &changes)?;
        let ops = self.columns(&mut r)?;
        self.column_data(&mut r, &ops)
    }

    fn count(&self, declared: u64) -> Result<u64, OverBudget> {
        if declared > self.budget.max_actors {
            return Err(OverBudget::TooManyActors {
                declared,
                limit: self.budget.max_actors,
            });
        }
        Ok(declared)
    }

    fn actors(&self, r: &mut Reader<'_>) -> Result<(), OverBudget> {
        for _ in 0..self.count(r.uleb()?)? {
            r.bytes()?;
        }
        Ok(())
    }

    fn hashes(&self, r: &mut Reader<'_>) -> Result<(), OverBudget> {
        let n = self.count(r.uleb()?)?;
        r.take(usize::try_from(n * 32).map_err(|_| OverBudget::Malformed("hash count"))?)?;
        Ok(())
    }

    /// Column metadata: a count, then (spec, length) pairs.
    fn columns(&self, r: &mut Reader<'_>) -> Result<Vec<(u64, usize)>, OverBudget> {
        let n = r.uleb()?;
        if n > 256 {
            return Err(OverBudget::Malformed("too many columns"));
        }
        (0..n)
            .map(|_| {
                let spec = r.uleb()?;
                let len = usize::try_from(r.uleb()?)
                    .map_err(|_| OverBudget::Malformed("column length"))?;
                Ok((spec, len))
            })
            .collect()
    }

    fn column_data(
        &mut self,
        r: &mut Reader<'_>,
        columns: &[(u64, usize)],
    ) -> Result<(), OverBudget> {
        for &(spec, len) in columns {
            let data = r.take(len)?;
            let inflated;
            let data = if spec & 0b1000 != 0 {
                inflated = self.inflate(data)?;
                &inflated[..]
            } else {
                data
            };
            let rows = rows(spec & 0b111, data, self.budget.max_rows)?;
            if rows > self.budget.max_rows {
                return Err(OverBudget::TooManyRows {
                    declared: rows,
                    limit: self.budget.max_rows,
                });
            }
        }
        Ok(())
    }

    /// Raw DEFLATE (as Automerge writes it), read no further than what is
    /// left of the budget.
    fn inflate(&mut self, data: &[u8]) -> Result<Vec<u8>, OverBudget> {
        let left = self.budget.max_inflated.saturating_sub(*self.inflated);
        let mut out = Vec::new();
        flate2::bufread::DeflateDecoder::new(data)
            .take(left.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|_| OverBudget::Malformed("DEFLATE data"))?;
        *self.inflated += out.len() as u64;
        if *self.inflated > self.budget.max_inflated {
            return Err(OverBudget::TooLarge {
                limit: self.budget.max_inflated,
            });
        }
        Ok(out)
    }
}

/// Rows a column's encoding declares, counted from its run lengths (stops
/// as soon as `limit` is passed). Column types: 0 group, 1 actor, 2 integer,
/// 3 delta, 5 string, 6 value metadata (run-length encoded), 4 boolean
/// (alternating run lengths), 7 raw values (rows come from the metadata).
fn rows(col_type: u64, data: &[u8], limit: u64) -> Result<u64, OverBudget> {
    let mut r = Reader(data);
    let mut rows = 0u64;
    match col_type {
        7 => return Ok(0),
        4 => {
            while !r.0.is_empty() {
                rows = rows.saturating_add(r.uleb()?);
                if rows > limit {
                    break;
                }
            }
        }
        _ => {
            let value = |r: &mut Reader<'_>| -> Result<(), OverBudget> {
                match col_type {
                    3 => r.sleb().map(|_| ()),
                    5 => r.bytes().map(|_| ()),
                    _ => r.uleb().map(|_| ()),
                }
            };
            while !r.0.is_empty() {
                let n = r.sleb()?;
                if n > 0 {
                    value(&mut r)?;
                    rows = rows.saturating_add(n.unsigned_abs());
                } else if n < 0 {
                    let n = n.unsigned_abs();
                    if rows.saturating_add(n) > limit {
                        return Ok(rows.saturating_add(n));
                    }
                    for _ in 0..n {
                        value(&mut r)?;
                    }
                    rows += n;
                } else {
                    rows = rows.saturating_add(r.uleb()?);
                }
                if rows > limit {
                    break;
                }
            }
        }
    }
    Ok(rows)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OverBudget> {
        if n > self.0.len() {
            return Err(OverBudget::Malformed("declared length beyond the input"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn uleb(&mut self) -> Result<u64, OverBudget> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(OverBudget::Malformed("LEB128 number too long"))
    }

    fn sleb(&mut self) -> Result<i64, OverBudget> {
        let mut value = 0i64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= i64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                if shift + 7 < 64 && byte & 0x40 != 0 {
                    value |= -1i64 << (shift + 7);
                }
                return Ok(value);
            }
        }
        Err(OverBudget::Malformed("LEB128 number too long"))
    }

    /// A uLEB length, then that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], OverBudget> {
        let n = usize::try_from(self.uleb()?).map_err(|_| OverBudget::Malformed("length"))?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};

    const CRASHERS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fuzz-crashers/automerge-load"
    );

    #[test]
    fn the_crashers_are_refused() {
        for name in ["oom-167-bytes-take-4gb.bin", "slow-97-bytes.bin"] {
            let bytes = std::fs::read(format!("{CRASHERS}/{name}")).expect("crasher file");
            let err = check(&bytes, &Budget::default()).expect_err(name);
            println!("{name}: {err}");
        }
    }

    /// The device's chokepoint (`linkbook sync` from a malicious relay) and
    /// the relay's: a sync message carrying a crasher, V1 or V2.
    #[test]
    fn sync_messages_carrying_the_crashers_are_refused() {
        use automerge::sync::{Message, MessageVersion};
        for name in ["oom-167-bytes-take-4gb.bin", "slow-97-bytes.bin"] {
            let bytes = std::fs::read(format!("{CRASHERS}/{name}")).expect("crasher file");
            for version in [MessageVersion::V1, MessageVersion::V2] {
                let message = Message {
                    heads: Vec::new(),
                    need: Vec::new(),
                    have: Vec::new(),
                    changes: vec![bytes.clone()].into(),
                    flags: None,
                    version,
                }
                .encode();
                assert!(matches!(
                    crate::protocol::decode_sync_message(&message),
                    Err(crate::protocol::SyncMessageError::OverBudget(_))
                ));
            }
        }
    }

    #[test]
    fn valid_documents_and_changes_pass() {
        let mut doc = AutoCommit::new();
        let notes = doc.put_object(ROOT, "notes", ObjType::Map).expect("map");
        for i in 0..300 {
            doc.put(&notes, format!("n{i}"), "x".repeat(i % 40))
                .expect("put");
            if i % 10 == 0 {
                doc.commit();
            }
        }
        let text = doc.put_object(ROOT, "body", ObjType::Text).expect("text");
        doc.splice_text(&text, 0, 0, &"hello world ".repeat(200))
            .expect("text");
        doc.splice_text(&text, 5, 100, "").expect("delete");
        let budget = Budget::default();
        check(&doc.save(), &budget).expect("document");
        check(&doc.save_nocompress(), &budget).expect("uncompressed document");
        for change in doc.get_changes(&[]) {
            check(change.raw_bytes(), &budget).expect("change");
        }
        let mut other = AutoCommit::new();
        other.put(ROOT, "a", 1).expect("put");
        let heads = doc.get_heads();
        doc.put(ROOT, "more", 2).expect("put");
        check(&doc.save_after(&heads), &budget).expect("incremental");
    }

    /// Many shapes: maps, lists, Text inserts and deletes, counters, several
    /// actors merged, big values that DEFLATE compresses.
    #[test]
    fn documents_of_many_shapes_and_actors_pass() {
        use automerge::ScalarValue;
        let budget = Budget::default();
        let mut base = AutoCommit::new();
        let list = base
            .put_object(ROOT, "visits", ObjType::List)
            .expect("list");
        let body = base.put_object(ROOT, "body", ObjType::Text).expect("text");
        base.put(ROOT, "count", ScalarValue::counter(0))
            .expect("counter");
        base.commit();
        let mut peers: Vec<AutoCommit> = (0..4).map(|_| base.fork()).collect();
        for (p, doc) in peers.iter_mut().enumerate() {
            for i in 0..200usize {
                match (i + p) % 5 {
                    0 => {
                        doc.put(ROOT, format!("k{}", i % 37), i as i64)
                            .expect("put");
                    }
                    1 => {
                        doc.insert(&list, 0, "x".repeat(i * 13 % 3000))
                            .expect("insert");
                    }
                    2 => {
                        doc.splice_text(&body, 0, 0, "lorem ipsum ")
                            .expect("splice");
                    }
                    3 => {
                        let len = doc.text(&body).expect("text").chars().count();
                        if len > 4 {
                            doc.splice_text(&body, 1, 3, "").expect("delete");
                        }
                    }
                    _ => {
                        doc.increment(ROOT, "count", 1).expect("increment");
                    }
                }
                if i % 7 == 0 {
                    doc.commit();
                }
            }
        }
        let (first, rest) = peers.split_at_mut(1);
        for other in rest {
            first[0].merge(other).expect("merge");
        }
        let merged = &mut first[0];
        check(&merged.save(), &budget).expect("merged document");
        check(&merged.save_nocompress(), &budget).expect("merged, uncompressed");
        let all: Vec<u8> = merged
            .get_changes(&[])
            .iter()
            .flat_map(|c| c.raw_bytes().to_vec())
            .collect();
        check(&all, &budget).expect("all changes, concatenated");
    }

    #[test]
    fn a_document_over_the_row_budget_is_refused() {
        let mut doc = AutoCommit::new();
        let text = doc.put_object(ROOT, "body", ObjType::Text).expect("text");
        doc.splice_text(&text, 0, 0, &"a".repeat(5_000))
            .expect("text");
        let small = Budget {
            max_rows: 1_000,
            ..Budget::default()
        };
        assert!(matches!(
            check(&doc.save(), &small),
            Err(OverBudget::TooManyRows { .. })
        ));
    }

    #[test]
    fn truncated_and_garbage_input_is_malformed() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "a", 1).expect("put");
        let saved = doc.save();
        for n in 1..saved.len() {
            assert!(check(&saved[..n], &Budget::default()).is_err(), "{n}");
        }
        assert!(check(b"not automerge", &Budget::default()).is_err());
    }
}
