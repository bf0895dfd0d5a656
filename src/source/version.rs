//! Which PostgreSQL the source runs: read at connect, logged, and refused below the oldest major
//! pg2es supports (13: the delete capture's `xid8`, `pg_current_xact_id()` and
//! `pg_current_snapshot()` are new in 13), so an old server stops pg2es at start with the fix
//! instead of failing every cycle.

use std::fmt;

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The oldest major version pg2es supports and tests (`make test-pg-matrix`).
pub const OLDEST_SUPPORTED_MAJOR: u32 = 13;

/// A server version, as `server_version_num` gives it: 150018 is 15.18, 90624 is 9.6.24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgVersion {
    num: u32,
}

impl PgVersion {
    pub fn from_version_num(text: &str) -> Result<PgVersion> {
        match text.trim().parse::<u32>() {
            Ok(num) if num >= 10_000 => Ok(PgVersion { num }),
            _ => Err(Error::SourceSetup(format!("server_version_num is {text:?}, not a version number such as 150018"))),
        }
    }

    /// The major version: 15 for 15.18, 9 for 9.6.24 (older than 10, the major is two numbers).
    pub fn major(self) -> u32 {
        self.num / 10_000
    }

    /// This version if pg2es supports it; otherwise the error that names it and the one needed.
    pub fn supported(self) -> Result<PgVersion> {
        if self.major() >= OLDEST_SUPPORTED_MAJOR {
            return Ok(self);
        }
        Err(Error::SourceSetup(format!(
            "the server is postgresql {self}; pg2es needs postgresql {OLDEST_SUPPORTED_MAJOR} or newer \
             (the delete capture uses xid8, pg_current_xact_id() and pg_current_snapshot(), new in {OLDEST_SUPPORTED_MAJOR}): upgrade the server"
        )))
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.major() >= 10 {
            write!(f, "{}.{}", self.major(), self.num % 10_000)
        } else {
            write!(f, "{}.{}.{}", self.major(), self.num / 100 % 100, self.num % 100)
        }
    }
}

/// The server's version, refused when it is older than pg2es supports.
pub async fn server_version(client: &Client) -> Result<PgVersion> {
    let row = client.query_one("SELECT pg_catalog.current_setting('server_version_num')", &[]).await.map_err(Error::postgres("read the server version"))?;
    let text: String = row.try_get(0).map_err(Error::postgres("read the server version"))?;
    PgVersion::from_version_num(&text)?.supported()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(num: &str) -> PgVersion {
        PgVersion::from_version_num(num).unwrap()
    }

    #[test]
    fn reads_server_version_num() {
        assert_eq!(version("150018").to_string(), "15.18");
        assert_eq!(version("130023").major(), 13);
        assert_eq!(version("180004").to_string(), "18.4");
        assert_eq!(version("170000").to_string(), "17.0");
        assert_eq!(version("90624").to_string(), "9.6.24");
        assert_eq!(version("90624").major(), 9);
        for bad in ["", "15.18", "abc", "999"] {
            assert!(matches!(PgVersion::from_version_num(bad), Err(Error::SourceSetup(_))), "{bad:?}");
        }
    }

    #[test]
    fn supports_13_and_newer() {
        for num in ["130000", "130023", "140023", "150018", "160014", "170010", "180004", "190000"] {
            assert_eq!(version(num).supported().unwrap(), version(num), "{num}");
        }
    }

    #[test]
    fn refuses_older_naming_the_version_found_and_needed() {
        let err = version("120022").supported().unwrap_err();
        assert!(matches!(err, Error::SourceSetup(_)), "{err:?}");
        assert_eq!(err.retry(), crate::error::Retry::GiveUp, "fatal, not retried");
        let text = err.to_string();
        assert!(text.contains("postgresql 12.22") && text.contains("needs postgresql 13 or newer"), "{text}");
        assert!(version("90624").supported().unwrap_err().to_string().contains("postgresql 9.6.24"));
    }
}
