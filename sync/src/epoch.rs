//! One generation of one epoch: an automerge document, the operations on it, its compaction into
//! the next generation, and the re-application of another generation's state.
//!
//! **Epochs.** A chat's history is split by chat sequence: epoch `k` holds sequences
//! `k * EPOCH_MESSAGES_MAX + 1 ..= (k + 1) * EPOCH_MESSAGES_MAX`, so every device puts every
//! message (and every read watermark) in the same epoch without asking anyone, and a remote
//! operation touches one document of at most `EPOCH_MESSAGES_MAX` messages.
//!
//! **Generations.** Automerge keeps every value ever written, so a deletion for everyone
//! rebuilds the epoch's document from its current state (without the deleted text) and drops
//! its history: the new document is the next *generation*. A generation is named by
//! [`GenerationId`]: its number and the hash of its *genesis*, the one change that writes the
//! whole state. The genesis is deterministic (a fixed actor derived from chat, epoch and
//! generation, time 0, keys in order), so devices that compact the same state build the same
//! document; devices that compacted different states hold different generations of the same
//! number, ordered by genesis hash. Generation 0 starts from an empty state, so every device
//! builds it alone.
//!
//! **What supersedes what.** The higher [`GenerationId`] wins. A device never merges the
//! history of a generation lower than the one it holds (that history may hold deleted text):
//! it refuses those changes. When it learns a higher generation it fetches that document,
//! checks its genesis, and re-applies its own old generation's state onto it as new operations
//! ([`Epoch::join`]): edits, reactions and watermarks that win by value, messages the new
//! generation lacks, and tombstones (which then compact again). Concurrent edits made on the
//! old generation are so carried over as operations, never merged as history, and a deleted
//! text never comes back: the tombstone dominates any text. Compaction stops once no new
//! deletion arrives: it is triggered only by a tombstone written after the genesis, or by a
//! text stored beside a tombstone.

use automerge::{ActorId, AutoCommit, AutomergeError, ChangeHash, PatchAction, PatchLog, ReadDoc};
use relay_proto::{ChatId, DeviceAddress};

use crate::error::SyncError;
use crate::hlc::Hlc;
use crate::limits::EPOCH_MESSAGES_MAX;
use crate::schema::{
    self, EpochState, Field, Key, MessageState, Stamped, genesis_actor, holds_deleted_text,
    parse_key,
};

/// Which generation of an epoch a document is: higher wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenerationId {
    /// How many compactions the epoch went through.
    pub generation: u64,
    /// The hash of the generation's first change (its genesis).
    pub genesis: [u8; 32],
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The document changed.
    Applied,
    /// Nothing to do: the document already holds this, or something that wins over it.
    Superseded,
}

/// The epoch holding chat sequence `chat_seq` (from 1).
pub fn epoch_of(chat_seq: u64) -> Result<u64, SyncError> {
    match chat_seq {
        0 => Err(SyncError::ZeroSequence),
        seq => Ok((seq - 1) / EPOCH_MESSAGES_MAX),
    }
}

/// Whether `chat_seq` belongs to epoch `epoch`.
pub(crate) fn in_epoch(chat_seq: u64, epoch: u64) -> bool {
    epoch_of(chat_seq).is_ok_and(|holder| holder == epoch)
}

/// One generation of one epoch of one chat.
#[derive(Debug, Clone)]
pub(crate) struct Epoch {
    chat: ChatId,
    number: u64,
    id: GenerationId,
    genesis_actor: ActorId,
    doc: AutoCommit,
}

impl Epoch {
    /// Builds generation `generation` from `state` (its genesis), then writes as `actor`.
    pub fn build(
        chat: ChatId,
        number: u64,
        generation: u64,
        state: &EpochState,
        actor: &ActorId,
    ) -> Result<Epoch, SyncError> {
        let document = |source| SyncError::document(chat, number, source);
        let genesis_actor = genesis_actor(chat, number, generation);
        let mut doc = AutoCommit::new().with_actor(genesis_actor.clone());
        schema::put_meta(&mut doc, chat, number, generation).map_err(document)?;
        for (chat_seq, message) in &state.messages {
            schema::put_message(&mut doc, *chat_seq, message).map_err(document)?;
        }
        for (device, chat_seq) in &state.read_marks {
            schema::put_read_mark(&mut doc, *device, *chat_seq).map_err(document)?;
        }
        // The meta keys are always written, so the genesis is never empty.
        let genesis = doc.commit().ok_or(SyncError::InvalidGeneration {
            chat,
            epoch: number,
            generation,
            reason: "the genesis is empty",
        })?;
        doc.set_actor(actor.clone());
        Ok(Epoch {
            chat,
            number,
            id: GenerationId {
                generation,
                genesis: genesis.0,
            },
            genesis_actor,
            doc,
        })
    }

    /// Generation 0: the empty epoch every device builds alike.
    pub fn first(chat: ChatId, number: u64, actor: &ActorId) -> Result<Epoch, SyncError> {
        Epoch::build(chat, number, 0, &EpochState::default(), actor)
    }

    /// A document of generation `id` still to be received from a peer: empty until its
    /// genesis arrives ([`Epoch::has_genesis`]), then checked by [`Epoch::check_genesis`].
    pub fn receiving(chat: ChatId, number: u64, id: GenerationId, actor: &ActorId) -> Epoch {
        Epoch {
            chat,
            number,
            id,
            genesis_actor: genesis_actor(chat, number, id.generation),
            doc: AutoCommit::new().with_actor(actor.clone()),
        }
    }

    /// A saved generation (from a snapshot), checked.
    pub fn load(
        chat: ChatId,
        number: u64,
        id: GenerationId,
        bytes: &[u8],
        actor: &ActorId,
    ) -> Result<Epoch, SyncError> {
        let doc = AutoCommit::load(bytes)
            .map_err(|source| SyncError::document(chat, number, source))?
            .with_actor(actor.clone());
        let mut epoch = Epoch {
            chat,
            number,
            id,
            genesis_actor: genesis_actor(chat, number, id.generation),
            doc,
        };
        epoch.check_genesis()?;
        Ok(epoch)
    }

    /// The generation.
    pub fn id(&self) -> GenerationId {
        self.id
    }

    /// The automerge document (for the sync protocol).
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// The current heads of the document.
    pub fn heads(&mut self) -> Vec<[u8; 32]> {
        self.doc
            .get_heads()
            .into_iter()
            .map(|hash| hash.0)
            .collect()
    }

    /// Whether the generation's genesis change has arrived.
    pub fn has_genesis(&mut self) -> bool {
        self.doc
            .get_change_by_hash(&ChangeHash(self.id.genesis))
            .is_some()
    }

    /// Checks that the genesis named by the generation id is here and is this generation's:
    /// made by its actor, first of its actor, with no dependencies.
    pub fn check_genesis(&mut self) -> Result<(), SyncError> {
        let invalid = |reason| SyncError::InvalidGeneration {
            chat: self.chat,
            epoch: self.number,
            generation: self.id.generation,
            reason,
        };
        let Some(genesis) = self.doc.get_change_by_hash(&ChangeHash(self.id.genesis)) else {
            return Err(invalid("its genesis change is missing"));
        };
        if genesis.actor_id() != &self.genesis_actor {
            return Err(invalid("its first change was made by another actor"));
        }
        if !genesis.deps().is_empty() || genesis.seq() != 1 {
            return Err(invalid("its first change is not a genesis"));
        }
        Ok(())
    }

    /// The logical state (messages of this epoch only).
    pub fn state(&self) -> EpochState {
        let mut state = schema::read_state(&self.doc);
        state
            .messages
            .retain(|chat_seq, _| in_epoch(*chat_seq, self.number));
        state
            .read_marks
            .retain(|_, chat_seq| in_epoch(*chat_seq, self.number));
        state
    }

    /// One message.
    pub fn message(&self, chat_seq: u64) -> Option<MessageState> {
        schema::read_message(&self.doc, chat_seq)
    }

    fn document_error(&self, source: AutomergeError) -> SyncError {
        SyncError::document(self.chat, self.number, source)
    }

    fn commit(&mut self) {
        self.doc.commit();
    }

    fn existing(&self, chat_seq: u64) -> Result<MessageState, SyncError> {
        self.message(chat_seq).ok_or(SyncError::UnknownMessage {
            chat: self.chat,
            chat_seq,
        })
    }

    fn sent_by_account(
        &self,
        chat_seq: u64,
        message: &MessageState,
        by: DeviceAddress,
    ) -> Result<(), SyncError> {
        if message.sender.account == by.account {
            Ok(())
        } else {
            Err(SyncError::NotTheSender {
                chat: self.chat,
                chat_seq,
                by,
                sender_account: message.sender.account,
            })
        }
    }

    /// Stores a message; the same message again is [`Outcome::Superseded`].
    pub fn append(&mut self, chat_seq: u64, message: &MessageState) -> Result<Outcome, SyncError> {
        debug_assert!(in_epoch(chat_seq, self.number));
        if let Some(existing) = self.message(chat_seq) {
            return if existing.same_fixed_fields(message) {
                Ok(Outcome::Superseded)
            } else {
                Err(SyncError::SequenceTaken {
                    chat: self.chat,
                    chat_seq,
                })
            };
        }
        schema::put_message(&mut self.doc, chat_seq, message)
            .map_err(|e| self.document_error(e))?;
        self.commit();
        Ok(Outcome::Applied)
    }

    /// Replaces a message's text, if `text.at` wins over the current text.
    pub fn edit(&mut self, chat_seq: u64, text: &Stamped) -> Result<Outcome, SyncError> {
        let message = self.existing(chat_seq)?;
        self.sent_by_account(chat_seq, &message, text.at.device)?;
        if message.deleted.is_some()
            || message
                .text
                .as_ref()
                .is_some_and(|current| current.at >= text.at)
        {
            return Ok(Outcome::Superseded);
        }
        schema::put_text(&mut self.doc, chat_seq, text).map_err(|e| self.document_error(e))?;
        self.commit();
        Ok(Outcome::Applied)
    }

    /// Deletes a message's text for everyone, keeping a tombstone. The earliest deletion is the
    /// one kept. An applied deletion leaves the text in the document's history: compact.
    pub fn delete(&mut self, chat_seq: u64, at: Hlc) -> Result<Outcome, SyncError> {
        let message = self.existing(chat_seq)?;
        self.sent_by_account(chat_seq, &message, at.device)?;
        if message.deleted.is_some_and(|current| current <= at) {
            return Ok(Outcome::Superseded);
        }
        schema::put_tombstone(&mut self.doc, chat_seq, at).map_err(|e| self.document_error(e))?;
        self.commit();
        Ok(Outcome::Applied)
    }

    /// Sets the reaction of `reaction.at.device` (an empty value removes it), if it wins.
    pub fn react(&mut self, chat_seq: u64, reaction: &Stamped) -> Result<Outcome, SyncError> {
        let message = self.existing(chat_seq)?;
        if message
            .reactions
            .get(&reaction.at.device)
            .is_some_and(|current| current.at >= reaction.at)
        {
            return Ok(Outcome::Superseded);
        }
        schema::put_reaction(&mut self.doc, chat_seq, reaction)
            .map_err(|e| self.document_error(e))?;
        self.commit();
        Ok(Outcome::Applied)
    }

    /// Moves `reader`'s watermark up to `chat_seq` (never down).
    pub fn mark_read(
        &mut self,
        reader: DeviceAddress,
        chat_seq: u64,
    ) -> Result<Outcome, SyncError> {
        debug_assert!(in_epoch(chat_seq, self.number));
        if schema::read_mark(&self.doc, reader).is_some_and(|current| current >= chat_seq) {
            return Ok(Outcome::Superseded);
        }
        schema::put_read_mark(&mut self.doc, reader, chat_seq)
            .map_err(|e| self.document_error(e))?;
        self.commit();
        Ok(Outcome::Applied)
    }

    /// Whether message `chat_seq`'s deleted text may still be in this document.
    pub fn holds_deleted_text(&self, chat_seq: u64) -> bool {
        holds_deleted_text(&self.doc, chat_seq, &self.genesis_actor)
    }

    /// Whether any deleted text may still be in this document (reads every message).
    pub fn holds_any_deleted_text(&self) -> bool {
        self.state()
            .messages
            .iter()
            .filter(|(_, message)| message.deleted.is_some())
            .any(|(chat_seq, _)| self.holds_deleted_text(*chat_seq))
    }

    /// The next generation: this state, without history.
    pub fn compacted(&self, actor: &ActorId) -> Result<Epoch, SyncError> {
        Epoch::build(
            self.chat,
            self.number,
            self.id.generation + 1,
            &self.state(),
            actor,
        )
    }

    /// Re-applies `other` (another generation's state) as operations: everything of it that
    /// wins by value. Returns whether the document changed.
    pub fn join(&mut self, other: &EpochState) -> Result<bool, SyncError> {
        let current = self.state();
        let mut changed = false;
        let doc = &mut self.doc;
        let result = (|| -> Result<(), AutomergeError> {
            for (chat_seq, theirs) in &other.messages {
                let Some(ours) = current.messages.get(chat_seq) else {
                    schema::put_message(doc, *chat_seq, theirs)?;
                    changed = true;
                    continue;
                };
                match (theirs.deleted, ours.deleted) {
                    (Some(their_deletion), ours_deleted)
                        if ours_deleted.is_none_or(|ours| their_deletion < ours) =>
                    {
                        schema::put_tombstone(doc, *chat_seq, their_deletion)?;
                        changed = true;
                    }
                    (None, None) => {
                        if let Some(text) = &theirs.text
                            && ours
                                .text
                                .as_ref()
                                .is_none_or(|current| text.at > current.at)
                        {
                            schema::put_text(doc, *chat_seq, text)?;
                            changed = true;
                        }
                    }
                    _ => {}
                }
                for (device, reaction) in &theirs.reactions {
                    if ours
                        .reactions
                        .get(device)
                        .is_none_or(|current| reaction.at > current.at)
                    {
                        schema::put_reaction(doc, *chat_seq, reaction)?;
                        changed = true;
                    }
                }
            }
            for (device, chat_seq) in &other.read_marks {
                if current
                    .read_marks
                    .get(device)
                    .is_none_or(|current| chat_seq > current)
                {
                    schema::put_read_mark(doc, *device, *chat_seq)?;
                    changed = true;
                }
            }
            Ok(())
        })();
        result.map_err(|e| self.document_error(e))?;
        if changed {
            self.commit();
        }
        Ok(changed)
    }

    /// The document's saved bytes (automerge's own format).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }
}

/// What a batch of patches says about an epoch: the chat sequences whose text or tombstone
/// changed, and the highest clock reading written.
pub(crate) fn scan_patches(patches: &[automerge::Patch]) -> (Vec<u64>, Option<Hlc>) {
    let mut touched = Vec::new();
    let mut max_hlc = None;
    for patch in patches {
        let (key, value) = match &patch.action {
            PatchAction::PutMap { key, value, .. } => (key, Some(&value.0)),
            PatchAction::DeleteMap { key } => (key, None),
            PatchAction::Conflict {
                prop: automerge::Prop::Map(key),
            } => (key, None),
            _ => continue,
        };
        if let Key::Message { chat_seq, field } = parse_key(key) {
            if matches!(field, Field::Text | Field::Deleted) {
                touched.push(chat_seq);
            }
            if matches!(field, Field::Text | Field::Deleted | Field::Reaction(_))
                && let Some(automerge::ScalarValue::Bytes(bytes)) =
                    value.and_then(|value| value.as_scalar())
                && let Some((at, _)) = Hlc::decode_prefix(bytes)
            {
                max_hlc = max_hlc.max(Some(at));
            }
        }
    }
    touched.sort_unstable();
    touched.dedup();
    (touched, max_hlc)
}

/// An active patch log, for receiving changes and seeing what they touched.
pub(crate) fn patch_log() -> PatchLog {
    PatchLog::active()
}
