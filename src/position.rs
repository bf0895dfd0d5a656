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
