//! What a device's control stream brings besides queue pushes: the pushes counted ([`Pushes`])
//! and, for the presence benchmark, presence updates and typing notices logged with the instant
//! each arrived ([`SignalLog`]).

use super::*;

/// What the control stream said since authentication: every push counts (the edge may drop
/// a push when its device is slow to read, so each one means "fetch", whatever queue sequence
/// it names), the highest queue sequence named is a hint, and the stream's end is the
/// connection's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushes {
    /// Pushes received.
    pub received: u64,
    /// The highest queue sequence a push named.
    pub latest_queue_seq: u64,
    /// Why the control stream ended, once it did.
    pub closed: Option<String>,
}

/// Entries sent along with pushes that a link keeps until its inbox takes them.
pub const PUSHED_ENTRIES_KEPT_MAX: usize = 4_096;

/// A presence update or typing notice as a device's control stream brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// A watched account's presence, as the watcher may see it.
    Presence {
        /// The watched account.
        account: AccountId,
        /// Its state.
        state: PresenceState,
    },
    /// A device typing to the receiver's account, or stopped.
    Typing {
        /// The typing device.
        from: DeviceAddress,
        /// Typing or stopped.
        typing: bool,
    },
}

/// One push of a [`SignalEvent`]: which device got it, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// The device whose control stream brought it.
    pub receiver: DeviceAddress,
    /// What it said.
    pub event: SignalEvent,
    /// When it was read off the stream.
    pub at: Instant,
}

/// The presence and typing pushes of the devices that authenticated with it, in arrival order:
/// every one counted, the first `capacity` kept (later ones are counted, not kept, so memory
/// stays bounded however long a run is).
#[derive(Debug)]
pub struct SignalLog {
    kept: Mutex<Vec<Signal>>,
    capacity: usize,
    presence: AtomicU64,
    typing: AtomicU64,
    /// Typing notices whose sender did not parse (not kept).
    pub(super) malformed: AtomicU64,
}

impl SignalLog {
    /// An empty log keeping at most `capacity` pushes.
    pub fn new(capacity: usize) -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
            capacity,
            presence: AtomicU64::new(0),
            typing: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    /// Counts `signal`, and keeps it while there is room.
    pub fn record(&self, signal: Signal) {
        let counter = match signal.event {
            SignalEvent::Presence { .. } => &self.presence,
            SignalEvent::Typing { .. } => &self.typing,
        };
        let mut kept = self.lock();
        if kept.len() < self.capacity {
            kept.push(signal);
        }
        // Counted under the lock, so that a count read is never ahead of what is kept.
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Presence updates received so far.
    pub fn presence_received(&self) -> u64 {
        self.presence.load(Ordering::Relaxed)
    }

    /// Typing notices received so far.
    pub fn typing_received(&self) -> u64 {
        self.typing.load(Ordering::Relaxed)
    }

    /// Typing notices whose typing device did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Pushes received but not kept (past the capacity).
    pub fn not_kept(&self) -> u64 {
        let kept = self.lock().len() as u64;
        (self.presence_received() + self.typing_received()).saturating_sub(kept)
    }

    /// A copy of the pushes kept so far, in arrival order.
    pub fn kept(&self) -> Vec<Signal> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Signal>> {
        self.kept
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
