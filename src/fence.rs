//! The lease a leader holds on a document, as the writers see it: every request to
//! Elasticsearch and every save of the state checks it first, so a leader that lost its lease
//! (another instance took the document over, or it could not renew in time: paused, cut off)
//! writes nothing more. The lease's owner (`ha`) extends it after each renewal, and ends it when
//! the lease is gone.

use std::sync::Mutex;
use std::time::Instant;

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Fence {
    /// What the lease is on (`pg2es.leases.key`), for the error.
    key: String,
    state: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    /// Past this instant the lease may have been taken over: nothing is written.
    valid_until: Instant,
    /// Why it is gone, once it is.
    lost: Option<String>,
}

impl Fence {
    pub fn new(key: &str, valid_until: Instant) -> Fence {
        Fence { key: key.to_string(), state: Mutex::new(Held { valid_until, lost: None }) }
    }

    /// `Ok` while the lease holds; [`Error::LeaseLost`] once it is gone or has run out.
    pub fn check(&self) -> Result<()> {
        let held = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let why = match &held.lost {
            Some(why) => why.clone(),
            None if Instant::now() >= held.valid_until => "it ran out before it was renewed (this instance was paused or cut off from Postgres)".to_string(),
            None => return Ok(()),
        };
        Err(Error::LeaseLost { key: self.key.clone(), why })
    }

    /// The lease was renewed: it holds until `until` (the renewal's send time plus the lease, less
    /// a margin). Never moves back, and never revives a lost lease.
    pub fn extend(&self, until: Instant) {
        let mut held = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if held.lost.is_none() && until > held.valid_until {
            held.valid_until = until;
        }
    }

    pub fn lose(&self, why: &str) {
        let mut held = self.state.lock().unwrap_or_else(|p| p.into_inner());
        held.lost.get_or_insert_with(|| why.to_string());
    }

    pub fn is_lost(&self) -> bool {
        self.check().is_err()
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_holds_until_it_runs_out_or_is_lost_and_never_comes_back() {
        let f = Fence::new("movies", Instant::now() + Duration::from_secs(60));
        assert!(f.check().is_ok());
        f.extend(Instant::now() + Duration::from_secs(120));
        f.lose("taken over by b");
        let e = f.check().unwrap_err().to_string();
        assert!(e.contains("movies") && e.contains("taken over by b"), "{e}");
        f.extend(Instant::now() + Duration::from_secs(600));
        assert!(f.is_lost());
        let ran_out = Fence::new("genres", Instant::now());
        assert!(ran_out.check().unwrap_err().to_string().contains("ran out"));
    }
}
