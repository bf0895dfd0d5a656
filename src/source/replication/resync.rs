//! Where a document reads the stream from this cycle, decided from what was found: a pure
//! function of the saved position, the setup recorded with it and the setup now, the run's slot,
//! and the slot the position was read through when that is another one (a per-document slot of
//! an earlier release, or a `PG_REPLICATION_SLOT` changed since). Either the stream can be
//! followed from the saved position, or the document takes a fresh one (`Resync`) and loads every
//! record again.

use super::super::pgoutput::{format_lsn, Lsn};
use super::setup::{Found, Slot};
use crate::checkpoint::StreamSetup;
use crate::settings::{ETL_STATE_FILE, PG_REPLICATION_SLOT};

/// What one document found at the start of a cycle.
#[derive(Debug, Clone)]
pub(super) struct Observed<'a> {
    /// The state's position (`None`: never read the stream).
    pub saved: Option<Lsn>,
    /// The setup recorded with it (`None`: written before the setup was recorded).
    pub recorded: Option<&'a StreamSetup>,
    /// The setup as it is now, with the run's slot.
    pub setup: &'a StreamSetup,
    /// The run's slot. Created by this run: whatever position was saved against it before is not
    /// in it.
    pub slot: Slot,
    /// The slot the position was read through, when it is not the run's: its name and what was
    /// found of it.
    pub previous: Option<(&'a str, Found)>,
    /// The position was already found taken over by another consumer once in this process.
    pub took_over: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// No position yet: the stream starts where the run's slot is, and the setup is recorded.
    Start { at: Lsn },
    /// Read the run's slot from the saved position (and record the setup, if it was not).
    Follow { record_setup: bool },
    /// Read the slot the position was read through, moved to the saved position first when it
    /// is behind it: the run's slot starts after the saved position.
    Previous { slot: String, advance: Option<Lsn> },
    /// The saved position is also one of the run's slot: read it from now on (the setup is
    /// recorded with it) and drop the previous slot, if it is still there.
    Switch { drop: Option<String> },
    /// The stream cannot be followed from the saved position: take a fresh one, for this reason.
    Resync(String),
    /// As `Resync`: a slot was moved past the saved position by another consumer.
    TakenOver(String),
    /// A slot was moved past the saved position a second time while this process ran: two
    /// consumers read it at once.
    Stop(String),
}

/// The previous slot left behind by a decision, to drop: the state is read through the run's
/// slot from now on.
pub(super) fn left_behind(decision: &Decision, previous: Option<(&str, Found)>) -> Option<String> {
    match (decision, previous) {
        (Decision::Previous { .. } | Decision::Stop(_), _) | (_, None | Some((_, Found::Missing))) => None,
        (Decision::Switch { drop }, _) => drop.clone(),
        (_, Some((name, _))) => Some(name.to_string()),
    }
}

pub(super) fn decide(o: &Observed) -> Decision {
    let Some(saved) = o.saved else { return Decision::Start { at: o.slot.confirmed() } };
    if let Some(recorded) = o.recorded {
        // The slot is decided below; the objects must be the same.
        let objects = StreamSetup { slot: o.setup.slot.clone(), objects: recorded.objects.clone() };
        if objects != *o.setup {
            return Decision::Resync(format!(
                "the stream was read through other objects: {} (a table recreated or taken out of the publication, the publication dropped or altered): changes may be missing",
                objects.differences(o.setup).join("; ")
            ));
        }
    }
    let moved_past = |slot: &str, confirmed: Lsn| {
        if o.took_over {
            return Decision::Stop(format!(
                "replication slot {slot} was moved past this state's position again while pg2es ran ({} > {}): another consumer reads it at the same time. Give each pg2es its own {PG_REPLICATION_SLOT} (and {ETL_STATE_FILE}), then start again: this state then loads every record from its own slot",
                format_lsn(confirmed),
                format_lsn(saved)
            ));
        }
        Decision::TakenOver(format!(
            "slot {slot} is confirmed up to {}, past this state's {}: another consumer (a second pg2es with another {ETL_STATE_FILE}?) read it, so the changes between are missing here; give each pg2es its own {PG_REPLICATION_SLOT}",
            format_lsn(confirmed),
            format_lsn(saved)
        ))
    };
    let shared = o.slot.confirmed();
    if let Some((previous, found)) = o.previous {
        // The run's slot has every change from where it is confirmed: from a position at or after
        // that point it can be read instead.
        if saved >= shared {
            return Decision::Switch { drop: matches!(found, Found::At(_) | Found::Lost).then(|| previous.to_string()) };
        }
        return match found {
            Found::At(confirmed) if confirmed > saved => moved_past(previous, confirmed),
            Found::At(confirmed) => Decision::Previous { slot: previous.to_string(), advance: (saved > confirmed).then_some(saved) },
            Found::Missing | Found::Lost => Decision::Resync(format!(
                "the state was read through replication slot {previous}, which is gone (dropped or invalidated), and slot {} starts after its position ({} > {}): changes between are in neither",
                o.setup.slot,
                format_lsn(shared),
                format_lsn(saved)
            )),
        };
    }
    match o.slot {
        // Created by this run after the position was saved (a position saved since is in it).
        Slot::Created(at) if at > saved => {
            Decision::Resync("the replication slot was gone (dropped or invalidated) and is created again: changes made meanwhile are not in it".to_string())
        }
        Slot::Existing(confirmed) if confirmed > saved => moved_past(&o.setup.slot, confirmed),
        Slot::Created(_) | Slot::Existing(_) => Decision::Follow { record_setup: o.recorded.is_none() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(slot: &str, table_oid: &str) -> StreamSetup {
        StreamSetup { slot: slot.into(), objects: [("table content.t".to_string(), format!("oid {table_oid} membership 1"))].into() }
    }

    /// The decision's kind, for the table.
    fn kind(d: &Decision) -> String {
        match d {
            Decision::Start { at } => format!("start at {at}"),
            Decision::Follow { record_setup } => format!("follow{}", if *record_setup { " and record" } else { "" }),
            Decision::Previous { slot, advance } => format!("previous {slot}{}", advance.map(|a| format!(" advanced to {a}")).unwrap_or_default()),
            Decision::Switch { drop } => format!("switch{}", drop.as_ref().map(|d| format!(", drop {d}")).unwrap_or_default()),
            Decision::Resync(why) | Decision::TakenOver(why) => format!("resync: {}", why.split_whitespace().take(4).collect::<Vec<_>>().join(" ")),
            Decision::Stop(why) => format!("stop: {}", why.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        }
    }

    #[test]
    fn decisions() {
        let now = setup("run", "1");
        let (same, old_slot, other_table, old_other_table) = (setup("run", "1"), setup("old", "1"), setup("run", "2"), setup("old", "2"));
        type Row<'a> = (&'a str, Option<Lsn>, Option<&'a StreamSetup>, Slot, Option<(&'a str, Found)>, bool, &'a str);
        let rows: Vec<Row> = vec![
            ("a fresh state starts where the slot is", None, None, Slot::Created(50), None, false, "start at 50"),
            ("so does one after polling", None, None, Slot::Existing(70), None, false, "start at 70"),
            ("the slot at the position", Some(100), Some(&same), Slot::Existing(100), None, false, "follow"),
            ("the slot behind it (shared, or not advanced yet)", Some(100), Some(&same), Slot::Existing(60), None, false, "follow"),
            ("a state written before setups were recorded", Some(100), None, Slot::Existing(100), None, false, "follow and record"),
            ("a recreated table", Some(100), Some(&other_table), Slot::Existing(100), None, false, "resync: the stream was read"),
            ("the slot moved past it", Some(100), Some(&same), Slot::Existing(120), None, false, "resync: slot run is confirmed"),
            ("the slot moved past it twice", Some(100), Some(&same), Slot::Existing(120), None, true, "stop: replication slot run"),
            ("the slot gone and created again", Some(100), Some(&same), Slot::Created(150), None, false, "resync: the replication slot was"),
            ("a position saved since this run created the slot", Some(160), Some(&same), Slot::Created(150), None, false, "follow"),
            // From a per-document slot (an earlier release), or another PG_REPLICATION_SLOT.
            (
                "the run's slot starts before the position",
                Some(100),
                Some(&old_slot),
                Slot::Existing(90),
                Some(("old", Found::At(100))),
                false,
                "switch, drop old",
            ),
            ("the run's slot starts after it", Some(100), Some(&old_slot), Slot::Existing(130), Some(("old", Found::At(100))), false, "previous old"),
            (
                "the previous slot not advanced yet",
                Some(100),
                Some(&old_slot),
                Slot::Created(130),
                Some(("old", Found::At(80))),
                false,
                "previous old advanced to 100",
            ),
            (
                "the previous slot moved past it",
                Some(100),
                Some(&old_slot),
                Slot::Existing(130),
                Some(("old", Found::At(110))),
                false,
                "resync: slot old is confirmed",
            ),
            ("the previous slot gone, the run's before it", Some(100), Some(&old_slot), Slot::Existing(100), Some(("old", Found::Missing)), false, "switch"),
            (
                "the previous slot gone, the run's after it",
                Some(100),
                Some(&old_slot),
                Slot::Existing(130),
                Some(("old", Found::Missing)),
                false,
                "resync: the state was read",
            ),
            ("the previous slot invalidated", Some(100), Some(&old_slot), Slot::Existing(130), Some(("old", Found::Lost)), false, "resync: the state was read"),
            (
                "an old table on the previous slot",
                Some(100),
                Some(&old_other_table),
                Slot::Existing(90),
                Some(("old", Found::At(100))),
                false,
                "resync: the stream was read",
            ),
            ("no setup recorded, read through the legacy slot", Some(100), None, Slot::Existing(130), Some(("old", Found::At(100))), false, "previous old"),
        ];
        for (what, saved, recorded, slot, previous, took_over, expected) in rows {
            let o = Observed { saved, recorded, setup: &now, slot, previous, took_over };
            assert_eq!(kind(&decide(&o)), expected, "{what}");
        }
    }

    #[test]
    fn a_previous_slot_is_dropped_once_it_is_not_read() {
        let resync = Decision::Resync("x".into());
        assert_eq!(left_behind(&resync, Some(("old", Found::At(1)))), Some("old".into()));
        assert_eq!(left_behind(&resync, Some(("old", Found::Missing))), None);
        assert_eq!(left_behind(&Decision::Previous { slot: "old".into(), advance: None }, Some(("old", Found::At(1)))), None);
        assert_eq!(left_behind(&Decision::Switch { drop: Some("old".into()) }, Some(("old", Found::At(1)))), Some("old".into()));
        assert_eq!(left_behind(&Decision::Follow { record_setup: false }, None), None);
    }
}
