//! Progress of the full load: a bar with rate and ETA when stderr is a terminal (indicatif),
//! otherwise one log line every [`LOG_EVERY_BATCHES`] batches.
//!
//! Several documents loading at once get a line each, under one `MultiProgress`, each named
//! after its document. Log lines go through [`StderrWriter`], which hides the bars while a line
//! is written, so the two never overwrite each other.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, MultiProgress, ProgressBar, ProgressState, ProgressStyle};

/// Without a terminal, a progress line every this many batches.
pub const LOG_EVERY_BATCHES: u64 = 20;

/// The bars on screen (one per document loading), and how many there are: the log writer
/// suspends them while it writes.
static BARS: Mutex<Option<(MultiProgress, usize)>> = Mutex::new(None);

pub struct Progress {
    bar: Option<ProgressBar>,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: u64,
    done: u64,
    batches: u64,
    started: Option<Instant>,
    /// The bar is among the ones on screen.
    shown: bool,
}

impl Progress {
    /// A bar when `terminal`, log lines otherwise.
    pub fn new(terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(bar_style().unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar.set_prefix(crate::telemetry::document().to_string());
            bar
        });
        Progress { bar, state: Mutex::new(Counts::default()) }
    }

    /// For the process's stderr.
    pub fn for_stderr() -> Progress {
        Progress::new(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    }

    /// The load begins with `total` records to go.
    pub fn start(&self, total: u64) {
        let was_shown = match self.state.lock() {
            Ok(mut c) => {
                let shown = c.shown;
                *c = Counts { total, started: Some(Instant::now()), shown: shown || self.bar.is_some(), ..Counts::default() };
                shown
            }
            Err(_) => true,
        };
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.reset();
            // Started again (a reload): the bar is on screen already.
            if !was_shown {
                if let Ok(mut slot) = BARS.lock() {
                    let (multi, count) = slot.get_or_insert_with(|| (MultiProgress::new(), 0));
                    multi.add(bar.clone());
                    *count += 1;
                }
            }
        }
        crate::telemetry::full_load(0, total);
        tracing::info!(records = total, "full load started");
    }

    /// `records` more are loaded (and their progress saved).
    pub fn advance(&self, records: u64) {
        let Ok(mut c) = self.state.lock() else { return };
        c.done += records;
        c.batches += 1;
        crate::telemetry::full_load(c.done, c.total);
        if let Some(bar) = &self.bar {
            bar.inc(records);
        } else if c.batches % LOG_EVERY_BATCHES == 0 {
            let elapsed = c.started.map_or(Duration::ZERO, |s| s.elapsed());
            let (rate, eta) = rate_and_eta(c.done, c.total, elapsed);
            tracing::info!(records = c.done, of = c.total, records_per_sec = rate, eta_sec = eta, "full load progress");
        }
    }

    /// The load is over (done or interrupted): the bar goes away.
    pub fn finish(&self) {
        crate::telemetry::full_load(0, 0);
        let shown = self.state.lock().map(|mut c| std::mem::take(&mut c.shown)).unwrap_or(false);
        if let (Some(bar), true) = (&self.bar, shown) {
            bar.finish_and_clear();
            if let Ok(mut slot) = BARS.lock() {
                if let Some((multi, count)) = slot.as_mut() {
                    multi.remove(bar);
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        *slot = None;
                    }
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Records per second so far, and seconds left at that rate (`None` before any record is loaded).
pub fn rate_and_eta(done: u64, total: u64, elapsed: Duration) -> (u64, Option<u64>) {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs <= 0.0 {
        return (0, None);
    }
    let rate = done as f64 / secs;
    (rate.round() as u64, Some((total.saturating_sub(done) as f64 / rate).ceil() as u64))
}

fn bar_style() -> Result<ProgressStyle, indicatif::style::TemplateError> {
    let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&rate_text(state.per_sec()));
    };
    Ok(ProgressStyle::with_template("{prefix:>10} full load {bar:40} {pos}/{len} records  {rate}  ETA {eta}")?.with_key("rate", rate))
}

/// A rate as the bar shows it: whole records per second, thousands separated (`11,919/s`);
/// indicatif's own `{per_sec}` shows four decimals.
pub fn rate_text(per_sec: f64) -> String {
    // `as` saturates, and maps NaN (no time elapsed yet) to 0.
    format!("{}/s", HumanCount(per_sec.round() as u64))
}

/// The log's writer: stderr, with the progress bar hidden while a line is written.
#[derive(Clone, Copy, Default)]
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bars = BARS.lock().ok().and_then(|b| b.as_ref().map(|(multi, _)| multi.clone()));
        match bars {
            Some(multi) => multi.suspend(|| std::io::stderr().write_all(buf)).map(|_| buf.len()),
            None => std::io::stderr().write_all(buf).map(|_| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = StderrWriter;

    fn make_writer(&'a self) -> StderrWriter {
        StderrWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_the_counts() {
        assert_eq!(rate_and_eta(0, 100, Duration::from_secs(3)), (0, None));
        assert_eq!(rate_and_eta(50, 100, Duration::from_secs(5)), (10, Some(5)));
        assert_eq!(rate_and_eta(100, 100, Duration::from_secs(5)), (20, Some(0)));
    }

    #[test]
    fn the_bar_shows_whole_records_per_second() {
        assert_eq!(rate_text(11_919.291_5), "11,919/s");
        assert_eq!(rate_text(11_919.5), "11,920/s");
        assert_eq!(rate_text(0.4), "0/s");
        assert_eq!(rate_text(f64::NAN), "0/s");
        assert_eq!(rate_text(1_234_567.0), "1,234,567/s");
        assert!(bar_style().is_ok(), "the bar's template does not parse");
    }
}
