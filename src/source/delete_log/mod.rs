//! Delete capture: the log that opt-in triggers write when a delete changes a record's document.
//!
//! Polling by timestamp cannot see a row that is gone. The triggers generated from the documents
//! (`catalog/triggers.rs`, their functions in `sql/capture.sql`)
//! record, in `pg2es.changes` (`pg2es.film_changes` in releases before it), the key of every record to rebuild (a deleted root, a root that
//! lost a link, every root of a deleted related row; NULL after a `TRUNCATE`), stamped with
//! the writing transaction's id. A reader takes the log by transaction-id window
//! `[from, boundary)`: every transaction below [`boundary`] has ended, so that part of the log is
//! final. Several pg2es instances can read the same log; each records its position with
//! [`acknowledge`], and rows below the oldest position are trimmed.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls};

use super::PgTls;
use crate::catalog::qualified;
use crate::catalog::triggers::TriggerSet;
use crate::error::{Error, Result};

/// The triggers on tables of schema `n.nspname` that call a function of schema pg2es (`p`): the
/// FROM clause of every question about what pg2es installed, whatever the definition.
macro_rules! pg2es_triggers {
    () => {
        "pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
         JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace"
    };
}

mod ddl;
mod install;
mod positions;
mod status;
mod window;

pub use ddl::*;
pub use install::*;
pub use positions::*;
pub use status::*;
pub use window::*;

/// [`connect`] with the source's settings (its TLS built from them): for commands.
pub async fn connect_with(settings: &super::SourceSettings) -> Result<Client> {
    connect(&settings.pg, &PgTls::new(settings)?).await
}

/// Where a connection goes, for the log: `host:port/database`, no credentials.
pub fn describe_target(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    format!("{host}:{}/{}", pg.get_ports().first().copied().unwrap_or(5432), pg.get_dbname().unwrap_or(""))
}

/// A plain connection for administering the log (the pipeline reads it through its own).
pub async fn connect(pg: &tokio_postgres::Config, tls: &PgTls) -> Result<Client> {
    let target = describe_target(pg);
    crate::telemetry::watched("postgres", "connect", &target, pg.get_connect_timeout().copied(), open(pg, tls)).await
}

async fn open(pg: &tokio_postgres::Config, tls: &PgTls) -> Result<Client> {
    let client = match tls {
        PgTls::Off => {
            let (client, connection) = pg.connect(NoTls).await.map_err(Error::postgres_connect("connect"))?;
            tokio::spawn(super::drive(connection));
            client
        }
        PgTls::Rustls(make) => {
            let (client, connection) = pg.connect(make.clone()).await.map_err(Error::postgres_connect("connect with tls"))?;
            tokio::spawn(super::drive(connection));
            client
        }
    };
    Ok(client)
}
