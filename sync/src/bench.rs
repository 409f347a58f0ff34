//! The bootstrap benchmark's measurements, as a function a benchmark binary calls and prints: a
//! history of many messages in one chat (with edits, deletions, reactions and read marks), the
//! snapshot a new device receives and the time to load it, and the time for the new device to
//! apply one remote operation once in step, each next to automerge's own save and load of the
//! same documents in the same run.
//!
//! The crate reads no clock: [`measure_bootstrap`] takes the caller's (`now`), so this module
//! stays sans-IO like the rest, and a test can drive it with any clock.

use std::time::{Duration, Instant};

use automerge::AutoCommit;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId};

use crate::epoch::{Outcome, epoch_of};
use crate::error::SyncError;
use crate::replica::{NewMessage, Replica};

/// Most rounds two in-step replicas may take to exchange one operation before the benchmark
/// calls the sync stuck.
pub const EXCHANGE_ROUNDS_MAX: usize = 64;

/// Remote edits the benchmark times one at a time (a single one is at the mercy of a busy
/// machine): it reports their median and the slowest.
pub const REMOTE_OPERATIONS: usize = 21;

/// The history the benchmark builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryShape {
    /// Messages in the chat (chat sequences `1..=messages`).
    pub messages: u64,
    /// Every this many messages, one is edited by its sender (0: none).
    pub edit_every: u64,
    /// Every this many messages, one is deleted for everyone (0: none).
    pub delete_every: u64,
    /// Every this many messages, one gets a reaction (0: none).
    pub react_every: u64,
    /// Every this many messages, the reader's read mark moves up to it (0: never).
    pub read_every: u64,
}

impl HistoryShape {
    /// The bootstrap benchmark: 100,000 messages, one in 100 edited, one in 10,000
    /// deleted, one in 20 reacted to, a read mark every 500.
    pub const BOOTSTRAP: HistoryShape = HistoryShape {
        messages: 100_000,
        edit_every: 100,
        delete_every: 10_000,
        react_every: 20,
        read_every: 500,
    };
}

/// What [`measure_bootstrap`] measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapMeasurement {
    /// The history measured.
    pub shape: HistoryShape,
    /// Epoch documents the chat took.
    pub epochs: usize,
    /// Time to build the history on the first device (one operation at a time).
    pub build: Duration,
    /// Bytes of the snapshot the new device receives.
    pub snapshot_bytes: usize,
    /// Time to save that snapshot.
    pub snapshot_save: Duration,
    /// Time for the new device to load it (documents loaded and every genesis checked).
    pub snapshot_load: Duration,
    /// Bytes of automerge's own save of the same documents, summed.
    pub automerge_saved_bytes: usize,
    /// Time of automerge's own save of the same documents.
    pub automerge_save: Duration,
    /// Time of automerge's own load of those saved documents.
    pub automerge_load: Duration,
    /// Bytes the two devices exchanged to get in step after the load (heads only).
    pub catch_up_bytes: usize,
    /// Remote edits measured, one at a time (spread over the history).
    pub remote_operations: usize,
    /// Bytes of the sync messages that carried one remote edit to the new device (median).
    pub remote_operation_bytes: usize,
    /// Time the new device took to receive and apply them (median).
    pub remote_operation_apply: Duration,
    /// The slowest of those.
    pub remote_operation_apply_max: Duration,
    /// Time automerge alone takes to apply the same change to the same document (no sync
    /// protocol, no patches, no checks; median).
    pub automerge_remote_operation_apply: Duration,
}

impl BootstrapMeasurement {
    /// The snapshot's size over automerge's own saved size.
    pub fn size_ratio(&self) -> f64 {
        if self.automerge_saved_bytes == 0 {
            return 0.0;
        }
        self.snapshot_bytes as f64 / self.automerge_saved_bytes as f64
    }
}

/// Why the benchmark could not measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The replica refused an operation or bytes of its own.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Automerge refused to load a document it had just saved.
    #[error("automerge could not load a document it saved: {0}")]
    Load(#[from] automerge::AutomergeError),
    /// The new device does not show what the first device holds.
    #[error("the new device does not converge: {0}")]
    Diverged(&'static str),
}

/// Builds `shape`'s history on a phone, bootstraps a laptop from the phone's snapshot, gets the
/// two in step, and applies one edit made on the phone to the laptop; measures each step with
/// `now`, and automerge's own save and load of the same documents.
pub fn measure_bootstrap(
    shape: HistoryShape,
    now: &mut dyn FnMut() -> Instant,
) -> Result<BootstrapMeasurement, BenchError> {
    let phone_device = own_device(1);
    let laptop_device = own_device(2);
    let mut phone = Replica::new(phone_device, 1);

    let started = now();
    let place = HistoryPlace {
        chat: BENCH_CHAT,
        contact: contact_device(),
        after_chat_seq: 0,
    };
    build_history(&mut phone, place, shape, &mut |_| {})?;
    let build = now() - started;

    let started = now();
    let snapshot = phone.save_snapshot();
    let snapshot_save = now() - started;

    let started = now();
    let mut laptop = Replica::load_snapshot(laptop_device, 2, &snapshot)?;
    let snapshot_load = now() - started;
    if laptop.view(BENCH_CHAT) != phone.view(BENCH_CHAT) {
        return Err(BenchError::Diverged("after loading the snapshot"));
    }

    let (automerge_saved_bytes, automerge_save, automerge_load, epochs) = {
        let documents = phone.documents_mut();
        let epochs = documents.len();
        let started = now();
        let saved: Vec<Vec<u8>> = documents.into_iter().map(AutoCommit::save).collect();
        let save = now() - started;
        let started = now();
        for bytes in &saved {
            AutoCommit::load(bytes)?;
        }
        let load = now() - started;
        (saved.iter().map(Vec::len).sum(), save, load, epochs)
    };

    let (catch_up_bytes, _) = exchange(&mut phone, &mut laptop, now)?;

    let remote = measure_remote_operations(&mut phone, &mut laptop, shape, now)?;
    if laptop.view(BENCH_CHAT) != phone.view(BENCH_CHAT) {
        return Err(BenchError::Diverged("after the remote edits"));
    }

    Ok(BootstrapMeasurement {
        shape,
        epochs,
        build,
        snapshot_bytes: snapshot.len(),
        snapshot_save,
        snapshot_load,
        automerge_saved_bytes,
        automerge_save,
        automerge_load,
        catch_up_bytes,
        remote_operations: remote.operations,
        remote_operation_bytes: remote.bytes,
        remote_operation_apply: remote.apply,
        remote_operation_apply_max: remote.apply_max,
        automerge_remote_operation_apply: remote.automerge_apply,
    })
}

/// What [`measure_remote_operations`] measured.
struct RemoteOperations {
    operations: usize,
    bytes: usize,
    apply: Duration,
    apply_max: Duration,
    automerge_apply: Duration,
}

/// Edits [`REMOTE_OPERATIONS`] of the phone's messages, spread over the whole history, one at a
/// time once the laptop is in step; times the laptop receiving each edit, and automerge alone
/// applying the same change to a copy of the same document. Returns medians (and the slowest).
fn measure_remote_operations(
    phone: &mut Replica,
    laptop: &mut Replica,
    shape: HistoryShape,
    now: &mut dyn FnMut() -> Instant,
) -> Result<RemoteOperations, BenchError> {
    let mut applies = Vec::with_capacity(REMOTE_OPERATIONS);
    let mut automerge_applies = Vec::with_capacity(REMOTE_OPERATIONS);
    let mut bytes = Vec::with_capacity(REMOTE_OPERATIONS);
    let stride = (shape.messages / REMOTE_OPERATIONS as u64).max(1);
    for round in 0..REMOTE_OPERATIONS as u64 {
        // A message the phone sent and did not delete (an edit it may make), newest first.
        let start = shape.messages.saturating_sub(round * stride).max(1);
        let target = (1..=start)
            .rev()
            .find(|chat_seq| sent_by_phone(*chat_seq) && !deleted(shape, *chat_seq))
            .ok_or(BenchError::Diverged(
                "the history holds no message the phone may edit",
            ))?;
        let document = usize::try_from(epoch_of(target)?).unwrap_or(usize::MAX);
        // automerge alone, for comparison: the edited epoch's document as it was before.
        let mut raw_before = phone
            .documents_mut()
            .get_mut(document)
            .map(|document| AutoCommit::load(&document.save()))
            .transpose()?
            .ok_or(BenchError::Diverged("the phone lacks the target's epoch"))?;
        let at = phone.tick(BENCH_TIME_MS + shape.messages + 1 + round);
        let text = format!("edited once the laptop was in step ({round})");
        if phone.edit(BENCH_CHAT, target, &text, at)? != Outcome::Applied {
            return Err(BenchError::Diverged("the phone's edit did not apply"));
        }
        let change = phone
            .documents_mut()
            .get_mut(document)
            .and_then(|document| document.get_last_local_change())
            .ok_or(BenchError::Diverged("the phone's edit made no change"))?;
        let started = now();
        raw_before.apply_changes([change])?;
        automerge_applies.push(now() - started);
        let (exchanged, apply) = exchange(phone, laptop, now)?;
        bytes.push(exchanged);
        applies.push(apply);
    }
    Ok(RemoteOperations {
        operations: applies.len(),
        bytes: median(&mut bytes),
        apply_max: applies.iter().copied().max().unwrap_or_default(),
        apply: median(&mut applies),
        automerge_apply: median(&mut automerge_applies),
    })
}

/// The middle value (the upper one of an even count); the default of none.
fn median<T: Ord + Copy + Default>(values: &mut [T]) -> T {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// automerge's own save and load of the documents of a snapshot (what a device uploads to
/// bootstrap another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutomergeCeiling {
    /// Epoch documents in the snapshot.
    pub documents: usize,
    /// Bytes of automerge's own save of them, summed.
    pub saved_bytes: usize,
    /// Time of that save.
    pub save: Duration,
    /// Time of automerge's own load of the saved bytes.
    pub load: Duration,
}

/// Loads every document of `snapshot` (untimed), then times automerge saving them all and
/// loading what it saved, with `now`.
pub fn automerge_ceiling(
    snapshot: &[u8],
    now: &mut dyn FnMut() -> Instant,
) -> Result<AutomergeCeiling, BenchError> {
    let mut documents = crate::wire::decode_snapshot(snapshot)?
        .into_iter()
        .map(|(_, bytes)| AutoCommit::load(bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let started = now();
    let saved: Vec<Vec<u8>> = documents.iter_mut().map(AutoCommit::save).collect();
    let save = now() - started;
    let started = now();
    for bytes in &saved {
        AutoCommit::load(bytes)?;
    }
    let load = now() - started;
    Ok(AutomergeCeiling {
        documents: documents.len(),
        saved_bytes: saved.iter().map(Vec::len).sum(),
        save,
        load,
    })
}

/// The benchmark's chat.
const BENCH_CHAT: ChatId = ChatId([0xbe; 16]);

/// The time of the first message, in ms since the Unix epoch (a fixed one: the run is the same
/// every time).
const BENCH_TIME_MS: u64 = 1_700_000_000_000;

fn own_device(device: u32) -> DeviceAddress {
    DeviceAddress {
        account: AccountId(1),
        device: DeviceId(device),
    }
}

fn contact_device() -> DeviceAddress {
    DeviceAddress {
        account: AccountId(2),
        device: DeviceId(1),
    }
}

/// A text of 20 to 120 bytes of words, different for each message, so the documents compress
/// as a real chat would.
fn text_of(chat_seq: u64) -> String {
    const WORDS: [&str; 16] = [
        "the", "relay", "meeting", "tomorrow", "at", "noon", "sounds", "good", "see", "you",
        "there", "bring", "coffee", "laptop", "train", "late",
    ];
    let mut seed = chat_seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut text = format!("{chat_seq}:");
    let target_bytes = 20 + (seed % 100) as usize;
    while text.len() < target_bytes {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        text.push(' ');
        text.push_str(WORDS[(seed >> 60) as usize]);
    }
    text
}

/// Whether `chat_seq` is a multiple of `period` (never, for 0).
fn every(period: u64, chat_seq: u64) -> bool {
    period != 0 && chat_seq.is_multiple_of(period)
}

/// The phone sends the even messages, the contact the odd ones.
fn sent_by_phone(chat_seq: u64) -> bool {
    chat_seq.is_multiple_of(2)
}

/// Whether the history deletes `chat_seq` (only the phone deletes, its own messages).
fn deleted(shape: HistoryShape, chat_seq: u64) -> bool {
    sent_by_phone(chat_seq) && every(shape.delete_every, chat_seq)
}

/// Where [`build_history`] writes a history: the chat, the contact on the other side, and the
/// chat sequence after which the history starts (the messages take the next
/// [`HistoryShape::messages`] sequences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPlace {
    /// The chat.
    pub chat: ChatId,
    /// The contact's device, the sender of the messages the replica's device did not send.
    pub contact: DeviceAddress,
    /// The last chat sequence before the history (0: it starts the chat).
    pub after_chat_seq: u64,
}

/// Messages [`build_history`] writes between two calls of its `progress`.
pub const BUILD_PROGRESS_MESSAGES: u64 = 1_000;

/// Writes `shape`'s history into `replica` at `place`, one operation at a time as a device
/// would: the replica's device sends the messages of even chat sequences and the contact the
/// odd ones; the replica's device edits, deletes for everyone (its own messages), reacts and
/// moves its read mark as `shape` says. Calls `progress` with the messages written so far
/// every [`BUILD_PROGRESS_MESSAGES`] and at the end.
pub fn build_history(
    replica: &mut Replica,
    place: HistoryPlace,
    shape: HistoryShape,
    progress: &mut dyn FnMut(u64),
) -> Result<(), SyncError> {
    let me = replica.device();
    let chat = place.chat;
    for written in 1..=shape.messages {
        let chat_seq = place.after_chat_seq + written;
        let sender = if sent_by_phone(chat_seq) {
            me
        } else {
            place.contact
        };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&chat_seq.to_be_bytes());
        let text = text_of(chat_seq);
        replica.append(
            chat,
            &NewMessage {
                chat_seq,
                sender,
                client_message_id: ClientMessageId(id),
                server_time_ms: BENCH_TIME_MS + chat_seq,
                sent_time_ms: BENCH_TIME_MS + chat_seq,
                text: &text,
                attachment: None,
            },
        )?;
        let time_ms = BENCH_TIME_MS + chat_seq;
        // Only the sender's account edits and deletes: the replica's own messages.
        if every(shape.edit_every, chat_seq) && sender == me {
            let at = replica.tick(time_ms);
            replica.edit(chat, chat_seq, &format!("{text} (edited)"), at)?;
        }
        if deleted(shape, chat_seq) {
            let at = replica.tick(time_ms);
            replica.delete(chat, chat_seq, at)?;
        }
        if every(shape.react_every, chat_seq) {
            let at = replica.tick(time_ms);
            replica.react(chat, chat_seq, Some("👍"), at)?;
        }
        if every(shape.read_every, chat_seq) {
            replica.mark_read(chat, me, chat_seq)?;
        }
        if written % BUILD_PROGRESS_MESSAGES == 0 || written == shape.messages {
            progress(written);
        }
    }
    Ok(())
}

/// Runs the sync both ways until neither side has anything to send. Returns the bytes exchanged
/// and the time the laptop spent receiving.
fn exchange(
    phone: &mut Replica,
    laptop: &mut Replica,
    now: &mut dyn FnMut() -> Instant,
) -> Result<(usize, Duration), BenchError> {
    let phone_device = phone.device();
    let laptop_device = laptop.device();
    let mut bytes_exchanged = 0;
    let mut laptop_receiving = Duration::ZERO;
    for _ in 0..EXCHANGE_ROUNDS_MAX {
        let mut sent = false;
        while let Some(bytes) = phone.generate_message(laptop_device) {
            sent = true;
            bytes_exchanged += bytes.len();
            let started = now();
            laptop.receive_message(phone_device, &bytes)?;
            laptop_receiving += now() - started;
        }
        while let Some(bytes) = laptop.generate_message(phone_device) {
            sent = true;
            bytes_exchanged += bytes.len();
            phone.receive_message(laptop_device, &bytes)?;
        }
        if !sent {
            return Ok((bytes_exchanged, laptop_receiving));
        }
    }
    Err(BenchError::Diverged("the sync did not settle"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history over several epochs measures every step, and the new device shows the phone's
    /// history, the remote edit included.
    #[test]
    fn a_small_history_is_measured_whole() {
        let shape = HistoryShape {
            messages: 10_200,
            ..HistoryShape::BOOTSTRAP
        };
        let measured = measure_bootstrap(shape, &mut Instant::now).expect("measured");
        assert_eq!(
            measured.epochs as u64,
            shape.messages.div_ceil(crate::limits::EPOCH_MESSAGES_MAX)
        );
        assert!(measured.epochs >= 2, "the history spans epochs");
        assert!(measured.snapshot_bytes > 0 && measured.automerge_saved_bytes > 0);
        // The snapshot is automerge's saved documents with a header per epoch.
        assert!(measured.size_ratio() < 1.1, "{measured:?}");
        assert!(measured.remote_operation_bytes > 0, "the edit travelled");
        assert!(
            measured.remote_operation_bytes < 4 * 1024,
            "one edit, not a document: {measured:?}"
        );
    }

    /// automerge's own save of a snapshot's documents is about the snapshot's size.
    #[test]
    fn the_ceiling_saves_and_loads_the_snapshots_own_documents() {
        let mut phone = Replica::new(own_device(1), 1);
        let place = HistoryPlace {
            chat: BENCH_CHAT,
            contact: contact_device(),
            after_chat_seq: 7,
        };
        let shape = HistoryShape {
            messages: 1_500,
            ..HistoryShape::BOOTSTRAP
        };
        let mut reported = Vec::new();
        build_history(&mut phone, place, shape, &mut |written| {
            reported.push(written)
        })
        .expect("built");
        assert_eq!(reported, [1_000, 1_500]);
        let view = phone.view(BENCH_CHAT);
        assert_eq!(view.messages.len(), 1_500);
        assert_eq!(
            view.messages.first().map(|message| message.chat_seq),
            Some(8)
        );
        let snapshot = phone.save_snapshot();
        let ceiling = automerge_ceiling(&snapshot, &mut Instant::now).expect("measured");
        assert_eq!(
            ceiling.documents, 2,
            "chat sequences 8..=1507 span two epochs"
        );
        assert!(ceiling.saved_bytes <= snapshot.len(), "{ceiling:?}");
        assert!(
            ceiling.saved_bytes * 11 / 10 >= snapshot.len(),
            "{ceiling:?}"
        );
        assert!(automerge_ceiling(&snapshot[..10], &mut Instant::now).is_err());
    }
}
