//! [`ConnectionSlots`]: the bound on the connections a server holds, and [`accept_bounded`],
//! which refuses a connection past it instead of spawning tasks without end.

use std::sync::Arc;

/// The connections a server holds, counted against a bound: each accepted connection takes a
/// slot and gives it back when its [`ConnectionSlot`] drops; past the bound the server refuses
/// new connections (QUIC `CONNECTION_REFUSED`, which peers retry with backoff) instead of
/// spawning tasks without end.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    held: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

/// One held connection slot, given back on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectionSlots {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::default(),
            max,
        }
    }

    /// A slot for one more connection, unless `max` are held.
    pub fn try_take(&self) -> Option<ConnectionSlot> {
        use std::sync::atomic::Ordering;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .ok()
            .map(|_| ConnectionSlot {
                held: self.held.clone(),
            })
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.held.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Accepts one incoming connection if a slot is free: the connection and its slot, or `None`
/// when the handshake failed or the server is full (the connection is then refused).
pub async fn accept_bounded(
    slots: &ConnectionSlots,
    incoming: quinn::Incoming,
) -> Option<(quinn::Connection, ConnectionSlot)> {
    let Some(slot) = slots.try_take() else {
        tracing::warn!(
            held = slots.held(),
            remote = %incoming.remote_address(),
            "refusing a connection: the server holds as many as it may"
        );
        incoming.refuse();
        return None;
    };
    match incoming.await {
        Ok(connection) => Some((connection, slot)),
        Err(error) => {
            tracing::debug!(%error, "handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let slots = ConnectionSlots::new(2);
        let first = slots.try_take().expect("a slot");
        let second = slots.try_take().expect("a slot");
        assert!(slots.try_take().is_none(), "full");
        assert_eq!(slots.held(), 2);
        drop(first);
        let third = slots.try_take().expect("one was given back");
        drop((second, third));
        assert_eq!(slots.held(), 0);
    }
}
