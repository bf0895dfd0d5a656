//! Decoder of `pgoutput` logical replication messages, protocol version 1, text values.
//!
//! One message is one `data` value of `pg_logical_slot_peek_binary_changes` or one XLogData
//! payload of the replication stream. Integers are big-endian, strings end with a NUL byte.
//! Malformed input is an error, never a panic: the bytes come from the network.
//!
//! What the fixtures (`tests/fixtures/pgoutput/`, captured from PostgreSQL 15) show:
//! - a change comes between a `Begin` and a `Commit`; the `Commit`'s `end_lsn` is the position to
//!   confirm, and a transaction touching no published table sends nothing at all;
//! - a `Relation` precedes the first change of each table in a session, and comes again after the
//!   table's cache entry is invalidated (a `TRUNCATE` does that);
//! - under the default replica identity (the primary key) a DELETE carries a full-width key tuple
//!   in which only the key columns hold values, the others are `Null`; an UPDATE carries the new
//!   row only, plus the old key when the key itself changed; out-of-line TOAST values the update
//!   left alone are `UnchangedToast`;
//! - under `REPLICA IDENTITY FULL` every column is a key column, and DELETE and UPDATE carry the
//!   whole old row.

use std::collections::HashMap;
use std::fmt;

pub use crate::position::{format_lsn, parse_lsn, Lsn};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_time_us: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_us: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `old` is present when the replica identity changed or is FULL ('K' key / 'O' old tuple).
    Update {
        relation: u32,
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: Tuple,
    },
    Truncate {
        options: u8,
        relations: Vec<u32>,
    },
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    /// Logical decoding messages ('M') and anything else this build does not use: skipped.
    Other {
        tag: u8,
    },
}

/// `Truncate::options` bit: `TRUNCATE ... CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 1;
/// `Truncate::options` bit: `TRUNCATE ... RESTART IDENTITY`.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `relreplident`: 'd' default (primary key), 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    /// Where column `name` stands in this relation's tuples.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (every column under FULL).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    UnchangedToast,
    Text(String),
    Binary(Vec<u8>),
}

pub type Tuple = Vec<Datum>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message: {0}")]
pub struct DecodeError(pub String);

/// Decodes one message (one `data` value of pg_logical_slot_peek_binary_changes / one XLogData
/// payload).
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let Some((&tag, body)) = bytes.split_first() else {
        return Err(DecodeError("empty message".into()));
    };
    let kind = match tag {
        b'B' => "begin",
        b'C' => "commit",
        b'R' => "relation",
        b'I' => "insert",
        b'U' => "update",
        b'D' => "delete",
        b'T' => "truncate",
        b'Y' => "type",
        b'O' => "origin",
        _ => return Ok(Message::Other { tag }),
    };
    let mut r = Reader { bytes: body };
    let message = decode_body(tag, &mut r).map_err(|e| DecodeError(format!("{kind}: {e}")))?;
    if !r.bytes.is_empty() {
        return Err(DecodeError(format!("{kind}: {} bytes after the end of the message", r.bytes.len())));
    }
    Ok(message)
}

fn decode_body(tag: u8, r: &mut Reader<'_>) -> Result<Message, String> {
    Ok(match tag {
        b'B' => Message::Begin { final_lsn: r.u64("final lsn")?, commit_time_us: r.i64("commit time")?, xid: r.u32("xid")? },
        b'C' => Message::Commit { flags: r.u8("flags")?, commit_lsn: r.u64("commit lsn")?, end_lsn: r.u64("end lsn")?, commit_time_us: r.i64("commit time")? },
        b'R' => Message::Relation(relation(r)?),
        b'I' => {
            let relation = r.u32("relation id")?;
            r.expect_new_tuple()?;
            Message::Insert { relation, new: tuple(r, "new tuple")? }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let old = match r.u8("tuple kind")? {
                b'K' => Some(tuple(r, "old key")?),
                b'O' => Some(tuple(r, "old tuple")?),
                b'N' => None,
                other => return Err(format!("tuple kind {} where 'K', 'O' or 'N' was expected", show_byte(other))),
            };
            if old.is_some() {
                r.expect_new_tuple()?;
            }
            Message::Update { relation, old, new: tuple(r, "new tuple")? }
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            let old = match r.u8("tuple kind")? {
                b'K' => tuple(r, "old key")?,
                b'O' => tuple(r, "old tuple")?,
                other => return Err(format!("tuple kind {} where 'K' or 'O' was expected", show_byte(other))),
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let count = r.u32("number of relations")?;
            let options = r.u8("options")?;
            // Bounded by what is left, so a wild count cannot ask for a huge allocation.
            let mut relations = Vec::with_capacity((count as usize).min(r.bytes.len() / 4));
            for i in 1..=count {
                relations.push(r.u32("relation id").map_err(|e| format!("relation {i} of {count}: {e}"))?);
            }
            Message::Truncate { options, relations }
        }
        b'Y' => Message::Type { id: r.u32("type id")?, namespace: r.string("namespace")?, name: r.string("type name")? },
        b'O' => Message::Origin { lsn: r.u64("origin lsn")?, name: r.string("origin name")? },
        _ => Message::Other { tag },
    })
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, String> {
    let id = r.u32("relation id")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = r.u16("number of columns")?;
    let mut columns = Vec::with_capacity(usize::from(count).min(r.bytes.len()));
    for i in 1..=count {
        columns.push(column(r).map_err(|e| format!("column {i} of {count}: {e}"))?);
    }
    Ok(Relation { id, namespace, name, replica_identity, columns })
}

fn column(r: &mut Reader<'_>) -> Result<Column, String> {
    Ok(Column { key: r.u8("flags")? & 1 == 1, name: r.string("name")?, type_oid: r.u32("type")?, type_modifier: r.i32("type modifier")? })
}

/// TupleData: the number of columns, then each column's kind and value.
fn tuple(r: &mut Reader<'_>, which: &str) -> Result<Tuple, String> {
    let count = r.u16("number of columns").map_err(|e| format!("{which}: {e}"))?;
    let mut datums = Vec::with_capacity(usize::from(count).min(r.bytes.len()));
    for i in 1..=count {
        datums.push(datum(r).map_err(|e| format!("{which} column {i} of {count}: {e}"))?);
    }
    Ok(datums)
}

fn datum(r: &mut Reader<'_>) -> Result<Datum, String> {
    Ok(match r.u8("kind")? {
        b'n' => Datum::Null,
        b'u' => Datum::UnchangedToast,
        b't' => {
            let text = std::str::from_utf8(r.sized("text")?).map_err(|e| format!("text is not UTF-8 ({e}); the database's encoding must be UTF8"))?;
            Datum::Text(text.to_owned())
        }
        b'b' => Datum::Binary(r.sized("value")?.to_vec()),
        other => return Err(format!("kind {} where 'n', 'u', 't' or 'b' was expected", show_byte(other))),
    })
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// Reads the body of one message from the front; every read checks what is left.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("{n} bytes of {what}, {} left", self.bytes.len()));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// An Int32 length, then that many bytes.
    fn sized(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.i32("length")?;
        let n = usize::try_from(n).map_err(|_| format!("length of {what} is negative ({n})"))?;
        self.take(n, what)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &str) -> Result<String, String> {
        let Some(end) = self.bytes.iter().position(|&b| b == 0) else {
            return Err(format!("{what}: no NUL at the end of the string, {} bytes left", self.bytes.len()));
        };
        let text = std::str::from_utf8(&self.bytes[..end]).map_err(|e| format!("{what} is not UTF-8 ({e})"))?;
        self.bytes = &self.bytes[end + 1..];
        Ok(text.to_owned())
    }

    fn expect_new_tuple(&mut self) -> Result<(), String> {
        match self.u8("tuple kind")? {
            b'N' => Ok(()),
            other => Err(format!("tuple kind {} where 'N' (the new tuple) was expected", show_byte(other))),
        }
    }
}

/// Relations seen so far in this decoding session (pgoutput sends a Relation message before the
/// first change of each relation in a session, and again when it changes).
#[derive(Debug, Default)]
pub struct Relations {
    by_id: HashMap<u32, Relation>,
}

impl Relations {
    pub fn remember(&mut self, r: Relation) {
        self.by_id.insert(r.id, r);
    }

    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.by_id.get(&id)
    }

    /// The text of column `name` in `tuple` of relation `id`: Ok(None) for NULL or unchanged
    /// TOAST; Err when the relation is unknown or the tuple's width does not match.
    pub fn text<'t>(&self, id: u32, tuple: &'t Tuple, name: &str) -> Result<Option<&'t str>, DecodeError> {
        let relation = self.get(id).ok_or_else(|| DecodeError(format!("relation {id} was not announced by a relation message")))?;
        let table = QualifiedName(relation);
        if tuple.len() != relation.columns.len() {
            return Err(DecodeError(format!("{table}: a tuple of {} columns, the relation has {}", tuple.len(), relation.columns.len())));
        }
        let at = relation.position(name).ok_or_else(|| DecodeError(format!("{table} has no column {name}")))?;
        match &tuple[at] {
            Datum::Null | Datum::UnchangedToast => Ok(None),
            Datum::Text(text) => Ok(Some(text)),
            Datum::Binary(_) => Err(DecodeError(format!("{table}.{name} came in binary; pg2es asks for text values"))),
        }
    }
}

struct QualifiedName<'r>(&'r Relation);

impl fmt::Display for QualifiedName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.namespace.as_str() {
            "" => write!(f, "pg_catalog.{}", self.0.name),
            namespace => write!(f, "{namespace}.{}", self.0.name),
        }
    }
}

/// Microseconds since 2000-01-01 (a commit time) as a UTC time, or None when out of range.
pub fn commit_time(us: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    const POSTGRES_EPOCH_UNIX_US: i64 = 946_684_800_000_000;
    chrono::DateTime::from_timestamp_micros(us.checked_add(POSTGRES_EPOCH_UNIX_US)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;
    use proptest::prelude::*;

    const CHANGES: &str = include_str!("../../tests/fixtures/pgoutput/changes.tsv");
    const EXTRAS: &str = include_str!("../../tests/fixtures/pgoutput/extras.tsv");

    const FILM_F0: &str = "00000000-0000-4000-8000-0000000000f0";
    const FILM_F1: &str = "00000000-0000-4000-8000-0000000000f1";
    const PERSON_B0: &str = "00000000-0000-4000-8000-0000000000b0";

    /// One captured row: position, transaction id and the message's bytes.
    struct Captured {
        lsn: Lsn,
        xid: u32,
        bytes: Vec<u8>,
    }

    fn unhex(hex: &str) -> Vec<u8> {
        assert!(hex.len().is_multiple_of(2), "odd hex: {hex}");
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    fn captured(fixture: &str) -> Vec<Captured> {
        fixture
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split('\t').collect();
                assert_eq!(fields.len(), 3, "{l}");
                Captured { lsn: parse_lsn(fields[0]).unwrap(), xid: fields[1].parse().unwrap(), bytes: unhex(fields[2]) }
            })
            .collect()
    }

    fn messages(fixture: &str) -> Vec<Message> {
        captured(fixture).iter().map(|c| decode(&c.bytes).unwrap()).collect()
    }

    /// The fixture's transactions: the changes between each Begin and Commit, with the relations
    /// announced so far.
    fn transactions(fixture: &str) -> (Vec<Vec<Message>>, Relations) {
        let mut relations = Relations::default();
        let mut out = Vec::new();
        let mut open: Option<Vec<Message>> = None;
        for m in messages(fixture) {
            match m {
                Message::Begin { .. } => assert!(open.replace(Vec::new()).is_none(), "begin inside a transaction"),
                Message::Commit { .. } => out.push(open.take().expect("commit without begin")),
                Message::Relation(r) => relations.remember(r),
                other => open.as_mut().expect("change outside a transaction").push(other),
            }
        }
        assert!(open.is_none(), "transaction left open");
        (out, relations)
    }

    fn relation_id(relations: &Relations, name: &str) -> u32 {
        relations.by_id.values().find(|r| r.name == name).unwrap_or_else(|| panic!("no relation {name}")).id
    }

    #[test]
    fn every_fixture_line_decodes() {
        for fixture in [CHANGES, EXTRAS] {
            let rows = captured(fixture);
            assert!(rows.len() > 5);
            for row in rows {
                decode(&row.bytes).unwrap_or_else(|e| panic!("{}: {e}", format_lsn(row.lsn)));
            }
        }
    }

    #[test]
    fn begin_and_commit_frame_each_transaction() {
        let rows = captured(CHANGES);
        let mut begun: Option<(Lsn, u32)> = None;
        let mut commits = 0;
        for row in &rows {
            match decode(&row.bytes).unwrap() {
                Message::Begin { final_lsn, commit_time_us, xid } => {
                    assert!(begun.is_none());
                    assert_eq!(xid, row.xid);
                    assert!(commit_time(commit_time_us).unwrap().year() >= 2024);
                    begun = Some((final_lsn, xid));
                }
                Message::Commit { flags, commit_lsn, end_lsn, .. } => {
                    let (final_lsn, xid) = begun.take().expect("commit without begin");
                    assert_eq!((flags, commit_lsn, xid), (0, final_lsn, row.xid));
                    // The slot reports a transaction's rows at the position after its commit:
                    // the position to confirm once the changes are stored.
                    assert_eq!(end_lsn, row.lsn);
                    assert!(end_lsn > commit_lsn);
                    commits += 1;
                }
                _ => assert_eq!(begun.map(|b| b.1), Some(row.xid), "a change outside its transaction"),
            }
        }
        assert!(begun.is_none());
        // Ten transactions on published tables; the one on public.noise sends nothing at all
        // (PostgreSQL 15 skips empty transactions), not even Begin and Commit.
        assert_eq!(commits, 10);
        assert_eq!(transactions(CHANGES).0.len(), 10);
    }

    #[test]
    fn relations_give_identity_and_key_columns() {
        let (_, relations) = transactions(CHANGES);
        let id = relation_id(&relations, "person_film_work");
        let link = relations.get(id).unwrap();
        assert_eq!((link.namespace.as_str(), link.replica_identity), ("content", b'f'));
        let names: Vec<&str> = link.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "film_work_id", "person_id", "role", "created_at", "updated_at"]);
        // Under FULL every column is part of the identity.
        assert!(link.columns.iter().all(|c| c.key));
        assert_eq!(link.columns[1].type_oid, 2950); // uuid
        assert_eq!(link.columns[3].type_oid, 25); // text
        assert_eq!(link.columns[3].type_modifier, -1);

        let film = relations.get(relation_id(&relations, "film_work")).unwrap();
        assert_eq!(film.replica_identity, b'd');
        let keys: Vec<&str> = film.columns.iter().filter(|c| c.key).map(|c| c.name.as_str()).collect();
        assert_eq!(keys, ["id"]);
        assert_eq!(film.position("title"), Some(1));
    }

    #[test]
    fn insert_gives_the_new_film() {
        let (txs, relations) = transactions(CHANGES);
        let Message::Insert { relation, new } = &txs[0][0] else { panic!("{:?}", txs[0]) };
        assert_eq!(relations.get(*relation).unwrap().name, "film_work");
        assert_eq!(relations.text(*relation, new, "id").unwrap(), Some(FILM_F1));
        assert_eq!(relations.text(*relation, new, "title").unwrap(), Some("Captured Film"));
        assert_eq!(relations.text(*relation, new, "description").unwrap(), None);
        assert_eq!(relations.text(*relation, new, "rating").unwrap(), Some("8.25"));
        assert_eq!(relations.text(*relation, new, "creation_date").unwrap(), Some("2020-02-29 12:00:00+00"));
    }

    #[test]
    fn update_under_default_identity_carries_the_new_row_only() {
        let (txs, relations) = transactions(CHANGES);
        let Message::Update { relation, old, new } = &txs[1][0] else { panic!("{:?}", txs[1]) };
        assert_eq!(*old, None);
        assert_eq!(relations.text(*relation, new, "id").unwrap(), Some(FILM_F1));
        assert_eq!(relations.text(*relation, new, "title").unwrap(), Some("Captured Film, Director's Cut"));

        let Message::Update { relation, old: None, new } = &txs[3][0] else { panic!("{:?}", txs[3]) };
        assert_eq!(relations.get(*relation).unwrap().name, "person");
        assert_eq!(relations.text(*relation, new, "id").unwrap(), Some(PERSON_B0));
        assert_eq!(relations.text(*relation, new, "full_name").unwrap(), Some("Ann Renamed"));
    }

    #[test]
    fn update_leaving_an_out_of_line_value_sends_it_as_unchanged_toast() {
        let (txs, relations) = transactions(CHANGES);
        let Message::Update { relation, old: None, new } = &txs[2][0] else { panic!("{:?}", txs[2]) };
        let film = relations.get(*relation).unwrap();
        assert_eq!(new[film.position("description").unwrap()], Datum::UnchangedToast);
        assert_eq!(relations.text(*relation, new, "description").unwrap(), None);
        assert_eq!(relations.text(*relation, new, "id").unwrap(), Some(FILM_F0));
        assert_eq!(relations.text(*relation, new, "rating").unwrap(), Some("9"));
    }

    #[test]
    fn update_under_full_identity_carries_the_whole_old_row() {
        let (txs, relations) = transactions(CHANGES);
        let Message::Update { relation, old: Some(old), new } = &txs[4][0] else { panic!("{:?}", txs[4]) };
        assert_eq!(relations.get(*relation).unwrap().name, "person_film_work");
        for (tuple, role) in [(old, "writer"), (new, "director")] {
            assert_eq!(relations.text(*relation, tuple, "film_work_id").unwrap(), Some(FILM_F0));
            assert_eq!(relations.text(*relation, tuple, "person_id").unwrap(), Some(PERSON_B0));
            assert_eq!(relations.text(*relation, tuple, "role").unwrap(), Some(role));
        }
        assert!(old.iter().all(|d| matches!(d, Datum::Text(_))));
    }

    #[test]
    fn update_of_the_key_carries_the_old_key() {
        let (txs, relations) = transactions(CHANGES);
        let Message::Update { relation, old: Some(old), new } = &txs[5][0] else { panic!("{:?}", txs[5]) };
        assert_eq!(relations.get(*relation).unwrap().name, "genre_film_work");
        assert_eq!(relations.text(*relation, old, "id").unwrap(), Some("00000000-0000-4000-8000-0000000000c1"));
        assert_eq!(relations.text(*relation, old, "film_work_id").unwrap(), None);
        assert_eq!(relations.text(*relation, new, "id").unwrap(), Some("00000000-0000-4000-8000-0000000000c2"));
        assert!(relations.text(*relation, new, "film_work_id").unwrap().is_some());
    }

    #[test]
    fn deletes_carry_what_the_replica_identity_holds() {
        let (txs, relations) = transactions(CHANGES);
        let old_of = |m: &Message| match m {
            Message::Delete { relation, old } => (*relation, old.clone()),
            other => panic!("{other:?}"),
        };

        // genre_film_work, default identity: the link's own id and nothing else, so not the film.
        let (gfw, old) = old_of(&txs[6][0]);
        assert_eq!(relations.get(gfw).unwrap().name, "genre_film_work");
        assert_eq!(relations.text(gfw, &old, "id").unwrap(), Some("00000000-0000-4000-8000-0000000000c0"));
        assert_eq!(relations.text(gfw, &old, "film_work_id").unwrap(), None);
        assert_eq!(old[1..], [Datum::Null, Datum::Null, Datum::Null, Datum::Null]);

        // person, default identity: its id; the cascade to person_film_work (FULL) in the same
        // transaction gives each link's whole row, the film's id included.
        let (person, old) = old_of(&txs[7][0]);
        assert_eq!(relations.get(person).unwrap().name, "person");
        assert_eq!(relations.text(person, &old, "id").unwrap(), Some(PERSON_B0));
        assert_eq!(relations.text(person, &old, "full_name").unwrap(), None);
        assert_eq!(txs[7].len(), 3);
        for (m, role) in txs[7][1..].iter().zip(["actor", "director"]) {
            let (link, old) = old_of(m);
            assert_eq!(relations.get(link).unwrap().name, "person_film_work");
            assert_eq!(relations.text(link, &old, "film_work_id").unwrap(), Some(FILM_F0));
            assert_eq!(relations.text(link, &old, "role").unwrap(), Some(role));
        }

        // film_work, default identity: the film's id.
        let (film, old) = old_of(&txs[8][0]);
        assert_eq!(relations.get(film).unwrap().name, "film_work");
        assert_eq!(relations.text(film, &old, "id").unwrap(), Some(FILM_F1));
        assert_eq!(relations.text(film, &old, "title").unwrap(), None);
    }

    #[test]
    fn truncate_lists_relation_ids() {
        let (txs, relations) = transactions(CHANGES);
        assert_eq!(txs[9], [Message::Truncate { options: 0, relations: vec![relation_id(&relations, "genre_film_work")] }]);
        // The relation is announced again before the truncate: TRUNCATE invalidates its cache entry.
        let rows = messages(CHANGES);
        let announced = rows.iter().filter(|m| matches!(m, Message::Relation(r) if r.name == "genre_film_work")).count();
        assert_eq!(announced, 2);
    }

    #[test]
    fn type_origin_and_logical_messages() {
        let all = messages(EXTRAS);
        assert!(all.contains(&Message::Other { tag: b'M' }));
        let Some(Message::Type { id, namespace, name }) = all.iter().find(|m| matches!(m, Message::Type { .. })) else { panic!("{all:?}") };
        assert_eq!((namespace.as_str(), name.as_str()), ("public", "mood"));
        let Some(Message::Relation(moods)) = all.iter().find(|m| matches!(m, Message::Relation(_))) else { panic!("{all:?}") };
        assert_eq!(moods.columns[1].type_oid, *id);
        assert!(all.contains(&Message::Origin { lsn: 0xAB_CDEF, name: "pg2es_capture_origin".into() }));

        let (txs, relations) = transactions(EXTRAS);
        let Message::Insert { relation, new } = &txs[1][1] else { panic!("{:?}", txs[1]) };
        assert_eq!(relations.text(*relation, new, "mood").unwrap(), Some("tense"));
    }

    #[test]
    fn every_prefix_of_a_message_is_an_error() {
        for row in captured(CHANGES).into_iter().chain(captured(EXTRAS)) {
            for end in 0..row.bytes.len() {
                let prefix = &row.bytes[..end];
                match decode(prefix) {
                    // A skipped message is not read: any prefix of it is skipped too.
                    Ok(Message::Other { tag: b'M' }) if end > 0 => {}
                    Ok(m) => panic!("{}: {end} of {} bytes decoded as {m:?}", format_lsn(row.lsn), row.bytes.len()),
                    Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn errors_say_what_was_expected_where() {
        let insert = captured(CHANGES).into_iter().map(|c| c.bytes).find(|b| b[0] == b'I').unwrap();
        // Tag, relation id, 'N', column count, then the first column's kind and 2 of its 4 length bytes.
        let e = decode(&insert[..1 + 4 + 1 + 2 + 1 + 2]).unwrap_err();
        assert_eq!(e.to_string(), "pgoutput message: insert: new tuple column 1 of 8: 4 bytes of length, 2 left");
        let mut longer = insert.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err().0, "insert: 1 bytes after the end of the message");
        assert_eq!(decode(&[]).unwrap_err().0, "empty message");
    }

    #[test]
    fn bad_values_are_errors() {
        // Relation id 1, 'N', one column of text 0xff: not UTF-8.
        let bad_text = [b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0, 0, 0, 1, 0xff];
        assert!(decode(&bad_text).unwrap_err().0.contains("not UTF-8"));
        let negative_length = [b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
        assert!(decode(&negative_length).unwrap_err().0.contains("negative"));
        let unknown_kind = [b'I', 0, 0, 0, 1, b'N', 0, 1, b'x'];
        assert!(decode(&unknown_kind).unwrap_err().0.contains("'x'"));
        let bad_name = [b'Y', 0, 0, 0, 1, 0xc3, 0x28, 0, b'a', 0];
        assert!(decode(&bad_name).unwrap_err().0.contains("namespace is not UTF-8"));
        let unterminated = [b'O', 0, 0, 0, 0, 0, 0, 0, 1, b'a', b'b'];
        assert!(decode(&unterminated).unwrap_err().0.contains("no NUL"));
        // A count of four billion relations with none present: an error, not a huge allocation.
        assert!(decode(&[b'T', 0xff, 0xff, 0xff, 0xff, 0]).is_err());
        assert_eq!(decode(&[b'S', 1, 2]).unwrap(), Message::Other { tag: b'S' });
        assert_eq!(decode(b"Z").unwrap(), Message::Other { tag: b'Z' });
    }

    #[test]
    fn text_of_an_unknown_relation_or_a_wrong_width_is_an_error() {
        let (txs, relations) = transactions(CHANGES);
        let Message::Insert { relation, new } = &txs[0][0] else { panic!() };
        assert!(relations.text(relation + 1_000_000, new, "id").unwrap_err().0.contains("not announced"));
        assert!(relations.text(*relation, &new[1..].to_vec(), "id").unwrap_err().0.contains("a tuple of 7 columns, the relation has 8"));
        assert!(relations.text(*relation, new, "nope").unwrap_err().0.contains("content.film_work has no column nope"));
        let mut binary = new.clone();
        binary[0] = Datum::Binary(vec![1]);
        assert!(relations.text(*relation, &binary, "id").is_err());
    }

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("1/1EE7BA0"), Some(0x1_01EE_7BA0));
        assert_eq!(format_lsn(0x1_01EE_7BA0), "1/1EE7BA0");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(parse_lsn("1EE7BA0"), None);
        assert_eq!(parse_lsn("1/x"), None);
        assert_eq!(commit_time(0).unwrap().to_rfc3339(), "2000-01-01T00:00:00+00:00");
        assert_eq!(commit_time(i64::MAX), None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_bodies_of_known_tags_never_panic(tag in proptest::sample::select(b"BCRIUDTYO".to_vec()), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![tag];
            bytes.extend(body);
            let _ = decode(&bytes);
        }

        #[test]
        fn altered_fixture_bytes_never_panic(line in 0usize..1000, at in 0usize..1000, byte in any::<u8>()) {
            let rows = captured(CHANGES);
            let mut bytes = rows[line % rows.len()].bytes.clone();
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = decode(&bytes);
        }
    }
}
