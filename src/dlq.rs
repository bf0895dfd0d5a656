//! `pg2es dlq list|replay`: the documents Elasticsearch refused for good, from the dead-letter
//! files of the selected documents: `<file>` (appended by `run`), `<file>.1` (the one rotated
//! when it passed 64 MiB) and `<file>.replaying` (a replay under way, or one cut short).
//!
//! A replay first renames `<file>` to `<file>.replaying`, so that what `run` refuses meanwhile
//! goes to a new `<file>` and is neither lost nor read twice. Then each document named (once per
//! id) is built again from Postgres as it is now, as `verify --repair` does (WAL position, then
//! the records, versioned writes; a record that is gone has its document deleted), never from
//! the stored copy. Refused again, a document is written to `<file>` by the sink as any refusal
//! is. Once every one was sent, the lines of other indexes are appended to `<file>` and the
//! replayed files removed; a replay cut short leaves `<file>.replaying`, and the next one starts
//! with it.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::sink::{dead_letter_sibling, ElasticsearchSink};
use crate::source::DocumentSpec;
use crate::verify::{Repaired, Repairer};

/// One line of a dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub index: String,
    pub status: u16,
    pub reason: String,
    pub time: String,
}

/// Ids sent per page of a replay.
const REPLAY_PAGE: usize = 500;

/// The files a document's dead letters may be in, oldest first.
fn files(config: &Config) -> [PathBuf; 3] {
    let f = &config.dead_letter_file;
    [dead_letter_sibling(f, "1"), dead_letter_sibling(f, "replaying"), f.clone()]
}

/// Each line of `path` (none when it is absent): a dead letter, or the line as it is when it does
/// not read as one.
fn lines(path: &Path) -> Result<Vec<std::result::Result<DeadLetter, String>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { context: "cannot read dead-letter file", path: path.to_path_buf(), source }),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|source| Error::Io { context: "cannot read dead-letter file", path: path.to_path_buf(), source })?;
        if !line.trim().is_empty() {
            out.push(serde_json::from_str(&line).map_err(|_| line));
        }
    }
    Ok(out)
}

/// The dead letters of this document's index, oldest first.
pub async fn list(config: &Config) -> Result<Vec<DeadLetter>> {
    if config.state_in_postgres {
        let rows = crate::ha::dead_letters(&config.source_settings(), &crate::ha::state_key(&config.state_file)).await?;
        return Ok(rows
            .into_iter()
            .filter(|(_, index, ..)| *index == config.es_index)
            .map(|(id, index, status, reason, time)| DeadLetter { id, index, status: u16::try_from(status).unwrap_or(0), reason, time })
            .collect());
    }
    let mut out = Vec::new();
    for path in files(config) {
        out.extend(lines(&path)?.into_iter().filter_map(|l| l.ok()).filter(|d| d.index == config.es_index));
    }
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// Distinct documents named by the dead letters.
    pub documents: u64,
    #[serde(flatten)]
    pub written: Repaired,
}

/// Replays the document's dead letters; see the module notes.
pub async fn replay(config: &Config, spec: &DocumentSpec, shutdown: &Shutdown) -> Result<Replayed> {
    if config.state_in_postgres {
        return replay_rows(config, spec, shutdown).await;
    }
    let [rotated, replaying, live] = files(config);
    if !replaying.exists() && live.exists() {
        std::fs::rename(&live, &replaying).map_err(|source| Error::Io {
            context: "cannot set the dead-letter file aside for the replay",
            path: live.clone(),
            source,
        })?;
    }
    let mut ours = BTreeSet::new();
    let mut others = Vec::new();
    for path in [&rotated, &replaying] {
        for line in lines(path)? {
            match line {
                Ok(d) if d.index == config.es_index => {
                    ours.insert(d.id);
                }
                Ok(d) => others.push(serde_json::to_string(&d).map_err(|e| Error::Encode(format!("a dead letter: {e}")))?),
                Err(text) => others.push(text),
            }
        }
    }
    let sink = ElasticsearchSink::new(&config.sink_settings())?;
    sink.engine(shutdown).await?;
    let mut repairer = Repairer::new(config, spec, &sink, shutdown).await?;
    let ids: Vec<String> = ours.into_iter().collect();
    for page in ids.chunks(REPLAY_PAGE) {
        repairer.take(page.to_vec(), Vec::new());
        repairer.flush(true).await?;
    }
    if !others.is_empty() {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&live).map_err(|source| Error::Io {
            context: "cannot write dead-letter file",
            path: live.clone(),
            source,
        })?;
        let mut text = others.join("\n");
        text.push('\n');
        file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(|source| Error::Io {
            context: "cannot write dead-letter file",
            path: live.clone(),
            source,
        })?;
    }
    for path in [&rotated, &replaying] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { context: "cannot remove replayed dead-letter file", path: path.clone(), source }),
        }
    }
    Ok(Replayed { documents: ids.len() as u64, written: repairer.done })
}

/// A replay of the dead letters kept in `pg2es.dead_letters` (`PG2ES_STATE_STORE=postgres`): the
/// ids recorded up to now are built again from Postgres and written (refused again, they are
/// recorded anew), then the rows up to now are removed.
async fn replay_rows(config: &Config, spec: &DocumentSpec, shutdown: &Shutdown) -> Result<Replayed> {
    let settings = config.source_settings();
    let key = crate::ha::state_key(&config.state_file);
    let (ids, started) = crate::ha::dead_letter_ids(&settings, &key, &config.es_index).await?;
    let sink = ElasticsearchSink::new(&config.sink_settings())?.with_dead_letters(Box::new(crate::ha::store::PgDeadLetters::open(&settings, &key)?));
    sink.engine(shutdown).await?;
    let mut repairer = Repairer::new(config, spec, &sink, shutdown).await?;
    for page in ids.chunks(REPLAY_PAGE) {
        repairer.take(page.to_vec(), Vec::new());
        repairer.flush(true).await?;
    }
    crate::ha::forget_dead_letters(&settings, &key, &config.es_index, &started).await?;
    Ok(Replayed { documents: ids.len() as u64, written: repairer.done })
}
