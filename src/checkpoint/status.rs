//! The status file beside each state file (`<state>.status.json`): what `pg2es run` last said
//! about its document (its process, its health, its last cycle), for `pg2es status` to read
//! without the lock. Replaced by a rename and not fsynced: it is news, not progress; a crash
//! loses at most its last update, and the pid in it tells a reader whether its writer still runs.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::telemetry::Health;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// The process of `pg2es run` that wrote it.
    pub pid: u32,
    pub started: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    #[serde(flatten)]
    pub health: Health,
    pub last_cycle: Option<CycleSummary>,
}

/// The last cycle that completed, in numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleSummary {
    pub at: Option<DateTime<Utc>>,
    pub elapsed_ms: u64,
    pub records: usize,
    pub stored: usize,
    pub deleted: usize,
    pub dead_lettered: usize,
    pub older_than_index: usize,
}

pub fn status_path(state: &Path) -> PathBuf {
    super::beside(state, ".status.json")
}

/// Replaces the status file of the state at `state`.
pub fn write_status(state: &Path, status: &RunStatus) -> Result<()> {
    let path = status_path(state);
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(status).map_err(|e| Error::Encode(format!("the status: {e}")))?;
    fs::write(&tmp, bytes).map_err(|source| Error::Io { context: "cannot write status file", path: tmp.clone(), source })?;
    fs::rename(&tmp, &path).map_err(|source| Error::Io { context: "cannot rename status file onto", path, source })
}

/// The status file of the state at `state`; `None` when there is none (no run wrote one yet).
pub fn read_status(state: &Path) -> Result<Option<RunStatus>> {
    let path = status_path(state);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State { path, reason: format!("is not a pg2es status file ({e}); it is rewritten at the next cycle of `pg2es run`") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { context: "cannot read status file", path, source }),
    }
}
