use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use pg2es::cli::{Cli, Command, DeleteCaptureAction, DlqAction};
use pg2es::config::LogFormat;
use pg2es::pipeline::{self, Mode};
use pg2es::settings::{PG2ES_METRICS_ADDR, PG2ES_STATE_STORE};
use pg2es::source::delete_log;
use pg2es::verify::{self, VerifyReport};
use pg2es::{shutdown, Config, Error};

/// How long `pg2es check` waits for Elasticsearch to show an index's mapping.
const CHECK_INDEX_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            // Text logs go to stderr too: the two lines below say it once. JSON logs get the
            // structured record as well, for the collector.
            if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                if matches!(e, Error::Shutdown) {
                    tracing::warn!("pg2es stopped before its pass was complete");
                } else {
                    tracing::error!(error = %e, hint = e.hint().unwrap_or_default(), "pg2es failed");
                }
            }
            eprintln!("pg2es: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("pg2es: hint: {hint}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2: bad configuration; 3: another instance holds the state; 4: stopped by SIGINT/SIGTERM
/// before a `run --once` pass or a `verify` was complete; 1: anything else.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Config(_) | Error::Definition(_) => 2,
        Error::AlreadyRunning { .. } | Error::Led { .. } => 3,
        Error::Shutdown => INTERRUPTED,
        e if e.is_credentials_refused() => CREDENTIALS_REFUSED,
        _ => 1,
    }
}

/// A pass that was asked to finish (`run --once`, `verify`) and was stopped before it did: not
/// a success, and not a failure of pg2es either. Progress up to the last stored batch is kept.
const INTERRUPTED: u8 = 4;

/// Postgres or Elasticsearch refused the credentials: the same ones would be refused again.
const CREDENTIALS_REFUSED: u8 = 7;

fn try_main() -> pg2es::Result<ExitCode> {
    let cli = Cli::parse();
    // The list of settings needs none of them to be right.
    if matches!(cli.command, Some(Command::Settings)) {
        print!("{}", pg2es::config::settings_table());
        return Ok(ExitCode::SUCCESS);
    }
    // Settings are checked before anything starts: a bad value never reaches the runtime.
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(config.log_format);
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    let mode = match cli.command.unwrap_or(Command::Run { once: false }) {
        Command::PrintConfig => {
            print!("{}", config.render());
            // The settings are shown either way; a definition that cannot be read fails it.
            pipeline::documents(&config)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Verify { json, repair } => {
            let docs = pipeline::documents(&config)?;
            let docs = &docs;
            let reports = with_runtime(|shutdown| async move {
                let mut reports = Vec::new();
                for (c, spec, index) in docs {
                    let report = match repair {
                        true => verify::repair_document(c, spec.clone(), index, &shutdown).await?,
                        false => verify::verify_document(c, spec.clone(), index, &shutdown).await?,
                    };
                    reports.push((spec.name.clone(), c.es_index.clone(), report));
                }
                Ok(reports)
            })?;
            return print_verify(&reports, json);
        }
        Command::Status { json } => {
            let docs = pipeline::documents(&config)?;
            let docs = &docs;
            let all = with_runtime(|shutdown| async move {
                let mut all = Vec::new();
                for (c, spec, _) in docs {
                    all.push(pg2es::status::document_status(c, spec.clone(), &shutdown).await?);
                }
                Ok(all)
            })?;
            if json {
                let by_name: serde_json::Map<String, serde_json::Value> = all
                    .iter()
                    .map(|s| Ok((s.document.clone(), serde_json::to_value(s).map_err(|e| Error::Encode(format!("the status: {e}")))?)))
                    .collect::<pg2es::Result<_>>()?;
                println!("{}", serde_json::to_string_pretty(&by_name).map_err(|e| Error::Encode(format!("the status: {e}")))?);
            } else {
                for s in &all {
                    print!("{}", s.render());
                }
            }
            let worst = all.iter().map(|s| s.verdict).max().unwrap_or(pg2es::status::Verdict::Healthy);
            return Ok(ExitCode::from(worst.exit_code()));
        }
        Command::Reindex { document, keep_old } => {
            let mut config = config;
            if let Some(d) = document {
                config.documents = vec![d];
            }
            let docs = pipeline::documents(&config)?;
            let docs = &docs;
            let done = with_runtime(|shutdown| async move {
                let mut done = Vec::new();
                for (c, spec, index) in docs {
                    done.push((spec.name.clone(), c.es_index.clone(), pg2es::reindex::reindex(c, spec.clone(), index, keep_old, &shutdown).await?));
                }
                Ok(done)
            })?;
            for (name, alias, r) in &done {
                let old = if r.kept_old { format!("{} kept", r.old) } else { format!("{} deleted", r.old) };
                println!("{name}: {alias} now points at {} ({} records loaded and caught up); {old}", r.new, r.records);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Reset { document, yes } => {
            // The run's slot is its selected documents': dropped when all of them are reset.
            let selected = pipeline::documents(&config)?.len();
            let mut config = config;
            if let Some(d) = document {
                config.documents = vec![d];
            }
            let docs = pipeline::documents(&config)?;
            let all = docs.len() == selected;
            let names: Vec<String> = docs.iter().map(|(c, spec, _)| format!("{} (state {})", spec.name, c.state_file.display())).collect();
            if !yes {
                return Err(Error::Refused(format!(
                    "reset removes the state of {}: the next run loads every record again. Add --yes to do it",
                    names.join(", ")
                )));
            }
            let resets: Vec<(String, &pg2es::Config)> = docs.iter().map(|(c, spec, _)| (spec.name.clone(), c)).collect();
            let resets = &resets;
            let done = with_runtime(|_| async move { pg2es::reset::reset(resets, all).await })?;
            println!("reset {}: the next `pg2es run` loads every record again", names.join(", "));
            if let Some(slot) = done.slot {
                println!("dropped the replication slot {slot}; the next run creates it again");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::ImportState => {
            let docs = pipeline::documents(&config)?;
            let docs = &docs;
            return with_runtime(|_| async move {
                for (c, spec, _) in docs {
                    // The lock: no `run` may move the file on while it is copied.
                    let _lock = pg2es::checkpoint::FileStore::open(&c.state_file)?;
                    let Some(state) = pg2es::checkpoint::read(&c.state_file, &c.es_index)? else {
                        println!("{}: no state file {}: nothing to import (the first run loads it)", spec.name, c.state_file.display());
                        continue;
                    };
                    let key = pg2es::ha::state_key(&c.state_file);
                    if pg2es::ha::import(&c.source_settings(), &key, &state).await? {
                        println!("{}: imported {} into pg2es.state (key {key})", spec.name, c.state_file.display());
                    } else {
                        println!("{}: pg2es.state holds a state for key {key} already: left as it is", spec.name);
                    }
                }
                println!("set {PG2ES_STATE_STORE}=postgres for every instance: they read on from these positions");
                Ok(ExitCode::SUCCESS)
            });
        }
        Command::Dlq { action } => return dlq(&config, action),
        Command::Settings => unreachable!("pg2es settings returns before the settings are read"),
        Command::Check => {
            let docs = pipeline::documents(&config)?;
            let config = &config;
            return with_runtime(|shutdown| async move {
                let client = delete_log::connect_with(&config.source_settings()).await?;
                pg2es::source::server_version(&client).await?;
                let mut conflicts = Vec::new();
                let replication = matches!(config.source, pg2es::config::SourceKind::Replication(_));
                if replication {
                    pg2es::source::role_may_replicate(&client).await?;
                }
                for (c, spec, index) in &docs {
                    let doc = spec.resolve(&client, &config.postgres.schema).await?;
                    // What run would refuse at start in replication mode, for every document at once.
                    if replication {
                        if let Err(e) = pg2es::source::replica_identities(&client, &config.postgres.schema, &doc).await {
                            println!("{}: {e}", doc.name);
                            conflicts.push(e);
                            continue;
                        }
                    }
                    let tables = doc.tables().join(", ");
                    let untimed = doc.untimed();
                    let note = match (untimed.is_empty(), replication) {
                        (true, _) => String::new(),
                        (false, true) => format!("; no timestamp column: {} (replication needs none)", untimed.join(", ")),
                        (false, false) => {
                            // What run would refuse: polling without the write capture's log.
                            let set = pg2es::catalog::triggers::capture(&config.postgres.schema, std::slice::from_ref(&doc));
                            if !delete_log::status(&client, &set).await?.with_legacy_for(spec.first).writes_complete() {
                                let e = pg2es::source::untimed_without_capture(&config.postgres.schema, &untimed);
                                println!("{}: {e}", doc.name);
                                conflicts.push(e);
                                continue;
                            }
                            format!("; no timestamp column: {} (its changes are read from the write capture's log)", untimed.join(", "))
                        }
                    };
                    // The index as run would find it: its mapping must be the index schema's.
                    let sink = pg2es::sink::ElasticsearchSink::new(&c.sink_settings())?;
                    let found = match tokio::time::timeout(CHECK_INDEX_WITHIN, sink.check_index(&index.schema, &shutdown)).await {
                        Ok(Ok(())) => "; it exists with this mapping".to_string(),
                        Ok(Err(Error::ElasticsearchStatus { status: 404, .. })) => "; absent: run creates it".to_string(),
                        Ok(Err(e @ Error::MappingConflict { .. })) => {
                            println!("{}: {e}", doc.name);
                            conflicts.push(e);
                            continue;
                        }
                        Ok(Err(e)) if e.is_credentials_refused() => return Err(e),
                        Ok(Err(e)) => format!("; not checked: {e}"),
                        Err(_) => format!(
                            "; not checked: Elasticsearch at {} did not answer within {}s",
                            pg2es::sink::shown_urls(&c.sink.urls),
                            CHECK_INDEX_WITHIN.as_secs()
                        ),
                    };
                    println!("{}: ok: index {} ({}{found}), {} fields, tables {tables}{note}", doc.name, c.es_index, doc.index.schema_origin, doc.fields.len());
                }
                // `run` would refuse these: so does check (the first one, with its fix).
                match conflicts.into_iter().next() {
                    Some(e) => Err(e),
                    None => Ok(ExitCode::SUCCESS),
                }
            });
        }
        Command::DeleteCapture { action } => return delete_capture(&config, action),
        Command::Run { once: true } => Mode::Once,
        Command::Run { once: false } => Mode::Continuous,
    };
    let config = &config;
    let outcome = with_runtime(|shutdown| async move {
        // Served for as long as the run lasts.
        let _server = match config.metrics_addr {
            Some(addr) => Some(serve_metrics(addr, config.health_max_age).await?),
            None => None,
        };
        pipeline::run(config, mode, &shutdown).await
    });
    match (mode, outcome) {
        // A service stops on SIGTERM: that is how it is meant to end, wherever it was.
        (Mode::Continuous, Ok(_) | Err(Error::Shutdown)) => Ok(ExitCode::SUCCESS),
        // One pass was asked for: only a whole pass is a success.
        (Mode::Once, Ok(reports)) if reports.last().is_some_and(|r| !r.interrupted) => Ok(ExitCode::SUCCESS),
        (Mode::Once, Ok(_)) => Err(Error::Shutdown),
        (_, Err(e)) => Err(e),
    }
}

/// `pg2es delete-capture print [--remove]|install|remove` on PG_SCHEMA, for the selected
/// documents of the definition.
fn delete_capture(config: &Config, action: DeleteCaptureAction) -> pg2es::Result<ExitCode> {
    let schema = config.postgres.schema.as_str();
    if let DeleteCaptureAction::Print { remove: true, .. } = action {
        print!("{}", delete_log::remove_ddl(schema));
        return Ok(ExitCode::SUCCESS);
    }
    let docs = pipeline::documents(config)?;
    let specs: Vec<_> = docs.into_iter().map(|(_, spec, _)| spec).collect();
    let specs = &specs;
    with_runtime(|_shutdown| async move {
        let client = delete_log::connect_with(&config.source_settings()).await?;
        pg2es::source::server_version(&client).await?;
        if let DeleteCaptureAction::Remove = action {
            let removed = delete_log::remove(&client, schema).await?;
            match removed.triggers {
                0 => println!("nothing to remove: no pg2es delete capture trigger on schema {schema} of database {}", removed.database),
                n => println!(
                    "delete capture removed from schema {schema} of database {} ({n} triggers dropped); the tables in schema pg2es are kept",
                    removed.database
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
        // The triggers come from the documents as resolved against the schema now.
        let set = pg2es::source::trigger_set(&client, schema, specs).await?;
        let names = set.documents.join(", ");
        match action {
            DeleteCaptureAction::Print { writes, .. } => print!("{}", delete_log::print_ddl(&set, writes)),
            DeleteCaptureAction::Install { writes } => {
                let installed = if writes { delete_log::install_writes(&client, &set).await? } else { delete_log::install(&client, &set).await? };
                let count = set.triggers.iter().filter(|t| writes || !t.writes).count();
                if writes {
                    println!("delete and write capture installed on schema {schema} for {names}: {count} triggers write to pg2es.changes; polling reads every change from it");
                } else {
                    println!("delete capture installed on schema {schema} for {names}: {count} triggers write to pg2es.changes");
                }
                if installed.replaced_legacy {
                    println!("the triggers of an earlier pg2es were replaced by these in the same transaction: no change was missed");
                }
                if installed.positions_dropped > 0 {
                    println!(
                        "the log or a trigger was missing, so changes meanwhile were not recorded: {} pg2es position(s) in the log were dropped, and each of those instances loads every document again at its next cycle",
                        installed.positions_dropped
                    );
                }
            }
            DeleteCaptureAction::Remove => unreachable!("handled above"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Installs the Prometheus recorder and serves `/metrics` and `/healthz` on `addr`; the server
/// stops when the returned guard is dropped.
async fn serve_metrics(addr: std::net::SocketAddr, max_age: std::time::Duration) -> pg2es::Result<AbortOnDrop> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("{PG2ES_METRICS_ADDR}={addr}: cannot listen there ({e}); choose a free port, or unset it")))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Config(format!("{PG2ES_METRICS_ADDR}={addr}: cannot start the metrics recorder ({e})")))?;
    pg2es::telemetry::describe();
    tracing::info!(addr = %addr, "serving /metrics and /healthz");
    let bound = pg2es::telemetry::HealthBound { max_age, started: chrono::Utc::now() };
    Ok(AbortOnDrop(tokio::spawn(pg2es::telemetry::serve(listener, handle, bound))))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `pg2es dlq list|replay` for each selected document.
fn dlq(config: &pg2es::Config, action: DlqAction) -> pg2es::Result<ExitCode> {
    let docs = pipeline::documents(config)?;
    match action {
        DlqAction::List { json } => {
            let docs = &docs;
            let all = with_runtime(|_| async move {
                let mut all = Vec::new();
                for (c, _, _) in docs {
                    all.push(pg2es::dlq::list(c).await?);
                }
                Ok(all)
            })?;
            for ((c, spec, _), letters) in docs.iter().zip(all) {
                if json {
                    for d in &letters {
                        println!("{}", serde_json::to_string(d).map_err(|e| Error::Encode(format!("a dead letter: {e}")))?);
                    }
                    continue;
                }
                println!("== {} (index {}, {}): {} dead letters", spec.name, c.es_index, c.dead_letter_file.display(), letters.len());
                for d in &letters {
                    println!("{}  {}  {}  {}", d.time, d.id, d.status, d.reason);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Replay => {
            let docs = &docs;
            let done = with_runtime(|shutdown| async move {
                let mut done = Vec::new();
                for (c, spec, _) in docs {
                    done.push((spec.name.clone(), pg2es::dlq::replay(c, spec, &shutdown).await?));
                }
                Ok(done)
            })?;
            let mut clean = true;
            for (name, r) in &done {
                println!(
                    "{name}: {} documents replayed: {} indexed, {} deleted (their record is gone), {} refused again, {} refused as older than the index",
                    r.documents, r.written.indexed, r.written.deleted, r.written.dead_lettered, r.written.older_than_index
                );
                clean &= r.written.dead_lettered == 0;
            }
            Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// Runs `task` on a new runtime, with shutdown on SIGINT and SIGTERM.
fn with_runtime<T, F: std::future::Future<Output = pg2es::Result<T>>>(task: impl FnOnce(shutdown::Shutdown) -> F) -> pg2es::Result<T> {
    // 8 MiB a worker: the cycle's futures nest deep, most of all in a debug build.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(8 << 20).build().map_err(|source| Error::Io {
        context: "cannot start runtime",
        path: ".".into(),
        source,
    })?;
    runtime.block_on(async {
        let (trigger, shutdown) = shutdown::Shutdown::new();
        shutdown::on_signals(trigger);
        task(shutdown).await
    })
}

/// The report on stdout; 1 with a one-line summary on stderr when the index differs.
/// One document: its report as before. Several: in JSON an object by document name, in text
/// each report under its document's name.
fn print_verify(reports: &[(String, String, VerifyReport)], json: bool) -> pg2es::Result<ExitCode> {
    let encode = |v: &VerifyReport| serde_json::to_string_pretty(v).map_err(|e| Error::Encode(format!("the report: {e}")));
    match (json, reports) {
        (true, [(_, _, report)]) => println!("{}", encode(report)?),
        (true, _) => {
            let all: serde_json::Map<String, serde_json::Value> = reports
                .iter()
                .map(|(name, _, r)| Ok((name.clone(), serde_json::to_value(r).map_err(|e| Error::Encode(format!("the report: {e}")))?)))
                .collect::<pg2es::Result<_>>()?;
            println!("{}", serde_json::to_string_pretty(&all).map_err(|e| Error::Encode(format!("the report: {e}")))?);
        }
        (false, [(_, _, report)]) => print!("{}", report.render()),
        (false, _) => {
            for (name, index, report) in reports {
                println!("== {name} (index {index})");
                print!("{}", report.render());
            }
        }
    }
    let mut consistent = true;
    for (_, index, report) in reports {
        match report.repaired {
            _ if report.is_consistent() => {}
            // Repaired: a success when every difference found was written.
            Some(r) => {
                eprintln!("pg2es: index {index} differed from postgres ({}): {} documents indexed, {} deleted", report.summary(), r.indexed, r.deleted);
                if r.older_than_index > 0 || r.dead_lettered > 0 {
                    eprintln!(
                        "pg2es: index {index}: {} writes refused as older than the index, {} dead-lettered (see the hints)",
                        r.older_than_index, r.dead_lettered
                    );
                    consistent = false;
                }
            }
            None => {
                eprintln!("pg2es: index {index} differs from postgres: {}", report.summary());
                consistent = false;
            }
        }
    }
    Ok(if consistent { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `LOG_FORMAT=json`: a failure is also logged as a structured record ([`main`]).
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init_tracing(format: LogFormat) {
    JSON_LOGS.store(format == LogFormat::Json, std::sync::atomic::Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(pg2es::progress::StderrWriter).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
