//! pg2es keeps an Elasticsearch index in step with a PostgreSQL database.
//!
//! Data flows one way: [`source`] (Postgres) -> [`transform`] (pure) -> [`sink`]
//! (Elasticsearch) -> [`checkpoint`] (durable state), wired by [`pipeline`]. [`verify`] reads both
//! ends and reports where the index differs from Postgres.

pub mod catalog;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod diff;
pub mod dlq;
pub mod error;
pub mod fence;
pub mod ha;
pub mod names;
pub mod pem;
pub mod pipeline;
pub mod position;
pub mod progress;
pub mod reconcile;
pub mod reindex;
pub mod reset;
pub mod retry;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod transform;
pub mod verify;

pub use config::Config;
pub use error::{Error, Result};
