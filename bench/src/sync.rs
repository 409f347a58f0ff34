//! The sync benchmark: a new device's bootstrap of a long chat history from a snapshot, and one
//! remote operation applied once in step, next to automerge's own save and load of the same
//! documents in the same run ([`relay_sync::bench::measure_bootstrap`]). In process: what a
//! bootstrap would transfer is the snapshot's size; the encrypted blob upload and download
//! that would carry it are not part of this measurement.

use std::time::Instant;

use relay_sync::bench::{BootstrapMeasurement, HistoryShape, measure_bootstrap};
use serde::Serialize;

use crate::BenchError;

/// Messages of the default run (the bootstrap benchmark).
pub const MESSAGES_DEFAULT: u64 = 100_000;

/// What `relayd bench sync` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// Messages in the history.
    pub messages: u64,
    /// Epoch documents they took.
    pub epochs: usize,
    /// Building the history one operation at a time, in ms.
    pub build_ms: f64,
    /// The snapshot a new device receives, in bytes.
    pub snapshot_bytes: usize,
    /// automerge's own save of the same documents, in bytes.
    pub automerge_saved_bytes: usize,
    /// Snapshot bytes over automerge's own saved bytes.
    pub size_ratio: f64,
    /// Saving the snapshot, in ms.
    pub snapshot_save_ms: f64,
    /// automerge's own save, in ms.
    pub automerge_save_ms: f64,
    /// The new device loading the snapshot (documents and their genesis checked), in ms.
    pub snapshot_load_ms: f64,
    /// automerge's own load of the same documents, in ms.
    pub automerge_load_ms: f64,
    /// Bytes the two devices exchanged to get in step after the load.
    pub catch_up_bytes: usize,
    /// Bytes that carried one remote edit.
    pub remote_operation_bytes: usize,
    /// The new device applying that edit, in ms.
    pub remote_operation_apply_ms: f64,
    /// automerge alone applying the same change to the same document, in ms.
    pub automerge_remote_operation_apply_ms: f64,
}

/// Measures a history of `messages` messages (edits, deletions, reactions and read marks as
/// in [`HistoryShape::BOOTSTRAP`]).
pub fn run(messages: u64) -> Result<SyncReport, BenchError> {
    if messages < 2 {
        return Err(BenchError::Invalid(
            "the sync benchmark needs at least 2 messages".into(),
        ));
    }
    let shape = HistoryShape {
        messages,
        ..HistoryShape::BOOTSTRAP
    };
    let measured = measure_bootstrap(shape, &mut Instant::now)
        .map_err(|error| BenchError::Invalid(format!("the sync benchmark failed: {error}")))?;
    Ok(report(&measured))
}

fn report(measured: &BootstrapMeasurement) -> SyncReport {
    let ms = |duration: std::time::Duration| duration.as_secs_f64() * 1_000.0;
    SyncReport {
        messages: measured.shape.messages,
        epochs: measured.epochs,
        build_ms: ms(measured.build),
        snapshot_bytes: measured.snapshot_bytes,
        automerge_saved_bytes: measured.automerge_saved_bytes,
        size_ratio: measured.size_ratio(),
        snapshot_save_ms: ms(measured.snapshot_save),
        automerge_save_ms: ms(measured.automerge_save),
        snapshot_load_ms: ms(measured.snapshot_load),
        automerge_load_ms: ms(measured.automerge_load),
        catch_up_bytes: measured.catch_up_bytes,
        remote_operation_bytes: measured.remote_operation_bytes,
        remote_operation_apply_ms: ms(measured.remote_operation_apply),
        automerge_remote_operation_apply_ms: ms(measured.automerge_remote_operation_apply),
    }
}

impl SyncReport {
    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        format!(
            "relayd bench sync: a new device bootstraps {} messages ({} epochs; built in {:.0} ms), \
             in process\n\n\
             | measure | relay-sync | automerge alone | ratio |\n\
             |---|--:|--:|--:|\n\
             | saved size | {} B | {} B | {:.3}× |\n\
             | save | {:.0} ms | {:.0} ms | |\n\
             | load (new device usable) | {:.0} ms | {:.0} ms | {:.2}× |\n\
             | catch-up after the load | {} B | | |\n\
             | one remote edit | {} B, {:.2} ms to apply | {:.2} ms to apply the change | |\n",
            self.messages,
            self.epochs,
            self.build_ms,
            self.snapshot_bytes,
            self.automerge_saved_bytes,
            self.size_ratio,
            self.snapshot_save_ms,
            self.automerge_save_ms,
            self.snapshot_load_ms,
            self.automerge_load_ms,
            if self.automerge_load_ms > 0.0 {
                self.snapshot_load_ms / self.automerge_load_ms
            } else {
                0.0
            },
            self.catch_up_bytes,
            self.remote_operation_bytes,
            self.remote_operation_apply_ms,
            self.automerge_remote_operation_apply_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_measure() {
        let report = run(2_000).expect("measured");
        assert_eq!((report.messages, report.epochs), (2_000, 1));
        assert!(report.snapshot_bytes > 0 && report.remote_operation_bytes > 0);
        let table = report.table();
        assert!(table.contains("| saved size |"), "{table}");
        assert!(run(1).is_err());
    }
}
