//! Index settings for a full load: refresh and replicas off, the values before saved in the
//! checkpoint *before* they change (a crash after the change still knows what to put back), and
//! put back when the load ends, is cut short, or at the next start after a crash.

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::shutdown::Shutdown;

use super::{full_load_settings, IndexSettings, IndexSink};

/// Turns refresh and replicas off for the full load, after saving the values to put back.
pub async fn tune_for_full_load<K: IndexSink>(sink: &K, checkpoint: &mut Checkpoint, shutdown: &Shutdown) -> Result<()> {
    if checkpoint.state().tuned.is_some() {
        // A crash during the full load left them off, and the originals on disk.
        return Ok(());
    }
    let original = sink.settings_before_full_load(shutdown).await?;
    checkpoint.set_tuned(Some(original.clone()))?;
    sink.tune_for_full_load(shutdown).await?;
    tracing::info!(settings = %settings_text(&full_load_settings()), restore = %settings_text(&original), "index tuned for the full load");
    Ok(())
}

/// Puts back the settings [`tune_for_full_load`] changed, then makes the load visible to search.
pub async fn restore_settings<K: IndexSink>(sink: &K, checkpoint: &mut Checkpoint, shutdown: &Shutdown) -> Result<()> {
    let Some(original) = checkpoint.state().tuned.clone() else { return Ok(()) };
    sink.restore_settings(&original, shutdown).await?;
    checkpoint.set_tuned(None)?;
    tracing::info!(settings = %settings_text(&original), "index settings restored");
    Ok(())
}

/// Settings as an operator writes them: `index.number_of_replicas=1, index.refresh_interval=(default)`.
fn settings_text(settings: &IndexSettings) -> String {
    let pairs: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(default)"))).collect();
    pairs.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_logged_as_an_operator_writes_them() {
        let mut s = IndexSettings::new();
        s.insert("index.number_of_replicas".to_string(), Some("1".to_string()));
        s.insert("index.refresh_interval".to_string(), None);
        assert_eq!(settings_text(&s), "index.number_of_replicas=1, index.refresh_interval=(default)");
    }
}
