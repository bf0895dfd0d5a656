//! Command line: subcommands and their flags. Settings themselves come from the environment and
//! the optional config file (see `config.rs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pg2es", version, about = "Keeps an Elasticsearch index in step with PostgreSQL")]
pub struct Cli {
    /// TOML file with settings (keys are the lower-case environment variable names).
    #[arg(long, global = true, env = "PG2ES_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load every change into the index, then keep doing so every ETL_CYCLE_SEC (the default).
    Run {
        /// One pass over every change, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Show the effective settings, secrets masked, and exit.
    PrintConfig,
    /// List every setting: its name, default and meaning (the README's table), and exit.
    Settings,
    /// Check the definition (PG2ES_DEFINITION, or the built-in cinema one) against the live
    /// Postgres schema and each document's index mapping, and exit: 0 when it fits, 2 with the
    /// file, the line and the fix when it does not.
    Check,
    /// Compare the index with Postgres: list missing, stale and extra documents; exit 1 if any.
    /// Only reads, so it can run next to `pg2es run`.
    Verify {
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the documents found missing or stale again from Postgres as it is now, and
        /// delete the extra ones: versioned writes, safe next to `pg2es run`. Exit 0 when every
        /// difference found was written; the report is of what was found before.
        #[arg(long)]
        repair: bool,
    },
    /// Each document's position, lag, last success and last error, documents against records,
    /// and dead letters. Takes no lock: it runs beside `pg2es run`. Exit 0 healthy, 5 behind (a
    /// full load under way, or the lag over PG2ES_HEALTH_MAX_AGE_SEC), 6 failing (no run keeps
    /// it, nothing stored or a service waited for past the bound, or a service does not answer).
    Status {
        /// Print JSON (an object by document name) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a document's index with no downtime: load `<index>_<n>` from the index schema
    /// while `run` keeps the live one, catch it up, then move the alias `<index>` to it in one
    /// step; a running `run` follows. The first one turns the concrete index into an alias.
    Reindex {
        /// The document of the definition (all selected ones, one after the other, when omitted).
        document: Option<String>,
        /// Keep the old index (not possible the first time: the alias takes its name).
        #[arg(long)]
        keep_old: bool,
    },
    /// Forget where a document is: its state (and status) file is removed, so that the next run
    /// loads it again from the first record, over the index as it is. Refused while a run keeps
    /// it. In replication mode, resetting every document also drops the run's slot.
    Reset {
        /// The document of the definition (all selected ones when omitted).
        document: Option<String>,
        /// Confirms it: without it nothing is removed.
        #[arg(long)]
        yes: bool,
    },
    /// Copy each selected document's state file into table pg2es.state of the source database,
    /// for `PG2ES_STATE_STORE=postgres`: the runs that use it then read on from the same
    /// positions, loading nothing again. A document whose row exists already is left as it is.
    /// Stop `pg2es run` first (its lock is taken).
    ImportState,
    /// The documents Elasticsearch refused for good (the dead-letter files).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Triggers that record deletes for pg2es (opt-in; PostgreSQL 13+): print their DDL for
    /// PG_SCHEMA, or install or remove them with the configured Postgres settings.
    DeleteCapture {
        #[command(subcommand)]
        action: DeleteCaptureAction,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum DlqAction {
    /// Each dead letter: the document's id, the status and the reason, and when.
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Build each document named again from Postgres as it is now and write it; the ones stored
    /// leave the file, the ones refused again are written to it again with the new reason. Safe
    /// beside `pg2es run`. Exit 0 when none was refused again.
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum DeleteCaptureAction {
    /// Print the DDL to stdout, for an owner of the tables to apply (it connects to read the
    /// schema the definition is resolved against; it changes nothing).
    Print {
        /// Print the statements that remove it instead.
        #[arg(long)]
        remove: bool,
        /// Include the write capture (see `install --writes`).
        #[arg(long, conflicts_with = "remove")]
        writes: bool,
    },
    /// Create the log tables, functions and triggers (idempotent); refuses log tables that were
    /// altered.
    Install {
        /// Also log every insert and update (the write capture): polling then reads every change
        /// from the log and does not depend on `updated_at` (Django's `QuerySet.update()`,
        /// `bulk_update()`, `save(update_fields=...)` and `loaddata` leave it alone).
        #[arg(long)]
        writes: bool,
    },
    /// Drop the triggers (and the functions once no schema uses them); the log tables are kept.
    /// Exit 2 when PG_SCHEMA does not exist; 0 with "nothing to remove" when nothing is installed.
    Remove,
}
