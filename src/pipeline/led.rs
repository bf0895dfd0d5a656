//! `run` with `PG2ES_STATE_STORE=postgres`: the documents are led under leases ([`crate::ha`]).
//! Each lease is a group: with polling, one document; with replication, every document of the
//! run, since one slot serves them all and Postgres lets one session at a time read it. For each
//! group this instance stands by until it may lead it (its share of the groups is not full, and
//! the lease is free, has run out, or its holder is gone), then runs the group's documents as
//! `run` does, renewing the lease, until the lease is lost (back to standing by), this instance
//! holds more than its share (it hands one group back), or it is stopped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{run_documents, CycleReport, Mode};
use crate::catalog::IndexSpec;
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result, Retry};
use crate::fence::Fence;
use crate::ha::store::PgStore;
use crate::ha::{Coordinator, Leadership};
use crate::shutdown::Shutdown;
use crate::source::DocumentSpec;

/// How often a standby looks whether it may lead.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The lease a group's documents are led under, as they need it: their state rows are saved
/// under it, and their sinks check it.
#[derive(Clone)]
pub struct Lead {
    coordinator: Arc<Coordinator>,
    leadership: Leadership,
}

impl Lead {
    /// The document's state row, saved only under this lease.
    pub fn store(&self, config: &Config) -> Result<PgStore> {
        PgStore::new(
            &config.source_settings(),
            &state_key(config),
            &self.leadership.key,
            self.coordinator.instance(),
            self.leadership.epoch,
            self.leadership.fence.clone(),
        )
    }

    pub fn fence(&self) -> Arc<Fence> {
        self.leadership.fence.clone()
    }
}

fn state_key(config: &Config) -> String {
    crate::ha::state_key(&config.state_file)
}

type Run = (Config, DocumentSpec, IndexSpec);

struct Group {
    key: String,
    runs: Vec<Run>,
}

pub(super) async fn run(config: &Config, runs: Vec<Run>, mode: Mode, shutdown: &Shutdown) -> Result<Vec<CycleReport>> {
    let instance = crate::ha::instance_id(config.instance.as_deref());
    let retry_policy = config.retry_policy();
    let settings = config.source_settings();
    let coordinator =
        crate::retry::retry(&retry_policy, shutdown, "connect for the leases", || Coordinator::start(&settings, instance.clone(), config.lease)).await?;
    let groups: Vec<Group> = match runs.first().map(|(c, _, _)| &c.source) {
        Some(SourceKind::Replication(r)) => vec![Group { key: crate::ha::lease_key(&config.state_file, Some(&r.slot)), runs }],
        _ => runs.into_iter().map(|run| Group { key: crate::ha::lease_key(&run.0.state_file, None), runs: vec![run] }).collect(),
    };
    let keys = groups.len();
    tracing::info!(instance = %coordinator.instance(), leases = keys, lease_sec = config.lease.as_secs(), "state in postgres: leading what this instance's share allows, standing by for the rest");
    let live = Arc::new(AtomicUsize::new(1));
    let handing_back = Arc::new(AtomicBool::new(false));
    let (stop, local) = Shutdown::new();
    let stop = Arc::new(stop);
    // The heartbeat: this instance lives, and how many do.
    let beat = {
        let (coordinator, live, local) = (coordinator.clone(), live.clone(), local.clone());
        tokio::spawn(async move {
            loop {
                match coordinator.heartbeat().await {
                    Ok(n) => live.store(n, Ordering::SeqCst),
                    Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
                }
                if local.sleep(coordinator.ttl() / 3).await {
                    break;
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (position, group) in groups.into_iter().enumerate() {
        let (coordinator, live, handing_back, local, stop) = (coordinator.clone(), live.clone(), handing_back.clone(), local.clone(), stop.clone());
        tasks.spawn(async move {
            let out = lead_group(&coordinator, &group, keys, &live, &handing_back, mode, &local).await;
            if out.is_err() {
                stop.trigger();
            }
            (position, out)
        });
    }
    let outcome = super::join_in_order(tasks, &stop, shutdown, "a lease's task").await;
    stop.trigger();
    let _ = beat.await;
    coordinator.leave().await;
    outcome
}

/// Stands by for the group's lease, leads it while it holds, and again after losing it, until
/// stopped (or, with `--once`, one pass is done).
async fn lead_group(
    coordinator: &Arc<Coordinator>,
    group: &Group,
    keys: usize,
    live: &Arc<AtomicUsize>,
    handing_back: &Arc<AtomicBool>,
    mode: Mode,
    shutdown: &Shutdown,
) -> Result<Vec<CycleReport>> {
    let documents: Vec<&str> = group.runs.iter().map(|(_, spec, _)| spec.name.as_str()).collect();
    let documents = documents.join(",");
    let mut standing_by = false;
    let mut unreachable = false;
    let mut reports = Vec::new();
    loop {
        if shutdown.is_triggered() {
            return Ok(reports);
        }
        // A pass asked for (`--once`) takes what it can, whatever the share.
        let share = if mode == Mode::Once { keys } else { Coordinator::share(keys, live.load(Ordering::SeqCst)) };
        if coordinator.held() < share {
            let attempt = coordinator.try_acquire(&group.key).await;
            if attempt.is_ok() {
                unreachable = false;
            }
            match attempt {
                Ok(Some(leadership)) => {
                    standing_by = false;
                    match &leadership.previous {
                        None => {
                            tracing::info!(instance = %coordinator.instance(), key = %group.key, documents = %documents, epoch = leadership.epoch, "leading: the lease was free")
                        }
                        Some((before, why)) if why == "given up" => {
                            tracing::info!(instance = %coordinator.instance(), key = %group.key, documents = %documents, epoch = leadership.epoch, previous = %before, "leading: the previous leader gave the lease up")
                        }
                        Some((before, why)) if why == "ran out" => {
                            tracing::warn!(instance = %coordinator.instance(), key = %group.key, documents = %documents, epoch = leadership.epoch, previous = %before, "leading: took over, the previous leader's lease ran out (it was paused or cut off from Postgres)")
                        }
                        Some((before, _)) => {
                            tracing::warn!(instance = %coordinator.instance(), key = %group.key, documents = %documents, epoch = leadership.epoch, previous = %before, "leading: took over, the previous leader's session is gone (it was killed, or lost its connection)")
                        }
                    }
                    let lead = Lead { coordinator: coordinator.clone(), leadership: leadership.clone() };
                    let outcome = lead_while_held(&lead, group, keys, live, handing_back, mode, shutdown).await;
                    coordinator.release(&leadership).await;
                    // Another group may hand back only once this one no longer counts.
                    if matches!(outcome, Ok((_, true))) {
                        handing_back.store(false, Ordering::SeqCst);
                    }
                    match outcome {
                        Ok((mut rs, handed_back)) => {
                            reports.append(&mut rs);
                            if handed_back {
                                tracing::info!(instance = %coordinator.instance(), key = %group.key, documents = %documents, "handed the lease back: this instance led more than its share, another one takes it");
                                // The others see it free first.
                                if shutdown.sleep(coordinator.ttl()).await {
                                    return Ok(reports);
                                }
                                continue;
                            }
                            return Ok(reports);
                        }
                        Err(e @ Error::LeaseLost { .. }) => {
                            tracing::warn!(instance = %coordinator.instance(), key = %group.key, documents = %documents, error = %e, "lost the lease: wrote nothing more, standing by");
                        }
                        Err(Error::Shutdown) => return Ok(reports),
                        Err(e) => return Err(e),
                    }
                }
                Ok(None) if mode == Mode::Once => {
                    // One pass while another instance leads: refused, as a second `run` of one
                    // state file is.
                    let holder = coordinator.holder(&group.key).await.ok().flatten().map(|(h, _, _)| h).unwrap_or_default();
                    return Err(Error::Led { key: group.key.clone(), holder, what: "`run --once` runs" });
                }
                Ok(None) => {
                    if !standing_by {
                        standing_by = true;
                        let holder = coordinator.holder(&group.key).await.ok().flatten();
                        let (holder, since) = holder.map(|(h, s, _)| (h, s)).unwrap_or_default();
                        tracing::info!(instance = %coordinator.instance(), key = %group.key, documents = %documents, leader = %holder, since = %since, "standing by: another instance leads");
                    }
                }
                Err(e) if matches!(e.retry(), Retry::WaitFor(_)) => {
                    // Once per outage: a standby looks every second.
                    if !unreachable {
                        unreachable = true;
                        tracing::warn!(key = %group.key, error = %e, "cannot reach postgres for the lease; standing by until it answers");
                    }
                    standing_by = false;
                }
                Err(e) => return Err(e),
            }
        }
        if shutdown.sleep(STANDBY_POLL).await {
            return Ok(reports);
        }
    }
}

/// Runs the group's documents under `lead` until stopped, the lease is lost, or this instance
/// holds more than its share (`true`: it hands the group back, one group at a time).
async fn lead_while_held(
    lead: &Lead,
    group: &Group,
    keys: usize,
    live: &Arc<AtomicUsize>,
    handing_back: &Arc<AtomicBool>,
    mode: Mode,
    shutdown: &Shutdown,
) -> Result<(Vec<CycleReport>, bool)> {
    let (stop, local) = Shutdown::new();
    let handed_back = Arc::new(AtomicBool::new(false));
    let renewing = {
        let (coordinator, leadership, local, shutdown) = (lead.coordinator.clone(), lead.leadership.clone(), local.clone(), shutdown.clone());
        let (live, handing_back, handed_back) = (live.clone(), handing_back.clone(), handed_back.clone());
        async move {
            let every = coordinator.ttl() / 3;
            loop {
                tokio::select! {
                    () = shutdown.wait() => break,
                    ended = local.sleep(every) => if ended { break },
                }
                match coordinator.renew(&leadership).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => tracing::warn!(key = %leadership.key, error = %e, "could not renew the lease; it runs out unless the next renewal succeeds"),
                }
                if leadership.fence.is_lost() {
                    break;
                }
                // Another instance joined: this one leads more than its share now.
                let over = coordinator.held() > Coordinator::share(keys, live.load(Ordering::SeqCst));
                if mode == Mode::Continuous && over && handing_back.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    handed_back.store(true, Ordering::SeqCst);
                    break;
                }
            }
            stop.trigger();
        }
    };
    let documents = run_documents(group.runs.clone(), mode, &local, Some(lead));
    tokio::pin!(documents);
    let outcome = tokio::select! {
        out = &mut documents => out,
        () = renewing => documents.await,
    };
    if lead.leadership.fence.is_lost() && !matches!(outcome, Err(Error::LeaseLost { .. })) && !shutdown.is_triggered() && !handed_back.load(Ordering::SeqCst) {
        // The lease went while the documents were stopping.
        return Err(lead.leadership.fence.check().unwrap_err());
    }
    outcome.map(|r| (r, handed_back.load(Ordering::SeqCst)))
}
