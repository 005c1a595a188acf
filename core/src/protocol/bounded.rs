//! Counts checked on a peer's bytes before a decoder allocates for them.
//!
//! Two decoders of outside bytes allocate per item without a bound of
//! their own: ciborium's `Value` (about 50 bytes per CBOR item, so a 64 MiB
//! WebSocket message of one-byte items, e.g. an array of zeros, took more
//! than 3 GB and aborted `linkbook sync`) and Automerge 0.12's sync message
//! decoder (a `Vec` entry per declared change or `have`: 64 M empty
//! changes in one 64 MiB message are 1.5 GB). Both the device and the relay
//! decode every peer message through these walks first
//! (tests/tests/malicious_relay.rs pushes each shape at the real CLI).
//! Neither trusts a declared count: they walk the bytes actually present,
//! so a claim of 2^32 entries in a short message costs nothing.

use super::SyncMessageError;
use crate::budget::{Budget, OverBudget};

/// CBOR data items one protocol message may hold. Linkbook's messages hold
/// tens (a map of ids and one byte string); a client sending a document's
/// bytes as an array of integers needs one per byte, so documents of up to
/// 1 MiB in that form still decode (~50 MB of `Value`s at most).
pub(crate) const MAX_CBOR_ITEMS: usize = 1 << 20;

/// Whether `bytes` starts with one well-formed CBOR item of at most
/// `max_items` data items (nested ones counted). `Err` says the count was
/// exceeded (`true`) or the bytes are not CBOR (`false`).
pub(crate) fn cbor_items_within(bytes: &[u8], max_items: usize) -> Result<(), bool> {
    // Items still expected per open container (`None`: until a break).
    let mut open: Vec<Option<u64>> = vec![Some(1)];
    let mut pos = 0usize;
    let mut items = 0usize;
    let byte = |pos: usize| bytes.get(pos).copied().ok_or(false);
    loop {
        while let Some(Some(0)) = open.last() {
            open.pop();
        }
        let Some(top) = open.last_mut() else {
            return Ok(());
        };
        let initial = byte(pos)?;
        pos += 1;
        if initial == 0xff {
            // A break ends an indefinite container, and only that.
            if top.is_some() {
                return Err(false);
            }
            open.pop();
            continue;
        }
        if let Some(n) = top {
            *n -= 1;
        }
        items += 1;
        if items > max_items {
            return Err(true);
        }
        let (major, info) = (initial >> 5, initial & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let width = 1usize << (info - 24);
                let end = pos.checked_add(width).ok_or(false)?;
                let raw = bytes.get(pos..end).ok_or(false)?;
                pos = end;
                Some(raw.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
            }
            31 if matches!(major, 2..=5) => None,
            _ => return Err(false),
        };
        match (major, arg) {
            (0 | 1 | 7, _) => {}
            (2 | 3, Some(len)) => {
                let len = usize::try_from(len).map_err(|_| false)?;
                pos = pos
                    .checked_add(len)
                    .filter(|&end| end <= bytes.len())
                    .ok_or(false)?;
            }
            (2..=5, None) => open.push(None),
            (4, Some(n)) => open.push(Some(n)),
            (5, Some(n)) => open.push(Some(n.checked_mul(2).ok_or(false)?)),
            (6, _) => open.push(Some(1)),
            _ => return Err(false),
        }
    }
}

/// Checks an Automerge sync message's declared counts against what it
/// carries and against the limits, before `sync::Message::decode` makes a
/// `Vec` entry for each: at most `max_haves` haves, at most the budget's
/// rows in changes. The layout (automerge 0.12 `sync.rs`): a type byte,
/// then heads, needs (each a LEB128 count of 32-byte hashes), haves (count;
/// each hashes and a length-prefixed Bloom filter), changes (count; each
/// length-prefixed).
pub(crate) fn sync_counts_within(
    data: &[u8],
    max_haves: usize,
    budget: &Budget,
) -> Result<(), SyncMessageError> {
    let mut r = Leb(data.get(1..).ok_or(SyncMessageError::Malformed)?);
    for _ in 0..2 {
        let hashes = r.count()?;
        r.skip(hashes, 32)?;
    }
    let haves = r.count()?;
    if haves > max_haves as u64 {
        return Err(SyncMessageError::BadBloomFilter);
    }
    for _ in 0..haves {
        let hashes = r.count()?;
        r.skip(hashes, 32)?;
        let filter = r.count()?;
        r.skip(filter, 1)?;
    }
    let changes = r.count()?;
    if changes > budget.max_rows {
        return Err(OverBudget::TooManyRows {
            declared: changes,
            limit: budget.max_rows,
        }
        .into());
    }
    // Each change takes at least its length byte: more cannot be there.
    if changes > r.0.len() as u64 {
        return Err(SyncMessageError::Malformed);
    }
    Ok(())
}

struct Leb<'a>(&'a [u8]);

impl Leb<'_> {
    fn count(&mut self) -> Result<u64, SyncMessageError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(SyncMessageError::Malformed)?;
            self.0 = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SyncMessageError::Malformed)
    }

    fn skip(&mut self, n: u64, width: u64) -> Result<(), SyncMessageError> {
        let len = n
            .checked_mul(width)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= self.0.len())
            .ok_or(SyncMessageError::Malformed)?;
        self.0 = &self.0[len..];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_items_are_counted_without_trusting_declared_lengths() {
        // A map of one key and an array of ten: 13 items.
        let mut ok = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![(
                ciborium::Value::Text("data".into()),
                ciborium::Value::Array(vec![ciborium::Value::Integer(1.into()); 10]),
            )]),
            &mut ok,
        )
        .expect("encode");
        assert_eq!(cbor_items_within(&ok, 13), Ok(()));
        assert_eq!(cbor_items_within(&ok, 12), Err(true));
        // An array claiming 2^32 items with three: not CBOR, at no cost.
        assert_eq!(
            cbor_items_within(&[0x9b, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3], 100),
            Err(false)
        );
        // A byte string longer than the input; a stray break; indefinite.
        assert_eq!(
            cbor_items_within(&[0x5a, 0xff, 0xff, 0xff, 0xff, 1], 100),
            Err(false)
        );
        assert_eq!(cbor_items_within(&[0x82, 0xff, 0xff], 100), Err(false));
        assert_eq!(cbor_items_within(&[0x9f, 1, 2, 0xff], 3), Ok(()));
        assert_eq!(cbor_items_within(&[0x9f, 1, 2, 0xff], 2), Err(true));
        // Deep nesting is counted, not recursed into.
        let deep = vec![0x81; 100_000];
        assert_eq!(cbor_items_within(&deep, 1000), Err(true));
    }

    #[test]
    fn sync_counts_beyond_the_limits_or_the_bytes_are_refused() {
        let budget = Budget {
            max_rows: 10,
            ..Budget::default()
        };
        let message = |changes: Vec<Vec<u8>>| {
            automerge::sync::Message {
                heads: vec![automerge::ChangeHash([7; 32])],
                need: Vec::new(),
                have: vec![automerge::sync::Have::default()],
                changes: changes.into(),
                flags: None,
                version: automerge::sync::MessageVersion::V1,
            }
            .encode()
        };
        assert!(sync_counts_within(&message(vec![vec![1, 2, 3]; 10]), 64, &budget).is_ok());
        assert!(matches!(
            sync_counts_within(&message(vec![vec![1]; 11]), 64, &budget),
            Err(SyncMessageError::OverBudget(OverBudget::TooManyRows {
                declared: 11,
                ..
            }))
        ));
        // 2^32 haves or changes declared in a few bytes.
        let claims = |haves: bool| {
            let mut m = vec![0x42, 0, 0];
            if !haves {
                m.push(0);
            }
            m.extend([0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0]);
            m
        };
        assert_eq!(
            sync_counts_within(&claims(true), 64, &budget),
            Err(SyncMessageError::BadBloomFilter)
        );
        assert!(matches!(
            sync_counts_within(&claims(false), 64, &Budget::default()),
            Err(SyncMessageError::OverBudget(OverBudget::TooManyRows { .. }))
        ));
        assert_eq!(
            sync_counts_within(&[0x42], 64, &budget),
            Err(SyncMessageError::Malformed)
        );
    }
}
