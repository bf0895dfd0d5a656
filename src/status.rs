//! `pg2es status [--json]`: for each selected document, its position, lag, health, size and dead
//! letters, from its state file, the status file `run` keeps beside it, its dead-letter file, the
//! index and Postgres; with the state in Postgres, from `pg2es.state`, the status the leader
//! publishes in `pg2es.status` and `pg2es.dead_letters`, so that it works on any host. It takes
//! no lock, so it runs beside `pg2es run`; a service that does not answer within
//! [`PROBE_TIMEOUT`] is reported as such rather than waited for.
//!
//! The verdict, and the exit code: healthy (0); behind (5): a full load is under way, or the lag
//! is over `PG2ES_HEALTH_MAX_AGE_SEC`; failing (6): no `pg2es run` is running the document, it has
//! stored nothing for longer than the bound, it has waited for a service for longer, or the
//! index or Postgres does not answer.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::checkpoint::{self, State};
use crate::config::{Config, SourceKind};
use crate::error::Result;
use crate::settings::PG2ES_HEALTH_MAX_AGE_SEC;
use crate::shutdown::Shutdown;
use crate::sink::ElasticsearchSink;
use crate::source::{DocumentSpec, PgSource, PgTls};
use crate::telemetry::{LastError, Waiting};

/// How long `status` waits for Postgres or Elasticsearch.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Healthy,
    Behind,
    Failing,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Behind => "behind",
            Verdict::Failing => "failing",
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Behind => 5,
            Verdict::Failing => 6,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DocumentStatus {
    pub document: String,
    pub index: String,
    pub mode: &'static str,
    pub verdict: Verdict,
    /// Why it is not healthy.
    pub reasons: Vec<String>,
    /// The pid of the `pg2es run` keeping it, when one is alive on this host.
    pub running: Option<u32>,
    /// With `PG2ES_STATE_STORE=postgres`: the instance that leads it (any host), since when.
    pub leader: Option<crate::ha::LeaseStatus>,
    pub position: Position,
    /// Seconds since the start of the last cycle that read every change there was.
    pub lag_seconds: Option<f64>,
    pub last_progress: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub waiting: Option<Waiting>,
    /// The concrete index the name points at (itself, or its alias's index after `reindex`).
    pub serving: Option<String>,
    /// Documents in the index, and records in Postgres that make one (`None`: did not answer).
    pub documents: Option<u64>,
    pub records: Option<u64>,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Position {
    /// The full load under way: the last key loaded (`None` before the first batch).
    pub full_load: Option<Option<String>>,
    /// Polling: each table's watermark, `timestamp key`.
    pub watermarks: BTreeMap<String, String>,
    /// Replication: every change committed before this WAL position is in the index.
    pub replication: Option<String>,
    /// Replication: the slot as Postgres has it.
    pub slot: Option<SlotStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub confirmed: Option<String>,
    pub retained_wal_bytes: Option<i64>,
}

/// The status of one document; see the module notes.
pub async fn document_status(config: &Config, spec: DocumentSpec, shutdown: &Shutdown) -> Result<DocumentStatus> {
    // The state file's errors are told; Postgres not answering for the table is reported below.
    let state = match config.state_in_postgres {
        true => probe(crate::pipeline::saved_state(config)).await.flatten(),
        false => crate::pipeline::saved_state(config).await?,
    };
    let local = checkpoint::read_status(&config.state_file)?;
    // A process of this host: the status file names it.
    let running = local.as_ref().map(|r| r.pid).filter(|pid| alive(*pid));
    let key = crate::ha::state_key(&config.state_file);
    // With the state in Postgres the leader may run on another host: what it published.
    let run = match config.state_in_postgres {
        true => probe(crate::ha::read_run_status(&config.source_settings(), &key)).await.flatten().or(local),
        false => local,
    };
    let (leader, lease_unread) = match config.state_in_postgres {
        true => match probe(crate::ha::lease_status(&config.source_settings(), &crate::pipeline::lease_key(config))).await {
            Some(lease) => (lease, false),
            None => (None, true),
        },
        false => (None, false),
    };
    let now = Utc::now();
    let mut reasons = Vec::new();
    let mut verdict = Verdict::Healthy;
    let mut judge = |v: Verdict, why: String| {
        verdict = verdict.max(v);
        reasons.push(why);
    };
    if lease_unread {
        judge(Verdict::Failing, format!("postgres did not answer for the lease (pg2es.leases) within {}s", PROBE_TIMEOUT.as_secs()));
    } else if config.state_in_postgres {
        if !leader.as_ref().is_some_and(|l| l.held) {
            judge(Verdict::Failing, format!("no instance leads it (pg2es.leases, key {})", crate::pipeline::lease_key(config)));
        }
    } else if running.is_none() {
        judge(Verdict::Failing, format!("no `pg2es run` is running it (status file {})", checkpoint::status_path(&config.state_file).display()));
    }
    let health = run.as_ref().map(|r| r.health.clone()).unwrap_or_default();
    let led = leader.as_ref().is_some_and(|l| l.held);
    if let Some(r) = run.as_ref().filter(|_| running.is_some() || led) {
        if let Some(why) = health.unhealthy(now, r.started, config.health_max_age) {
            judge(Verdict::Failing, why);
        }
    }
    let lag = health.lag(now);
    let position = position(config, state.as_ref());
    if position.full_load.is_some() || state.as_ref().is_none_or(State::needs_full_load) {
        judge(Verdict::Behind, "the full load is not finished".into());
    } else if let Some(lag) = lag.filter(|l| *l > config.health_max_age) {
        judge(Verdict::Behind, format!("lag {}s is over {PG2ES_HEALTH_MAX_AGE_SEC}={}", lag.as_secs(), config.health_max_age.as_secs()));
    }
    let sink = ElasticsearchSink::new(&config.sink_settings())?;
    let (documents, records, slot, serving) =
        tokio::join!(probe(sink.count(shutdown)), count_records(config, &spec), slot(config), probe(sink.concrete(shutdown)));
    let serving = serving.flatten();
    if documents.is_none() {
        judge(Verdict::Failing, format!("the index {} did not answer a count within {}s", config.es_index, PROBE_TIMEOUT.as_secs()));
    }
    if records.is_none() {
        judge(Verdict::Failing, format!("postgres did not answer a count within {}s", PROBE_TIMEOUT.as_secs()));
    }
    Ok(DocumentStatus {
        document: spec.name.clone(),
        index: config.es_index.clone(),
        mode: match config.source {
            SourceKind::Polling => "polling",
            SourceKind::Replication(_) => "replication",
        },
        verdict,
        reasons,
        running,
        leader,
        position: Position { slot, ..position },
        serving,
        lag_seconds: lag.map(|l| l.as_secs_f64()),
        last_progress: health.last_progress,
        last_error: health.last_error,
        waiting: health.waiting,
        documents,
        records,
        dead_letters: match config.state_in_postgres {
            true => probe(crate::ha::count_dead_letters(&config.source_settings(), &key, &config.es_index)).await.unwrap_or_default(),
            false => dead_letters(&config.dead_letter_file, &config.es_index),
        },
    })
}

fn position(config: &Config, state: Option<&State>) -> Position {
    let Some(state) = state else { return Position::default() };
    Position {
        full_load: state.snapshot_in_progress().map(|s| s.after.map(|k| k.to_string())),
        watermarks: state.watermarks.iter().map(|(stream, w)| (stream.clone(), format!("{} {}", w.ts.to_rfc3339(), w.id))).collect(),
        replication: match config.source {
            SourceKind::Replication(_) => state.replication.map(crate::position::format_lsn),
            SourceKind::Polling => None,
        },
        slot: None,
    }
}

/// The answer of a request, or `None` when it fails or takes over [`PROBE_TIMEOUT`].
async fn probe<T>(request: impl std::future::Future<Output = Result<T>>) -> Option<T> {
    tokio::time::timeout(PROBE_TIMEOUT, request).await.ok()?.ok()
}

async fn count_records(config: &Config, spec: &DocumentSpec) -> Option<u64> {
    let tls = PgTls::new(&config.source_settings()).ok()?;
    let probe = async {
        let pg = PgSource::connect(&config.postgres.pg, &tls, &config.postgres.schema, spec).await?;
        pg.records_left(None).await
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe).await.ok()?.ok()
}

async fn slot(config: &Config) -> Option<SlotStatus> {
    let SourceKind::Replication(r) = &config.source else { return None };
    let probe = async {
        let client = crate::source::delete_log::connect_with(&config.source_settings()).await?;
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&r.slot],
            )
            .await
            .map_err(crate::error::Error::postgres("read the replication slot"))?;
        Ok::<_, crate::error::Error>(row.map(|row| SlotStatus { name: r.slot.clone(), confirmed: row.get(0), retained_wal_bytes: row.get(1) }))
    };
    let found = tokio::time::timeout(PROBE_TIMEOUT, probe).await.ok()?.ok()?;
    Some(found.unwrap_or(SlotStatus { name: r.slot.clone(), confirmed: None, retained_wal_bytes: None }))
}

/// Lines of the dead-letter file for `index` (read a line at a time).
pub fn dead_letters(path: &Path, index: &str) -> u64 {
    let Ok(file) = std::fs::File::open(path) else { return 0 };
    let needle = format!("\"index\":{}", serde_json::Value::from(index));
    std::io::BufReader::new(file).lines().map_while(|l| l.ok()).filter(|l| l.contains(&needle)).count() as u64
}

/// Whether a process with this pid runs (Linux: `/proc/<pid>`).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl DocumentStatus {
    /// A few lines for a person.
    pub fn render(&self) -> String {
        let mut out = format!("{} (index {}, {}): {}\n", self.document, self.index, self.mode, self.verdict.as_str());
        let or_unknown = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
        if let Some(s) = self.serving.as_ref().filter(|s| **s != self.index) {
            out.push_str(&format!("  serving      {s} (the alias {} points at it)\n", self.index));
        }
        if self.leader.is_none() || self.running.is_some() {
            out.push_str(&format!("  running      {}\n", self.running.map_or_else(|| "no".to_string(), |p| format!("pid {p} on this host"))));
        }
        if let Some(l) = &self.leader {
            let state = if l.held { "leads it" } else { "led it last (its lease has run out or was given up)" };
            out.push_str(&format!("  leader       {} {state}, since {} (epoch {})\n", l.holder, l.since, l.epoch));
        }
        out.push_str(&format!("  documents    {} in the index, {} records in postgres\n", or_unknown(self.documents), or_unknown(self.records)));
        out.push_str(&format!("  lag          {}\n", self.lag_seconds.map_or_else(|| "(no cycle has caught up yet)".to_string(), |l| format!("{l:.1}s"))));
        out.push_str(&format!("  last success {}\n", self.last_progress.map_or_else(|| "(none)".to_string(), |t| t.to_rfc3339())));
        if let Some(w) = &self.waiting {
            out.push_str(&format!("  waiting for  {} ({}) since {}\n", w.service, w.operation, w.since.to_rfc3339()));
        }
        if let Some(e) = &self.last_error {
            out.push_str(&format!("  last error   {} {}\n", e.at.to_rfc3339(), e.message));
        }
        if let Some(after) = &self.position.full_load {
            out.push_str(&format!("  full load    under way, after {}\n", after.as_deref().unwrap_or("(start)")));
        }
        for (stream, mark) in &self.position.watermarks {
            out.push_str(&format!("  watermark    {stream}: {mark}\n"));
        }
        if let Some(p) = &self.position.replication {
            out.push_str(&format!("  position     {p}\n"));
        }
        if let Some(s) = &self.position.slot {
            let retained = s.retained_wal_bytes.map_or_else(|| "?".to_string(), |b| b.to_string());
            out.push_str(&format!("  slot         {} confirmed {}, {retained} bytes of WAL retained\n", s.name, s.confirmed.as_deref().unwrap_or("(missing)")));
        }
        out.push_str(&format!("  dead letters {}\n", self.dead_letters));
        for why in &self.reasons {
            out.push_str(&format!("  because      {why}\n"));
        }
        out
    }
}
