//! Every page of a SQLite file as plaintext, so a test can grep what an
//! attacker with the key (or with the disk, for a plaintext file) could
//! read: live rows, freed pages, FTS shadow tables, and the WAL's frames.
//!
//! SQLCipher 4 with a raw key (`PRAGMA key = "x'<64 hex>'"`), its defaults:
//! 4096-byte pages, each ending in 80 reserved bytes (a 16-byte IV, then a
//! 64-byte HMAC-SHA512), the rest AES-256-CBC under the raw key (no KDF for
//! a raw key). Page 1 starts with the file's 16-byte salt in the clear, and
//! its encrypted part starts at byte 16. A WAL is a 32-byte header, then
//! frames of a 24-byte header and one page, encrypted the same way. The
//! HMAC is not checked: a test wants the bytes, and a wrong key shows as
//! pages that are noise (see `plaintext_pages_finds_a_live_string`).

use std::path::Path;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::NoPadding};

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// SQLCipher 4's page size and reserve (IV + HMAC-SHA512).
const PAGE: usize = 4096;
const RESERVE: usize = 80;
const IV: usize = 16;
const SALT: usize = 16;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// The plaintext of every page of `path` (a database or a `-wal` file) and,
/// for a database, of its `-wal` beside it, concatenated. `key` is the raw
/// 32-byte SQLCipher key; `None` reads a plaintext file as it is. A missing
/// file gives no bytes.
pub fn plaintext_pages(path: &Path, key: Option<&[u8; 32]>) -> Vec<u8> {
    let mut out = file_pages(path, key);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.ends_with("-wal") {
        let wal = path.with_file_name(format!("{name}-wal"));
        out.extend(file_pages(&wal, key));
    }
    out
}

fn file_pages(path: &Path, key: Option<&[u8; 32]>) -> Vec<u8> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let Some(key) = key else {
        return bytes;
    };
    let is_wal = bytes.len() >= 4 && matches!(&bytes[..4], [0x37, 0x7f, 0x06, 0x82 | 0x83]);
    let mut out = Vec::with_capacity(bytes.len());
    if is_wal {
        let mut at = WAL_HEADER;
        while at + FRAME_HEADER + PAGE <= bytes.len() {
            let pgno = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            let page = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + PAGE];
            out.extend(decrypt_page(page, pgno == 1, key));
            at += FRAME_HEADER + PAGE;
        }
    } else {
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            out.extend(decrypt_page(page, i == 0, key));
        }
    }
    out
}

/// One page's plaintext: page 1 gets SQLite's header string where the salt
/// was, so the result reads like a plain database page.
fn decrypt_page(page: &[u8], first: bool, key: &[u8; 32]) -> Vec<u8> {
    let start = if first { SALT } else { 0 };
    let end = PAGE - RESERVE;
    let iv: [u8; IV] = page[end..end + IV].try_into().expect("16 bytes");
    let mut body = page[start..end].to_vec();
    let decrypted = Aes256CbcDec::new(key.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut body)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(PAGE);
    if first {
        out.extend_from_slice(b"SQLite format 3\0");
    }
    out.extend(decrypted);
    out
}

/// A relay data directory's database and WAL as plaintext, decrypted with
/// its `relay.key` ([`crate::relay_key`]: a relay keyed otherwise is not
/// silently read as ciphertext); and every other file in the directory as
/// it is (logs, keys, certificates), since those are not pages.
pub fn relay_plaintext(data: &Path) -> Vec<u8> {
    let key: [u8; 32] = hex::decode(crate::relay_key(data))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(data) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("relay.db") && !name.ends_with("-shm") {
            out.extend(file_pages(&path, Some(&key)));
        } else if path.is_file() {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

/// How many times `needle` occurs in `haystack`.
pub fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_pages_finds_a_live_string() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("d.db");
        let key: [u8; 32] = rand::random();
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA journal_mode = WAL;
             CREATE TABLE t (v TEXT);
             INSERT INTO t VALUES ('a known live string, quokkafeather');",
            hex::encode(key)
        ))
        .expect("write");
        let raw = std::fs::read(path.with_file_name("d.db-wal")).expect("wal");
        assert_eq!(occurrences(&raw, b"quokkafeather"), 0, "encrypted");
        // In the WAL before a checkpoint, in the database after.
        let pages = plaintext_pages(&path, Some(&key));
        assert_eq!(occurrences(&pages, b"quokkafeather"), 1);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        let db = file_pages(&path, Some(&key));
        assert_eq!(occurrences(&db, b"quokkafeather"), 1);
        // Page 1 decrypts to a SQLite header: 4096-byte pages, 80 reserved.
        assert_eq!(&db[16..18], &[0x10, 0x00]);
        assert_eq!(db[20], 80);
        // A wrong key finds nothing.
        let wrong: [u8; 32] = rand::random();
        assert_eq!(
            occurrences(&plaintext_pages(&path, Some(&wrong)), b"quokkafeather"),
            0
        );
    }
}
