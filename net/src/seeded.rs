//! Randomness a simulation can seed, so that a run repeats from its seed.
//!
//! A simulation runs every host on one thread and calls [`seed_thread`] first. From then on,
//! what the connections dialled and accepted on that thread draw comes from the seed: quinn's
//! initial connection ids, rustls's randomness (client and server randoms), the X25519 key
//! shares, the keys of session tickets and address-validation tokens. Without a seed (every
//! process outside a simulation) each of these is the operating system's randomness, drawn as
//! before through ring.
//!
//! Why the bytes matter and not only their sizes: a restarted server decodes a late packet of
//! its previous life (say the answer to a handshake its previous life began) with keys derived
//! from the packet's ids, and whether its header happens to decode decides whether the packet is
//! dropped or taken for a new connection that then fails. Those are different schedules, so a
//! seed's runs parted there.

use std::cell::Cell;
use std::sync::Arc;

use rustls::crypto::{
    ActiveKeyExchange, GetRandomFailed, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::{Error, NamedGroup};

thread_local! {
    /// The generator state of this thread's seeded randomness, if a simulation seeded it.
    static STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Draws this thread's connection randomness from `seed` until the returned guard drops (then
/// from the operating system again, however the caller ends). Only a simulation, whose hosts
/// all run on the calling thread, seeds it.
#[must_use = "the thread is seeded only while the guard lives"]
pub fn seed_thread(seed: u64) -> ThreadSeeded {
    STATE.with(|state| state.set(Some(seed)));
    ThreadSeeded {
        _not_send: std::marker::PhantomData,
    }
}

/// This thread's connection randomness comes from a seed while this lives ([`seed_thread`]).
#[derive(Debug)]
pub struct ThreadSeeded {
    /// Dropped on the thread it seeded.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ThreadSeeded {
    fn drop(&mut self) {
        STATE.with(|state| state.set(None));
    }
}

/// Fills `bytes` from this thread's seed; false (and `bytes` untouched) when it has none.
fn fill(bytes: &mut [u8]) -> bool {
    STATE.with(|state| {
        let Some(mut current) = state.get() else {
            return false;
        };
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&split_mix(&mut current).to_le_bytes()[..chunk.len()]);
        }
        state.set(Some(current));
        true
    })
}

/// SplitMix64: advances `state` by one step and returns its output.
pub(crate) fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bytes of an initial destination connection id: quinn's default length, the most QUIC
/// allows.
const INITIAL_CID_BYTES: usize = 20;

/// The id a client puts in its first Initial packet (quinn's `initial_dst_cid_provider`).
pub(crate) fn initial_connection_id() -> quinn_proto::ConnectionId {
    let mut bytes = [0u8; INITIAL_CID_BYTES];
    if fill(&mut bytes) {
        return quinn_proto::ConnectionId::new(&bytes);
    }
    use quinn_proto::ConnectionIdGenerator;
    quinn_proto::RandomConnectionIdGenerator::new(INITIAL_CID_BYTES).generate_cid()
}

/// ring's randomness as rustls's ring provider draws it, looked up once (building the provider
/// allocates its lists).
fn ring_random() -> &'static dyn SecureRandom {
    static RING: std::sync::OnceLock<&'static dyn SecureRandom> = std::sync::OnceLock::new();
    *RING.get_or_init(|| rustls::crypto::ring::default_provider().secure_random)
}

/// rustls's randomness: the thread's seed, else ring's.
#[derive(Debug)]
pub(crate) struct Random;

impl SecureRandom for Random {
    fn fill(&self, bytes: &mut [u8]) -> Result<(), GetRandomFailed> {
        if fill(bytes) {
            return Ok(());
        }
        ring_random().fill(bytes)
    }
}

/// X25519 key exchange: ring's, or with the thread's seed a key share drawn from it (the same
/// function, RFC 7748, computed by x25519-dalek, since ring takes no outside randomness).
#[derive(Debug)]
pub(crate) struct X25519;

impl SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut secret = [0u8; 32];
        if !fill(&mut secret) {
            return rustls::crypto::ring::kx_group::X25519.start();
        }
        let public = x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
        Ok(Box::new(SeededShare { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// One seeded X25519 key share.
struct SeededShare {
    secret: [u8; 32],
    public: [u8; 32],
}

impl ActiveKeyExchange for SeededShare {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] = peer_pub_key
            .try_into()
            .map_err(|_| Error::from(rustls::PeerMisbehaved::InvalidKeyShare))?;
        let shared = x25519_dalek::x25519(self.secret, peer);
        // A low-order peer key gives all zeros (RFC 7748 section 6.1), as ring refuses too.
        if shared == [0u8; 32] {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// The session-ticket encrypter of a device server: ring's (a random key, rotated), or with the
/// thread's seed one whose key and nonces come from the seed.
pub(crate) fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, Error> {
    let mut key = [0u8; 32];
    if !fill(&mut key) {
        return rustls::crypto::ring::Ticketer::new();
    }
    let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key)
        .map_err(|_| Error::General("a seeded ticket key".into()))?;
    Ok(Arc::new(SeededTicketer {
        key: ring::aead::LessSafeKey::new(key),
    }))
}

/// Tickets as `nonce ‖ ChaCha20-Poly1305(state)`, nonces drawn from the thread's seed.
struct SeededTicketer {
    key: ring::aead::LessSafeKey,
}

impl std::fmt::Debug for SeededTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededTicketer").finish_non_exhaustive()
    }
}

/// How long a seeded ticket is offered for, as ring's ticketer (6 hours).
const SEEDED_TICKET_LIFETIME_S: u32 = 6 * 60 * 60;

impl rustls::server::ProducesTickets for SeededTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        SEEDED_TICKET_LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        if !fill(&mut nonce) {
            // Off the seeded thread: a ticket that repeats a nonce must never be made.
            return None;
        }
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = nonce.to_vec();
        ticket.append(&mut sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (nonce, sealed) = cipher.split_at_checked(ring::aead::NONCE_LEN)?;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut opened)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// quinn's address-validation token key: with the thread's seed, one drawn from it; `None`
/// leaves quinn's own (random) key.
pub(crate) fn token_key() -> Option<Arc<dyn quinn_proto::crypto::HandshakeTokenKey>> {
    let mut master = [0u8; 64];
    if !fill(&mut master) {
        return None;
    }
    let key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&master);
    Some(Arc::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `draw` with this thread seeded `seed`, then unseeds it.
    fn with_seed<T>(seed: u64, draw: impl FnOnce() -> T) -> T {
        let _seeded = seed_thread(seed);
        draw()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_ids_and_randoms_again() {
        let draw = || {
            let id = initial_connection_id();
            let mut random = [0u8; 32];
            Random.fill(&mut random).expect("fill");
            (id.to_vec(), random)
        };
        let first = with_seed(7, draw);
        assert_eq!(with_seed(7, draw), first);
        assert_ne!(with_seed(8, draw), first);
        assert_eq!(first.0.len(), INITIAL_CID_BYTES);
        // Unseeded, the operating system's.
        assert_ne!(draw(), draw());
    }

    #[test]
    fn seeded_and_ring_key_shares_agree_on_the_secret() {
        let seeded = with_seed(3, || X25519.start()).expect("seeded share");
        let ring = rustls::crypto::ring::kx_group::X25519
            .start()
            .expect("ring share");
        let seeded_public = seeded.pub_key().to_vec();
        let ring_public = ring.pub_key().to_vec();
        let from_seeded = seeded.complete(&ring_public).expect("seeded side");
        let from_ring = ring.complete(&seeded_public).expect("ring side");
        assert_eq!(from_seeded.secret_bytes(), from_ring.secret_bytes());
        let again = with_seed(3, || X25519.start()).expect("seeded share");
        assert_eq!(again.pub_key(), &seeded_public[..]);
    }

    #[test]
    fn a_seeded_share_refuses_a_low_order_or_misshapen_peer_key() {
        let share = || with_seed(4, || X25519.start()).expect("share");
        assert!(share().complete(&[0u8; 32]).is_err());
        assert!(share().complete(&[9u8; 31]).is_err());
    }

    #[test]
    fn seeded_tickets_open_and_refuse_what_was_changed() {
        let (ticketer, ticket) = with_seed(5, || {
            let ticketer = ticketer().expect("ticketer");
            let ticket = ticketer.encrypt(b"session state").expect("ticket");
            (ticketer, ticket)
        });
        assert_eq!(
            ticketer.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        let mut changed = ticket.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(ticketer.decrypt(&changed), None);
        assert_eq!(ticketer.decrypt(&ticket[..5]), None);
        assert_eq!(ticketer.encrypt(b"off the seeded thread"), None);
    }
}
