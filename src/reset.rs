//! `pg2es reset [DOCUMENT] --yes`: forgets where a document is, so that the next `run` loads it
//! again from the first record (over the index as it is, then reconciles). It takes each
//! document's instance lock first, so it refuses while a `run` keeps the document, and removes
//! the state file and the status file. In replication mode the run's slot is dropped once every
//! document the run selects (all those reading it) is reset (the next run creates it again): while one
//! keeps its position, the slot holds that document's changes and is left alone. The index, its
//! documents and the dead letters are kept.

use std::path::Path;

use crate::checkpoint::{lock_path, status_path, InstanceLock};
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result};

/// What one reset did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub documents: Vec<String>,
    /// The slot dropped, if one was.
    pub slot: Option<String>,
}

/// Resets the documents `resets` (name, settings); `all` says they are every document the run
/// selects (PG2ES_DOCUMENTS), so that the run's slot is theirs alone.
pub async fn reset(resets: &[(String, &Config)], all: bool) -> Result<Reset> {
    // Every lock (or lease) first: nothing is removed unless no run keeps any of them.
    let mut locks: Vec<InstanceLock> = Vec::new();
    let in_postgres = resets.first().is_some_and(|(_, c)| c.state_in_postgres);
    for (_, c) in resets {
        if in_postgres {
            if let Some(lease) = crate::ha::lease_status(&c.source_settings(), &crate::pipeline::lease_key(c)).await?.filter(|l| l.held) {
                return Err(Error::Led { key: crate::pipeline::lease_key(c), holder: lease.holder, what: "reset runs" });
            }
            continue;
        }
        if let Some(dir) = c.state_file.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            return Err(Error::Refused(format!("state directory {} does not exist: nothing to reset", dir.display())));
        }
        locks.push(InstanceLock::acquire(&lock_path(&c.state_file))?);
    }
    for (_, c) in resets {
        if in_postgres {
            crate::ha::forget(&c.source_settings(), &crate::ha::state_key(&c.state_file), &crate::pipeline::lease_key(c)).await?;
        } else {
            remove(&c.state_file)?;
        }
        remove(&status_path(&c.state_file))?;
    }
    let slot = match resets.first().map(|(_, c)| &c.source) {
        Some(SourceKind::Replication(r)) if all => drop_slot(resets[0].1, &r.slot).await?.then(|| r.slot.clone()),
        _ => None,
    };
    drop(locks);
    Ok(Reset { documents: resets.iter().map(|(n, _)| n.clone()).collect(), slot })
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io { context: "cannot remove", path: path.to_path_buf(), source }),
    }
}

/// Drops the slot of this database if it is there; whether it was.
async fn drop_slot(config: &Config, slot: &str) -> Result<bool> {
    let client = crate::source::delete_log::connect_with(&config.source_settings()).await?;
    let rows = client
        .execute(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()",
            &[&slot],
        )
        .await
        .map_err(|e| {
            Error::Refused(format!(
                "the state is removed, but the replication slot {slot} could not be dropped ({e}); a process on another host may be reading it: stop it, then SELECT pg_drop_replication_slot('{slot}')"
            ))
        })?;
    Ok(rows > 0)
}
