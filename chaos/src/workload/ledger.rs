//! Where a run is recorded: the [`Ledger`] that [`observe`](fn@super::observe) writes to, and the
//! simulation's one ([`Shared`]: the trace, final views and documents, and progress).

use super::Progress;
use crate::history::{ChatView, DocView, TraceEvent, What};
use crate::time::sim_elapsed_ms;

/// Where [`observe`] writes: a trace and the run's [`Progress`] (the simulation's [`Shared`],
/// or a real-process run's record).
///
/// [`observe`]: fn@super::observe
pub trait Ledger {
    /// Records an event now.
    fn record(&mut self, what: What);
    /// The run's progress.
    fn progress(&mut self) -> &mut Progress;
}

/// What the clients of one simulated run share: the recorded trace and final views, and their
/// progress (every simulated client runs on the one simulation thread).
#[derive(Debug, Default)]
pub struct Shared {
    /// The trace so far.
    pub trace: Vec<TraceEvent>,
    /// The final chat views, as clients finish.
    pub views: Vec<ChatView>,
    /// Every device's final relay-sync documents, as devices finish.
    pub docs: Vec<DocView>,
    /// What the clients wait on.
    pub progress: Progress,
}

impl Shared {
    /// Records an event at the current simulated time.
    pub fn record(&mut self, what: What) {
        self.trace.push(TraceEvent {
            at_ms: sim_elapsed_ms(),
            what,
        });
    }
}

impl Ledger for Shared {
    fn record(&mut self, what: What) {
        Shared::record(self, what);
    }

    fn progress(&mut self) -> &mut Progress {
        &mut self.progress
    }
}
