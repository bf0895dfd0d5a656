//! Benchmark helpers for `make bench` (bench/run.sh, BENCHMARKS.md).
//!
//! Configured like pg2es itself (ES_URL, ES_SCHEMA_FILE, ETL_BATCH_SIZE, ES_BULK_MAX_BYTES, PG_DSN,
//! PG_SCHEMA ...), with the index given by `--index`. Each subcommand prints one JSON line.
//!
//! - `dump`: the documents of an index pg2es loaded, as NDJSON, re-encoded by pg2es's own
//!   documents as stored, so the bytes are about the ones pg2es sends.
//! - `replay`: the ceiling. Loads a dump into a fresh index through `_bulk`, with pg2es's encoding
//!   and chunking, every request body built before the clock starts, and the index settings pg2es
//!   uses for a full load; the clock stops once the settings are back and the index refreshed,
//!   as pg2es's full load does. `--gzip` sends the bodies gzip-compressed (compressed before the
//!   clock starts too: what it saves is Elasticsearch's side only).
//! - `scan-cost`: the full load's query alone under `EXPLAIN ANALYZE`: Postgres's time to the first
//!   row and in all, without pg2es or Elasticsearch competing for the cores.
//! - `visibility`: renames a person in Postgres and polls the index until every film of theirs
//!   carries the new name (run it beside a continuous `pg2es run`).

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use reqwest::Method;
use serde_json::{json, Value};

use pg2es::shutdown::Shutdown;
use pg2es::sink::{bulk, ElasticsearchSink, IndexSink};
use pg2es::Config;

type BenchResult<T> = Result<T, String>;

/// Documents per search request while dumping (at most index.max_result_window).
const DUMP_PAGE: usize = 5000;
/// Pause between two polls of the index in `visibility`.
const POLL_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Parser)]
#[command(name = "pg2es-bench", about = "Benchmark helpers for pg2es; settings from the same environment as pg2es")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write every document of INDEX as one NDJSON line, sorted by id.
    Dump {
        #[arg(long)]
        index: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Load an NDJSON dump into a fresh INDEX (named bench_*; dropped first) from ES_SCHEMA_FILE.
    Replay {
        #[arg(long)]
        index: String,
        #[arg(long)]
        file: PathBuf,
        /// Bulk requests in flight at once (default: ES_BULK_CONCURRENCY, as pg2es).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Send the bodies gzip-compressed (Content-Encoding: gzip).
        #[arg(long)]
        gzip: bool,
    },
    /// Run the full load's query alone under EXPLAIN ANALYZE: Postgres's share of a full load.
    ScanCost,
    /// Rename PERSON_ID and time until EXPECT documents of INDEX show the new name.
    Visibility {
        #[arg(long)]
        index: String,
        #[arg(long)]
        person_id: uuid::Uuid,
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 120.0)]
        timeout_sec: f64,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg2es-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> BenchResult<()> {
    let cli = Cli::parse();
    let mut config = Config::load(None).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("cannot start runtime: {e}"))?;
    let report = runtime.block_on(async {
        match cli.command {
            Command::Dump { index, out } => {
                config.es_index = index;
                dump(&config, &out).await
            }
            Command::Replay { index, file, concurrency, gzip } => {
                config.es_index = index;
                let concurrency = concurrency.unwrap_or(config.bulk_concurrency).max(1);
                replay(&config, &file, concurrency, gzip).await
            }
            Command::ScanCost => scan_cost(&config).await,
            Command::Visibility { index, person_id, expect, timeout_sec } => {
                config.es_index = index;
                visibility(&config, person_id, expect, Duration::from_secs_f64(timeout_sec)).await
            }
        }
    })?;
    println!("{report}");
    Ok(())
}

async fn dump(config: &Config, out: &PathBuf) -> BenchResult<Value> {
    let sink = ElasticsearchSink::new(&config.sink_settings()).map_err(|e| e.to_string())?;
    let (_trigger, shutdown) = Shutdown::new();
    // pg2es does not wait for a refresh; without one the last second of its writes is not searchable.
    sink.refresh().await.map_err(|e| e.to_string())?;
    let file = std::fs::File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut writer = BufWriter::new(file);
    let mut after: Option<String> = None;
    let mut docs = 0usize;
    loop {
        let page = sink.documents_after(after.as_deref(), DUMP_PAGE, &shutdown).await.map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some(last.source.get("id").and_then(Value::as_str).unwrap_or(&last.id).to_string());
        for hit in page {
            if hit.source.get("id").and_then(Value::as_str) != Some(hit.id.as_str()) {
                return Err(format!("document {} is not a pg2es document: its id field is not its _id", hit.id));
            }
            serde_json::to_writer(&mut writer, &hit.source).map_err(|e| e.to_string())?;
            writer.write_all(b"\n").map_err(|e| e.to_string())?;
            docs += 1;
        }
    }
    writer.flush().map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(json!({ "index": config.es_index, "docs": docs, "file": out }))
}

async fn replay(config: &Config, file: &PathBuf, concurrency: usize, gzip: bool) -> BenchResult<Value> {
    if !config.es_index.starts_with("bench_") {
        return Err(format!("replay drops and recreates its index: name it bench_*, not {}", config.es_index));
    }
    // Everything but the requests themselves happens before the clock starts.
    let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?);
    let mut encoded = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let doc: Value = serde_json::from_str(&line).map_err(|e| format!("{}:{}: {e}", file.display(), n + 1))?;
        let id = doc.get("id").and_then(Value::as_str).ok_or_else(|| format!("{}:{}: no id", file.display(), n + 1))?;
        encoded.push(bulk::encode(&config.es_index, id, None, line.as_bytes()).map_err(|e| e.to_string())?);
    }
    let bodies: Vec<bytes::Bytes> = bulk::chunk(&encoded, config.batch_size, config.sink.max_bytes).into_iter().map(|r| bulk::body(&encoded[r])).collect();
    let (docs, requests, bytes) = (encoded.len(), bodies.len(), bodies.iter().map(bytes::Bytes::len).sum::<usize>());
    if docs == 0 {
        return Err(format!("{} holds no document", file.display()));
    }
    drop(encoded);
    let bodies: Vec<bytes::Bytes> = if gzip { bodies.iter().map(|b| gzip_body(b)).collect::<BenchResult<_>>()? } else { bodies };
    let sent_bytes = bodies.iter().map(bytes::Bytes::len).sum::<usize>();

    let http = reqwest::Client::new();
    let base = config.sink.urls[0].as_str().trim_end_matches('/');
    let index_url = format!("{base}/{}", config.es_index);
    send(&http, Method::DELETE, &index_url, None, &[200, 404]).await?;
    // The first selected document's index schema, as `pg2es run` creates it.
    let definition = pg2es::pipeline::documents(config).map_err(|e| e.to_string())?.into_iter().next().ok_or("no document selected")?.2.schema;
    send(&http, Method::PUT, &index_url, Some(definition.to_string().into_bytes()), &[200]).await?;
    // The settings pg2es gives a full load, and the values it puts back after.
    let sink = ElasticsearchSink::new(&config.sink_settings()).map_err(|e| e.to_string())?;
    let (_trigger, shutdown) = Shutdown::new();
    let original = sink.settings_before_full_load(&shutdown).await.map_err(|e| e.to_string())?;
    sink.tune_for_full_load(&shutdown).await.map_err(|e| e.to_string())?;

    let bulk_url = format!("{base}/_bulk");
    let started = Instant::now();
    let stored: usize = stream::iter(bodies)
        .map(|body| bulk_request(&http, &bulk_url, body, gzip))
        .buffer_unordered(concurrency)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    let bulk_seconds = started.elapsed().as_secs_f64();
    sink.restore_settings(&original, &shutdown).await.map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    let count = send(&http, Method::GET, &format!("{index_url}/_count"), None, &[200]).await?;
    let count = count.get("count").and_then(Value::as_u64).unwrap_or(0);
    if stored != docs || count != docs as u64 {
        return Err(format!("replay stored {stored} and the index counts {count} of {docs} documents"));
    }
    Ok(json!({
        "index": config.es_index, "docs": docs, "requests": requests, "bytes": bytes, "sent_bytes": sent_bytes,
        "batch_size": config.batch_size, "concurrency": concurrency, "gzip": gzip,
        "seconds": seconds, "bulk_seconds": bulk_seconds, "docs_per_sec": docs as f64 / seconds,
    }))
}

/// One `_bulk` request; every item must be stored. Returns the number of items.
async fn bulk_request(http: &reqwest::Client, url: &str, body: bytes::Bytes, gzip: bool) -> BenchResult<usize> {
    let mut req = http.post(url).header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
    if gzip {
        req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
    }
    let resp = req.body(body).send().await.map_err(|e| format!("bulk request failed: {e}"))?;
    let status = resp.status();
    let raw = resp.bytes().await.map_err(|e| format!("bulk response unreadable: {e}"))?;
    let parsed: bulk::BulkResponse =
        serde_json::from_slice(&raw).map_err(|e| format!("bulk answered {status}: {e}: {}", String::from_utf8_lossy(&raw[..raw.len().min(300)])))?;
    if parsed.errors {
        let first = parsed.items.iter().flat_map(|i| i.values()).find_map(|i| i.error.clone());
        return Err(format!("bulk items failed, first: {}", first.unwrap_or_default()));
    }
    Ok(parsed.items.len())
}

/// A body compressed as pg2es would (fast level: on a 2-core machine CPU is the scarce thing).
fn gzip_body(body: &[u8]) -> BenchResult<bytes::Bytes> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    enc.write_all(body).map_err(|e| e.to_string())?;
    Ok(enc.finish().map_err(|e| e.to_string())?.into())
}

/// A JSON request that must answer one of `ok`; returns the body as JSON (null if not JSON).
async fn send(http: &reqwest::Client, method: Method, url: &str, body: Option<Vec<u8>>, ok: &[u16]) -> BenchResult<Value> {
    let mut req = http.request(method.clone(), url);
    if let Some(body) = body {
        req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
    }
    let resp = req.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let raw = resp.bytes().await.map_err(|e| format!("{method} {url}: {e}"))?;
    if !ok.contains(&status) {
        return Err(format!("{method} {url} answered {status}: {}", String::from_utf8_lossy(&raw[..raw.len().min(300)])));
    }
    Ok(serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

async fn scan_cost(config: &Config) -> BenchResult<Value> {
    let (client, connection) = config.postgres.pg.connect(tokio_postgres::NoTls).await.map_err(|e| format!("cannot connect to postgres: {e}"))?;
    tokio::spawn(connection);
    // The first selected document's full-load query, as pg2es generates it from the definition.
    let (_, spec, _) = pg2es::pipeline::documents(config).map_err(|e| e.to_string())?.into_iter().next().ok_or("no document selected")?;
    let doc = spec.resolve(&client, &config.postgres.schema).await.map_err(|e| e.to_string())?;
    let sql = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", pg2es::catalog::sql::scan(&doc, false));
    let row = client.query_one(&sql, &[]).await.map_err(|e| format!("cannot explain the full load's query: {e}"))?;
    let plan: tokio_postgres::types::Json<Value> = row.try_get(0).map_err(|e| e.to_string())?;
    let top = &plan.0[0];
    let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "execution_sec": ms(&top["Execution Time"]) / 1000.0,
        "first_row_sec": ms(&top["Plan"]["Actual Startup Time"]) / 1000.0,
        "rows": top["Plan"]["Actual Rows"],
    }))
}

async fn visibility(config: &Config, person_id: uuid::Uuid, expect: u64, timeout: Duration) -> BenchResult<Value> {
    let (client, connection) = config.postgres.pg.connect(tokio_postgres::NoTls).await.map_err(|e| format!("cannot connect to postgres: {e}"))?;
    tokio::spawn(connection);
    // One word only letters, unique per run, so the analyzer keeps it whole and no old document matches.
    let stamp = chrono::Utc::now().timestamp_millis();
    let word: String = (0..10).map(|i| char::from(b'a' + ((stamp / 26i64.pow(i)) % 26) as u8)).collect();
    let name = format!("Renamed {word}");
    let sql = format!(r#"UPDATE "{}".person SET full_name = $1, updated_at = now() WHERE id = $2"#, config.postgres.schema);
    let updated = client.execute(&sql, &[&name, &person_id]).await.map_err(|e| format!("cannot rename person: {e}"))?;
    if updated != 1 {
        return Err(format!("person {person_id} not found"));
    }
    // Autocommit: the rename is committed when execute returns.
    let committed = Instant::now();

    let http = reqwest::Client::new();
    let url = format!("{}/{}/_count", config.sink.urls[0].as_str().trim_end_matches('/'), config.es_index);
    let query = json!({ "query": { "multi_match": {
        "query": name, "type": "phrase", "fields": ["director", "actors_names", "writers_names"] } } });
    let mut first_visible = None;
    loop {
        let answer = send(&http, Method::POST, &url, Some(query.to_string().into_bytes()), &[200]).await?;
        let count = answer.get("count").and_then(Value::as_u64).unwrap_or(0);
        let elapsed = committed.elapsed().as_secs_f64();
        if count > 0 && first_visible.is_none() {
            first_visible = Some(elapsed);
        }
        if count >= expect {
            return Ok(json!({ "person": person_id, "name": name, "docs": count, "first_visible_sec": first_visible, "all_visible_sec": elapsed }));
        }
        if committed.elapsed() > timeout {
            return Err(format!("after {elapsed:.1} s only {count} of {expect} documents show the new name"));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
