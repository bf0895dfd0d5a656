//! The shared vocabulary of positions: WAL positions (LSNs) and their text form, and the error of
//! a position that would move back. A leaf: it imports nothing of pg2es, so the checkpoint, the
//! sources and the errors can all use it without reaching into each other.

/// A WAL position (log sequence number).
pub type Lsn = u64;

/// An LSN as Postgres writes it (`1/1EE7BA0`).
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// An LSN as Postgres writes it (`1/1EE7BA0`), or None.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (high, low) = text.split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// A delta that does not fit the state: applying it would move progress back, or it belongs to
/// a full load that is not (or already) under way. Two writers, or a bug: nothing is saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("{what} would move back from {from} to {to}")]
    Backwards { what: String, from: String, to: String },
    #[error("a full load is already under way")]
    FullLoadUnderWay,
    #[error("no full load is under way")]
    NoFullLoad,
}

/// How a key column is read and compared: integers as numbers, every other key type (`uuid`,
/// `text`, `varchar`) as Postgres's text of it, compared by its bytes (`COLLATE "C"` in SQL; for
/// a uuid, byte order of its canonical text is its own order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Int,
    Uuid,
    Text,
}

impl KeyKind {
    /// The part a key of this kind sorts after every other: where a position before every row is.
    pub fn least(self) -> KeyPart {
        match self {
            KeyKind::Int => KeyPart::Int(i64::MIN),
            KeyKind::Uuid => KeyPart::Text("00000000-0000-0000-0000-000000000000".into()),
            KeyKind::Text => KeyPart::Text(String::new()),
        }
    }

    /// The part `text` stands for when it is the canonical text of one (a uuid in lower case, an
    /// integer without sign or zeros it does not need).
    pub fn parse(self, text: &str) -> Option<KeyPart> {
        match self {
            KeyKind::Int => text.parse::<i64>().ok().filter(|i| i.to_string() == text).map(KeyPart::Int),
            KeyKind::Uuid => uuid::Uuid::parse_str(text).ok().filter(|u| u.to_string() == text).map(|_| KeyPart::Text(text.to_string())),
            KeyKind::Text => Some(KeyPart::Text(text.to_string())),
        }
    }
}

/// One column's value of a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum KeyPart {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for KeyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPart::Int(i) => write!(f, "{i}"),
            KeyPart::Text(t) => f.write_str(t),
        }
    }
}

/// A row's key: the values of its key columns, in their order. Ordered part by part as Postgres
/// orders them (see [`KeyKind`]). Its text ([`Display`](std::fmt::Display)), a document's `_id`,
/// is the value's own text for one column; for several, each part with `%` written `%25` and `|`
/// written `%7C`, joined by `|` (`7|a%7Cb` is `(7, 'a|b')`), which [`Key::parse`] reads back.
/// Serialized as the value itself for one column (a uuid key as the string it always was), as
/// an array for several.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Vec<KeyPart>);

impl Key {
    pub fn new(parts: Vec<KeyPart>) -> Key {
        Key(parts)
    }

    pub fn int(i: i64) -> Key {
        Key(vec![KeyPart::Int(i)])
    }

    pub fn text(t: impl Into<String>) -> Key {
        Key(vec![KeyPart::Text(t.into())])
    }

    pub fn parts(&self) -> &[KeyPart] {
        &self.0
    }

    /// The key before every key of these kinds.
    pub fn least(kinds: &[KeyKind]) -> Key {
        Key(kinds.iter().map(|k| k.least()).collect())
    }

    /// The key whose text is `text`, for columns of these kinds: `None` unless `text` is exactly
    /// the text such a key has (so that only pg2es's own `_id`s are read as keys).
    pub fn parse(text: &str, kinds: &[KeyKind]) -> Option<Key> {
        if let [kind] = kinds {
            return kind.parse(text).map(|p| Key(vec![p]));
        }
        let pieces: Vec<&str> = text.split('|').collect();
        if pieces.len() != kinds.len() {
            return None;
        }
        let mut parts = Vec::with_capacity(kinds.len());
        for (piece, kind) in pieces.into_iter().zip(kinds) {
            parts.push(kind.parse(&unescape(piece)?)?);
        }
        let key = Key(parts);
        (key.to_string() == text).then_some(key)
    }
}

fn escape(text: &str) -> String {
    text.replace('%', "%25").replace('|', "%7C")
}

fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("%25") => out.push('%'),
            Some("%7C") => out.push('|'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            parts => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    f.write_str(&escape(&p.to_string()))?;
                }
                Ok(())
            }
        }
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            parts => parts.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(KeyPart),
            Many(Vec<KeyPart>),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::One(p) => Key(vec![p]),
            Repr::Many(parts) => Key(parts),
        })
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn one_column_keys_are_their_own_text() {
        assert_eq!(Key::int(42).to_string(), "42");
        assert_eq!(Key::parse("42", &[KeyKind::Int]), Some(Key::int(42)));
        for not in ["042", "+42", "4 2", "", "99999999999999999999"] {
            assert_eq!(Key::parse(not, &[KeyKind::Int]), None, "{not:?}");
        }
        let u = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(Key::parse(u, &[KeyKind::Uuid]), Some(Key::text(u)));
        assert_eq!(Key::parse(&u.to_uppercase(), &[KeyKind::Uuid]), None);
        assert_eq!(Key::parse("a|b%", &[KeyKind::Text]), Some(Key::text("a|b%")));
        assert_eq!(Key::text("a|b%").to_string(), "a|b%");
    }

    #[test]
    fn composite_keys_are_escaped_joined_and_read_back() {
        let kinds = [KeyKind::Int, KeyKind::Text];
        let k = Key::new(vec![KeyPart::Int(7), KeyPart::Text("a|b%7C".into())]);
        assert_eq!(k.to_string(), "7|a%7Cb%257C");
        assert_eq!(Key::parse(&k.to_string(), &kinds), Some(k));
        for not in ["7", "7|a|b", "x|a", "7|a%7", "7|a%41"] {
            assert_eq!(Key::parse(not, &kinds), None, "{not:?}");
        }
    }

    #[test]
    fn keys_order_as_postgres_orders_them_and_serialize_as_before() {
        assert!(Key::int(9) < Key::int(10));
        assert!(Key::least(&[KeyKind::Int]) < Key::int(i64::MIN + 1));
        assert!(Key::least(&[KeyKind::Text]) <= Key::text(""));
        let u = Key::text("67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"67e55044-10b1-426f-9247-bb680e5fe0c8\"");
        assert_eq!(serde_json::from_str::<Key>("\"67e55044-10b1-426f-9247-bb680e5fe0c8\"").unwrap(), u);
        let k = Key::new(vec![KeyPart::Int(7), KeyPart::Text("x".into())]);
        assert_eq!(serde_json::to_string(&k).unwrap(), "[7,\"x\"]");
        assert_eq!(serde_json::from_str::<Key>("[7,\"x\"]").unwrap(), k);
        assert_eq!(serde_json::from_str::<Key>("12").unwrap(), Key::int(12));
    }
}
