//! Identifiers. Every id is random and made offline, never coordinated.
//!
//! Documents are named the way automerge-repo names them, so that any
//! automerge-repo peer can open a Linkbook document: a [`DocumentId`] is the
//! bs58check encoding (Bitcoin alphabet, payload + first 4 bytes of
//! sha256(sha256(payload))) of a 16-byte UUID v4, written `automerge:<id>` in URLs.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The automerge-repo id of one document (family case file, family day, team directory).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

/// The longest base58check text a document id can have.
const MAX_ENCODED_ID: usize = 28;

impl DocumentId {
    /// A fresh random id (UUID v4).
    pub fn random() -> Self {
        DocumentId(*Uuid::new_v4().as_bytes())
    }

    /// The id every device of `team` computes for that team's directory, so that
    /// devices that never met agree on it without asking anyone.
    pub fn team_directory(team: &str) -> Self {
        let digest = Sha256::digest(format!("linkbook team directory\0{team}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // Make it a well-formed UUID v4 like every other document id.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        DocumentId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        DocumentId(bytes)
    }

    /// `automerge:<id>`.
    pub fn url(&self) -> String {
        format!("automerge:{self}")
    }

    /// Parses `<id>` or `automerge:<id>`; `field` names the input in the error.
    pub fn parse(input: &str, field: &'static str) -> Result<Self> {
        let s = input.trim();
        let s = s.strip_prefix("automerge:").unwrap_or(s);
        let invalid = || {
            let mut shown: String = input.chars().take(40).collect();
            if shown.len() < input.len() {
                shown.push('…');
            }
            Error::InvalidInput {
                field,
                reason: format!(
                    "'{shown}' is not a Linkbook document id (expected e.g. automerge:4NMNnkMhL8jXrdJ9jamS58PAVdXu)"
                ),
            }
        };
        // 16 bytes and a 4-byte checksum are at most 28 base58 characters.
        // Longer input is refused before decoding: base58 decoding takes
        // time quadratic in the length (100,000 characters took seconds).
        if s.len() > MAX_ENCODED_ID {
            return Err(invalid());
        }
        let bytes = bs58::decode(s)
            .with_check(None)
            .into_vec()
            .map_err(|_| invalid())?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
        Ok(DocumentId(bytes))
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

/// Serialised as its string form, as automerge-repo writes it.
impl serde::Serialize for DocumentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Stored as its string form (the relay's tables key documents by it), so
/// a value read back that is not a document id is an error, not an id.
impl rusqlite::types::ToSql for DocumentId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.to_string().into())
    }
}

impl rusqlite::types::FromSql for DocumentId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        DocumentId::parse(text, "document id")
            .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

impl FromStr for DocumentId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DocumentId::parse(s, "document id")
    }
}

/// Checks that `input` is a UUID and returns it in canonical (hyphenated,
/// lower-case) form. Used for ids inside a document: notes, members, prisoners.
pub fn parse_uuid(input: &str, field: &'static str) -> Result<String> {
    Uuid::parse_str(input.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::InvalidInput {
            field,
            reason: format!("'{input}' is not a valid id (expected a UUID)"),
        })
}

/// A new random id for an entry inside a document.
pub fn new_entry_id() -> String {
    Uuid::new_v4().hyphenated().to_string()
}

/// First four bytes of sha256(sha256(payload)): the bs58check checksum, kept
/// here so a test can pin the encoding against automerge-repo's.
#[cfg(test)]
fn checksum(payload: &[u8]) -> [u8; 4] {
    let twice = Sha256::digest(Sha256::digest(payload));
    [twice[0], twice[1], twice[2], twice[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_accepts_url_form() {
        let id = DocumentId::random();
        assert_eq!(DocumentId::parse(&id.to_string(), "id").ok(), Some(id));
        assert_eq!(DocumentId::parse(&id.url(), "id").ok(), Some(id));
    }

    #[test]
    fn encoding_is_bs58_of_payload_and_double_sha_checksum() {
        let id = DocumentId::from_bytes([7u8; 16]);
        let mut raw = id.as_bytes().to_vec();
        raw.extend_from_slice(&checksum(id.as_bytes()));
        assert_eq!(id.to_string(), bs58::encode(raw).into_string());
    }

    #[test]
    fn ids_fit_the_length_limit_and_long_input_is_refused_without_decoding() {
        for bytes in [[0u8; 16], [255u8; 16]] {
            assert!(DocumentId::from_bytes(bytes).to_string().len() <= MAX_ENCODED_ID);
        }
        let long = "x".repeat(1_000_000);
        let err = DocumentId::parse(&long, "family id").expect_err("too long");
        // The error names the input without repeating all of it.
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn rejects_bad_checksum_and_wrong_length() {
        let id = DocumentId::random().to_string();
        let mut broken: Vec<char> = id.chars().collect();
        let last = broken.len() - 1;
        broken[last] = if broken[last] == '2' { '3' } else { '2' };
        let broken: String = broken.into_iter().collect();
        assert!(matches!(
            DocumentId::parse(&broken, "family id"),
            Err(Error::InvalidInput {
                field: "family id",
                ..
            })
        ));
        let short = bs58::encode([1u8; 8]).with_check().into_string();
        assert!(DocumentId::parse(&short, "id").is_err());
        assert!(DocumentId::parse("not an id!", "id").is_err());
    }

    #[test]
    fn team_directory_id_is_stable_per_team() {
        assert_eq!(
            DocumentId::team_directory("north"),
            DocumentId::team_directory("north")
        );
        assert_ne!(
            DocumentId::team_directory("north"),
            DocumentId::team_directory("south")
        );
        let id = DocumentId::team_directory("north");
        assert_eq!(id.as_bytes()[6] >> 4, 4, "a UUID v4 like every other id");
    }
}
