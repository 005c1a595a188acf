//! Linkbook's schema as data: every record, its fields, their shapes and
//! who may change them, walked by the checker in `rules.rs`.

use super::*;

/// What a value must be.
#[derive(Clone, Copy)]
pub(super) enum Shape {
    /// A scalar string or a Text object, at most this many characters.
    Str(usize),
    /// RFC 3339, as the readers parse it.
    Time,
    /// `YYYY-MM-DD`.
    Date,
    Bool,
    /// A whole number, at most this.
    Count(u64),
    Version,
    /// A string one of Linkbook's enums parses.
    Choice(fn(&str) -> bool),
    Record(&'static Record),
    /// A map of entry ids (UUIDs) to records: entries are never deleted or replaced.
    Entries(&'static Record),
    /// A list of records: append only.
    History(&'static Record),
    /// A map of `<id>.<field>` scalars.
    Flat(Flat),
}

impl Shape {
    pub(super) fn expected(self) -> &'static str {
        match self {
            Shape::Str(_) => "a string",
            Shape::Time => "a time (RFC 3339)",
            Shape::Date => "a date (YYYY-MM-DD)",
            Shape::Bool => "true or false",
            Shape::Count(_) => "a whole number within Linkbook's limit",
            Shape::Version => "a supported schema version",
            Shape::Choice(_) => "one of Linkbook's values",
            Shape::Record(_) | Shape::Entries(_) | Shape::Flat(_) => "a map",
            Shape::History(_) => "a list",
        }
    }

    pub(super) fn is_container(self) -> bool {
        matches!(
            self,
            Shape::Record(_) | Shape::Entries(_) | Shape::History(_) | Shape::Flat(_)
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    /// May change and be deleted.
    Free,
    /// May change, may not be deleted.
    Kept,
    /// Neither changed nor deleted once written.
    Fixed,
}

pub(super) struct Field {
    pub(super) key: &'static str,
    pub(super) shape: Shape,
    pub(super) rule: Rule,
}

/// A map object with known fields.
pub(super) struct Record {
    /// How a violation names it ("a case note").
    pub(super) what: &'static str,
    pub(super) fields: &'static [Field],
    /// Items of a note's history: nothing in one may change once written.
    pub(super) append_only: bool,
}

impl Record {
    pub(super) fn field(&'static self, key: &str) -> Result<&'static Field, RuleViolation> {
        self.fields
            .iter()
            .find(|f| f.key == key)
            .ok_or(V::UnknownField { what: self.what })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Flat {
    DirectoryFamilies,
    DirectoryDays,
    Bookings,
    Attendance,
}

impl Flat {
    pub(super) fn what(self) -> &'static str {
        match self {
            Flat::DirectoryFamilies | Flat::DirectoryDays => "a team directory entry",
            Flat::Bookings => "a booking",
            Flat::Attendance => "an attendance record",
        }
    }

    /// The id the key starts with, the field's name and its shape.
    pub(super) fn field(self, key: &str) -> Result<(&str, &'static str, Shape), RuleViolation> {
        let what = self.what();
        let (id, field) = key.split_once('.').ok_or(V::UnknownField { what })?;
        if DocumentId::parse(id, "document id").is_err() {
            return Err(V::Malformed { what });
        }
        let count = Shape::Count(u64::from(MAX_PEOPLE));
        let (name, shape) = match (self, field) {
            (Flat::DirectoryFamilies, "status") => ("status", Shape::Choice(status_ok)),
            (Flat::DirectoryDays, "date") => ("date", Shape::Date),
            (Flat::Bookings | Flat::Attendance, "adults") => ("adults", count),
            (Flat::Bookings | Flat::Attendance, "children") => ("children", count),
            (Flat::Bookings, "booked_at") => ("booked_at", Shape::Time),
            (Flat::Bookings, "booked_by") => ("booked_by", Shape::Str(MAX_NAME)),
            (Flat::Attendance, "arrived_at") => ("arrived_at", Shape::Time),
            (Flat::Attendance, f) => match f.strip_prefix("by.") {
                // A device id (UUID) or another peer's actor in hex.
                Some(device) if !device.is_empty() && device.len() <= 128 => {
                    ("check-in time", Shape::Time)
                }
                _ => return Err(V::UnknownField { what }),
            },
            _ => return Err(V::UnknownField { what }),
        };
        Ok((id, name, shape))
    }
}

pub(super) fn status_ok(s: &str) -> bool {
    FamilyStatus::parse(s).is_ok()
}
pub(super) fn role_ok(s: &str) -> bool {
    MemberRole::parse(s).is_ok()
}
pub(super) fn custody_ok(s: &str) -> bool {
    Custody::parse(s).is_ok()
}
pub(super) fn category_ok(s: &str) -> bool {
    NoteCategory::parse(s).is_ok()
}
pub(super) fn type_ok(s: &str) -> bool {
    DocumentType::parse(s).is_some()
}

pub(super) const fn free(key: &'static str, shape: Shape) -> Field {
    Field {
        key,
        shape,
        rule: Rule::Free,
    }
}
pub(super) const fn kept(key: &'static str, shape: Shape) -> Field {
    Field {
        key,
        shape,
        rule: Rule::Kept,
    }
}
pub(super) const fn fixed(key: &'static str, shape: Shape) -> Field {
    Field {
        key,
        shape,
        rule: Rule::Fixed,
    }
}

pub(super) const NAME: Shape = Shape::Str(MAX_NAME);
pub(super) const TEXT: Shape = Shape::Str(MAX_NOTE);

pub(super) const fn record(what: &'static str, fields: &'static [Field]) -> Record {
    Record {
        what,
        fields,
        append_only: false,
    }
}

pub(super) static HOUSEHOLD: Record = record(
    "the household",
    &[free("name", NAME), free("address", NAME)],
);
pub(super) static MEMBER: Record = record(
    "a member",
    &[
        free("name", NAME),
        free("role", Shape::Choice(role_ok)),
        free("relationship", NAME),
        free("date_of_birth", Shape::Date),
        free("school", NAME),
        free("looked_after", Shape::Bool),
        free("social_worker", NAME),
        kept("removed_at", Shape::Time),
        kept("removed_by", NAME),
    ],
);
pub(super) static PRISONER: Record = record(
    "a linked prisoner",
    &[
        free("name", NAME),
        free("establishment", NAME),
        free("prison_number", NAME),
        free("custody", Shape::Choice(custody_ok)),
        free("category", NAME),
        free("expected_release", Shape::Date),
    ],
);
pub(super) static CONSENT: Record = record(
    "the consent",
    &[
        free("given_by", NAME),
        free("date", Shape::Date),
        free("scope", TEXT),
    ],
);
pub(super) static FLAG: Record = record(
    "a safeguarding flag",
    &[
        free("text", TEXT),
        fixed("raised_by", NAME),
        fixed("raised_at", Shape::Time),
        free("cleared_at", Shape::Time),
    ],
);
pub(super) static REVISION: Record = Record {
    what: "a case note's history",
    fields: &[
        fixed("text", TEXT),
        fixed("replaced_at", Shape::Time),
        fixed("replaced_by", NAME),
    ],
    append_only: true,
};
pub(super) static NOTE: Record = record(
    "a case note",
    &[
        fixed("author", NAME),
        fixed("device", NAME),
        fixed("created_at", Shape::Time),
        free("category", Shape::Choice(category_ok)),
        kept("text", TEXT),
        free("edited_at", Shape::Time),
        fixed("history", Shape::History(&REVISION)),
    ],
);
pub(super) static REFERRAL: Record = record(
    "a referral",
    &[
        free("agency", NAME),
        free("reason", TEXT),
        free("date", Shape::Date),
        free("outcome", TEXT),
    ],
);
pub(super) static CLOSURE: Record = record(
    "the closure",
    &[free("date", Shape::Date), free("reason", TEXT)],
);
pub(super) static FAMILY: Record = record(
    "a family",
    &[
        fixed("type", Shape::Choice(type_ok)),
        kept("schema_version", Shape::Version),
        fixed("team", NAME),
        fixed("created_at", Shape::Time),
        fixed("created_by", NAME),
        fixed("household", Shape::Record(&HOUSEHOLD)),
        free("key_worker", NAME),
        kept("status", Shape::Choice(status_ok)),
        fixed("members", Shape::Entries(&MEMBER)),
        fixed("prisoners", Shape::Entries(&PRISONER)),
        fixed("consent", Shape::Record(&CONSENT)),
        fixed("safeguarding", Shape::Entries(&FLAG)),
        fixed("notes", Shape::Entries(&NOTE)),
        fixed("referrals", Shape::Entries(&REFERRAL)),
        fixed("closure", Shape::Record(&CLOSURE)),
    ],
);
pub(super) static FAMILY_DAY: Record = record(
    "a family day",
    &[
        fixed("type", Shape::Choice(type_ok)),
        kept("schema_version", Shape::Version),
        fixed("team", NAME),
        free("prison", NAME),
        free("date", Shape::Date),
        free("capacity", Shape::Count(u32::MAX as u64)),
        fixed("created_by", NAME),
        fixed("bookings", Shape::Flat(Flat::Bookings)),
        fixed("attendance", Shape::Flat(Flat::Attendance)),
    ],
);
pub(super) static DIRECTORY: Record = record(
    "the team directory",
    &[
        fixed("type", Shape::Choice(type_ok)),
        kept("schema_version", Shape::Version),
        fixed("team", NAME),
        fixed("families", Shape::Flat(Flat::DirectoryFamilies)),
        fixed("family_days", Shape::Flat(Flat::DirectoryDays)),
    ],
);

/// Where in the layout a patch's object sits.
#[derive(Clone, Copy)]
pub(super) enum Node {
    Record(&'static Record),
    Entries(&'static Record),
    History(&'static Record),
    Flat(Flat),
    /// A Text object holding a string field of `record`.
    Text(&'static Record, &'static Field),
}

pub(super) fn child(node: Node, prop: &Prop) -> Result<Node, RuleViolation> {
    match (node, prop) {
        (Node::Record(rec), Prop::Map(key)) => {
            let field = rec.field(key)?;
            Ok(match field.shape {
                Shape::Record(r) => Node::Record(r),
                Shape::Entries(r) => Node::Entries(r),
                Shape::History(r) => Node::History(r),
                Shape::Flat(f) => Node::Flat(f),
                // JavaScript clients write strings as Text objects.
                Shape::Str(_) | Shape::Time | Shape::Date | Shape::Choice(_) => {
                    Node::Text(rec, field)
                }
                other => {
                    return Err(V::WrongType {
                        what: rec.what,
                        field: field.key,
                        expected: other.expected(),
                    });
                }
            })
        }
        (Node::Entries(rec), Prop::Map(_)) | (Node::History(rec), Prop::Seq(_)) => {
            Ok(Node::Record(rec))
        }
        (Node::Record(rec) | Node::Entries(rec) | Node::History(rec), _) => {
            Err(V::Malformed { what: rec.what })
        }
        (Node::Text(rec, _), _) => Err(V::Malformed { what: rec.what }),
        (Node::Flat(f), _) => Err(V::Malformed { what: f.what() }),
    }
}
