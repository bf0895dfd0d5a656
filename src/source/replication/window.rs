//! The stream's window: one peek of the slot decoded ([`Peek`]), and what it names for one
//! document ([`window_of`]): the records to read again, a reload after a `TRUNCATE`, and the
//! position the document has read up to. A peek starts where the slot is confirmed, which may be
//! before a document's own position (the slot is shared by the documents of a run and moves at
//! the pace of the slowest): a document takes only the transactions that commit at or after its
//! position, as Postgres itself skips those before the slot's position.

use std::collections::BTreeSet;

use futures_util::StreamExt;

use super::super::pgoutput::{self, format_lsn, Lsn, Message, Relations};
use super::super::PgSource;
use crate::catalog::Document;
use crate::error::{Error, Result};
use crate::position::{Key, KeyKind};

/// Changes (rows of the peek) decoded per cycle at most; whole transactions are always read, and
/// what is left is read by the next cycle right away.
pub(super) const WINDOW_CHANGES: i32 = 20_000;

/// What one window of the stream names for one document.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Root keys named by the changes themselves.
    pub roots: BTreeSet<Key>,
    /// Changed rows, by table, whose roots are found by the document's fan-out queries.
    pub fanned: std::collections::BTreeMap<String, BTreeSet<Key>>,
    /// A table was truncated.
    pub reload: bool,
    /// The end of the last transaction read.
    pub last_commit_end: Option<Lsn>,
    /// Every change before the window's end was read.
    pub exhausted: bool,
    /// The commit time (Postgres microseconds) of the oldest transaction in the window.
    pub oldest_commit: Option<i64>,
}

/// One peek of a slot, decoded: the messages of the transactions committed before `until`
/// (at most [`WINDOW_CHANGES`] rows), from where the slot was confirmed then.
#[derive(Debug)]
pub(super) struct Peek {
    pub until: Lsn,
    pub messages: Vec<Message>,
    /// Every transaction committed before `until` is in it (fewer than `WINDOW_CHANGES` rows).
    pub exhausted: bool,
}

const PEEK_SQL: &str = "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
     'proto_version', '1', 'publication_names', $4)";

/// The slot's changes committed before `until`, or (inner `Err`) why the stream cannot be
/// followed: the publication no longer exists.
pub(super) async fn peek(pg: &PgSource, slot: &str, publication: &str, until: Lsn) -> Result<std::result::Result<Peek, String>> {
    let until_text = format_lsn(until);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&slot, &until_text, &WINDOW_CHANGES, &publication];
    let lost = |e: &tokio_postgres::Error| {
        let db = e.as_db_error()?;
        (db.code() == &tokio_postgres::error::SqlState::UNDEFINED_OBJECT && db.message().contains("publication")).then(|| db.message().to_string())
    };
    let rows = match pg.client().query_raw(PEEK_SQL, params).await {
        Ok(rows) => rows,
        Err(e) => return lost(&e).map(Err).ok_or_else(|| Error::postgres("read the replication slot")(e)),
    };
    futures_util::pin_mut!(rows);
    let mut messages = Vec::new();
    while let Some(row) = rows.next().await {
        let row = match row {
            Ok(row) => row,
            Err(e) => return lost(&e).map(Err).ok_or_else(|| Error::postgres("read the replication slot")(e)),
        };
        let data: &[u8] = row.try_get(0).map_err(Error::postgres("read the replication slot"))?;
        messages.push(pgoutput::decode(data).map_err(|e| Error::SourceSetup(e.to_string()))?);
    }
    let exhausted = messages.len() < WINDOW_CHANGES as usize;
    Ok(Ok(Peek { until, messages, exhausted }))
}

/// What `peek` names for `doc`: the transactions that commit in `[from, until)` (by the commit
/// record's start, Postgres's own rule for a slot's position and a peek's end), or (`Err`) why
/// the records a change touched cannot be named (a column pg2es reads is gone from the table, a
/// link table's replica identity does not carry its root's key). Relations are taken from every
/// transaction: each is announced once per peek, before its first change.
pub(super) fn window_of(peek: &Peek, doc: &Document, schema: &str, from: Lsn, until: Lsn) -> std::result::Result<Window, String> {
    let (mut window, mut relations) = (Window::default(), Relations::default());
    // Whether the transaction being read is in this document's window.
    let mut taken = false;
    // A transaction commits at or after `until`: the window is whole up to there.
    let mut past_until = false;
    for message in &peek.messages {
        match message {
            Message::Relation(_) => {}
            Message::Begin { final_lsn, commit_time_us, .. } => {
                taken = (from..until).contains(final_lsn);
                if taken {
                    window.oldest_commit = Some(window.oldest_commit.map_or(*commit_time_us, |t| t.min(*commit_time_us)));
                }
                past_until |= *final_lsn >= until;
                continue;
            }
            _ if !taken => continue,
            _ => {}
        }
        apply(&mut window, &mut relations, doc, schema, message)?;
    }
    window.exhausted = peek.exhausted || past_until;
    Ok(window)
}

/// What one message adds to the window; `Err`: the records a change touched cannot be named.
pub(super) fn apply(window: &mut Window, relations: &mut Relations, doc: &Document, schema: &str, message: &Message) -> std::result::Result<(), String> {
    let ours = |relations: &Relations, id: u32| relations.get(id).is_some_and(|r| r.namespace == schema && doc.stream(&r.name).is_some());
    match message {
        Message::Relation(r) => relations.remember(r.clone()),
        Message::Commit { end_lsn, .. } => window.last_commit_end = Some(*end_lsn),
        Message::Truncate { relations: ids, .. } => window.reload |= ids.iter().any(|id| ours(relations, *id)),
        Message::Insert { relation, new } if ours(relations, *relation) => note(window, relations, doc, *relation, new, false)?,
        Message::Update { relation, new, old } if ours(relations, *relation) => {
            identity_names_roots(relations, doc, *relation)?;
            note(window, relations, doc, *relation, new, false)?;
            if let Some(old) = old {
                note(window, relations, doc, *relation, old, true)?;
            }
        }
        Message::Delete { relation, old } if ours(relations, *relation) => {
            identity_names_roots(relations, doc, *relation)?;
            note(window, relations, doc, *relation, old, true)?;
        }
        _ => {}
    }
    Ok(())
}

/// An update or delete of a table whose replica identity (as the stream announced it) does not
/// carry the columns that name the row's roots: the old row's roots are not in the stream.
fn identity_names_roots(relations: &Relations, doc: &Document, relation: u32) -> std::result::Result<(), String> {
    let Some(r) = relations.get(relation) else { return Ok(()) };
    let Some(stream) = doc.stream(&r.name) else { return Ok(()) };
    for column in stream.direct.iter().flatten() {
        let carried = r.replica_identity == b'f' || r.columns.iter().any(|c| c.key && &c.name == column);
        if !carried {
            return Err(format!(
                "an update or delete of {}.{} was made while its replica identity did not carry {column}, so its {} record is unknown",
                r.namespace, r.name, doc.name
            ));
        }
    }
    Ok(())
}

/// The roots one row version of a table of the document names. `gone`: an old row (deleted, or
/// before an update).
fn note(window: &mut Window, relations: &Relations, doc: &Document, relation: u32, tuple: &pgoutput::Tuple, gone: bool) -> std::result::Result<(), String> {
    // The key in these columns; `None` if one of them is NULL.
    let key = |columns: &[String], kinds: &[KeyKind]| -> std::result::Result<Option<Key>, String> {
        let mut parts = Vec::with_capacity(columns.len());
        for (column, kind) in columns.iter().zip(kinds) {
            let text = relations.text(relation, tuple, column).map_err(|e| format!("a change cannot be read: {e} (renamed or dropped by a migration?)"))?;
            let Some(t) = text else { return Ok(None) };
            parts.push(kind.parse(t).ok_or_else(|| format!("{column} {t:?} is not a key of {} (its type changed?)", doc.name))?);
        }
        Ok(Some(Key::new(parts)))
    };
    let Some(stream) = relations.get(relation).and_then(|r| doc.stream(&r.name)) else { return Ok(()) };
    for columns in &stream.direct {
        window.roots.extend(key(columns, &doc.kinds)?);
    }
    // A changed related row changes the records that contain it. A deleted one's links are
    // deleted in the same transaction (the foreign keys cascade, or set null on the root), and
    // those changes name the records.
    if !gone && !stream.fan_out.is_empty() {
        if let Some(id) = key(&stream.key[..1], &stream.kinds[..1])? {
            window.fanned.entry(stream.table.clone()).or_default().insert(id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movies() -> Document {
        crate::catalog::testing::cinema().remove(0)
    }

    fn relation(id: u32, name: &str, columns: &[&str]) -> Message {
        Message::Relation(pgoutput::Relation {
            id,
            namespace: "content".into(),
            name: name.into(),
            replica_identity: b'f',
            columns: columns.iter().map(|c| pgoutput::Column { key: true, name: c.to_string(), type_oid: 25, type_modifier: -1 }).collect(),
        })
    }

    fn text(values: &[&str]) -> pgoutput::Tuple {
        values.iter().map(|v| pgoutput::Datum::Text(v.to_string())).collect()
    }

    const A: &str = "00000000-0000-0000-0000-00000000000a";
    const B: &str = "00000000-0000-0000-0000-00000000000b";
    const P: &str = "00000000-0000-0000-0000-0000000000ff";

    #[test]
    fn changes_name_the_records_to_read_again() {
        let (mut w, mut r, doc) = (Window::default(), Relations::default(), movies());
        for m in [
            relation(1, "film_work", &["id", "title"]),
            relation(2, "person_film_work", &["id", "film_work_id", "person_id"]),
            relation(3, "person", &["id", "full_name"]),
            Message::Insert { relation: 1, new: text(&[A, "t"]) },
            // A link moved from film A to film B names both.
            Message::Update { relation: 2, old: Some(text(&[P, A, P])), new: text(&[P, B, P]) },
            Message::Update { relation: 3, old: None, new: text(&[P, "Renamed"]) },
            Message::Delete { relation: 3, old: text(&[B, "Gone"]) },
            Message::Commit { flags: 0, commit_lsn: 10, end_lsn: 20, commit_time_us: 0 },
        ] {
            apply(&mut w, &mut r, &doc, "content", &m).unwrap();
        }
        let roots: Vec<String> = w.roots.iter().map(Key::to_string).collect();
        assert_eq!(roots, [A, B]);
        assert_eq!(w.fanned["person"].iter().map(Key::to_string).collect::<Vec<_>>(), [P]);
        assert_eq!((w.last_commit_end, w.reload), (Some(20), false));
        apply(&mut w, &mut r, &doc, "content", &Message::Truncate { options: 0, relations: vec![2] }).unwrap();
        assert!(w.reload);
        // Another schema's relation (same names) is not ours.
        let mut other = Window::default();
        let mut rel = Relations::default();
        apply(&mut other, &mut rel, &doc, "elsewhere", &relation(1, "film_work", &["id"])).unwrap();
        apply(&mut other, &mut rel, &doc, "elsewhere", &Message::Insert { relation: 1, new: text(&[A]) }).unwrap();
        assert!(other.roots.is_empty());
    }

    #[test]
    fn a_change_whose_record_is_not_in_the_stream_is_reported() {
        let (mut w, mut r, doc) = (Window::default(), Relations::default(), movies());
        // A link table with the default replica identity: a delete carries only its key.
        let mut link = relation(2, "genre_film_work", &["id", "film_work_id", "genre_id"]);
        if let Message::Relation(rel) = &mut link {
            rel.replica_identity = b'd';
            for c in &mut rel.columns {
                c.key = c.name == "id";
            }
        }
        apply(&mut w, &mut r, &doc, "content", &link).unwrap();
        apply(&mut w, &mut r, &doc, "content", &Message::Insert { relation: 2, new: text(&[P, A, P]) }).unwrap();
        let err = apply(&mut w, &mut r, &doc, "content", &Message::Delete { relation: 2, old: text(&[P, "", ""]) }).unwrap_err();
        assert!(err.contains("content.genre_film_work") && err.contains("replica identity"), "{err}");
        // A column pg2es reads, renamed by a migration.
        apply(&mut w, &mut r, &doc, "content", &relation(3, "person_film_work", &["id", "film_id", "person_id"])).unwrap();
        let err = apply(&mut w, &mut r, &doc, "content", &Message::Insert { relation: 3, new: text(&[P, A, P]) }).unwrap_err();
        assert!(err.contains("has no column film_work_id"), "{err}");
    }

    /// A peek shared by documents at different positions: each takes the transactions that
    /// commit from its own position up to its window's end, with relations from any of them.
    #[test]
    fn a_document_takes_the_transactions_from_its_own_position() {
        let doc = movies();
        let txn = |final_lsn: u64, end_lsn: u64, id: &str| {
            vec![
                Message::Begin { final_lsn, commit_time_us: 0, xid: 1 },
                Message::Insert { relation: 1, new: text(&[id, "t"]) },
                Message::Commit { flags: 0, commit_lsn: final_lsn, end_lsn, commit_time_us: 0 },
            ]
        };
        let mut messages = vec![relation(1, "film_work", &["id", "title"])];
        for (f, e, id) in [(10, 20, A), (30, 40, B), (50, 60, P)] {
            messages.extend(txn(f, e, id));
        }
        let roots = |w: &Window| w.roots.iter().map(Key::to_string).collect::<Vec<_>>();
        let whole = Peek { until: 100, messages, exhausted: true };
        let w = window_of(&whole, &doc, "content", 0, 100).unwrap();
        assert_eq!((roots(&w), w.exhausted, w.last_commit_end), (vec![A.to_string(), B.to_string(), P.to_string()], true, Some(60)));
        // From 20 (the first transaction's end) up to 50: only the second; whole up to 50.
        let w = window_of(&whole, &doc, "content", 20, 50).unwrap();
        assert_eq!((roots(&w), w.exhausted, w.last_commit_end), (vec![B.to_string()], true, Some(40)));
        // Past every transaction: nothing, and nothing more.
        let w = window_of(&whole, &doc, "content", 60, 100).unwrap();
        assert!(w.roots.is_empty() && w.exhausted && w.last_commit_end.is_none());
        // A peek cut at WINDOW_CHANGES: whole only up to a transaction that commits past the end.
        let cut = Peek { exhausted: false, ..whole };
        assert!(!window_of(&cut, &doc, "content", 20, 100).unwrap().exhausted);
        assert!(window_of(&cut, &doc, "content", 20, 50).unwrap().exhausted);
    }
}
