//! Receiving, sans IO: the queue cursor, acks, a gapless queue, sender FIFO and duplicates
//! ([`Inbox`]).

use super::*;

/// One queue entry as the device took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// A message, the first time it arrives.
    Message {
        /// The sending device.
        sender: DeviceAddress,
        /// The chat.
        chat: ChatId,
        /// Its number in the sender's chat.
        sender_seq: u64,
        /// Its opaque bytes (a bench [`Payload`] when a bench device sent it): this device's
        /// ciphertext, or a group message's group ciphertext.
        ciphertext: Vec<u8>,
    },
    /// A message that had arrived before (a redelivery).
    Duplicate {
        /// The sending device.
        sender: DeviceAddress,
        /// Its number in the sender's chat.
        sender_seq: u64,
        /// Its opaque bytes, as in [`Arrival::Message`].
        ciphertext: Vec<u8>,
    },
    /// Receipts for messages this device sent: how many the entry held (one, or a region's
    /// batch of them).
    Receipts(u64),
}

/// A device queue that broke a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The queue skipped entries.
    #[error("queue sequence jumped from {cursor} to {got}")]
    QueueGap {
        /// The highest entry processed.
        cursor: u64,
        /// The entry that came next.
        got: u64,
    },
    /// One sender's messages of a chat arrived out of order (invariant I3).
    #[error("{sender}'s message {got} arrived after {last} in chat {chat}")]
    SenderGap {
        /// The sender.
        sender: DeviceAddress,
        /// The chat.
        chat: ChatId,
        /// The last of its messages delivered here.
        last: u64,
        /// The one that came.
        got: u64,
    },
    /// An entry does not decode.
    #[error("a queue entry is malformed: {0}")]
    Malformed(String),
}

/// One device's queue as it reads it: the cursor (the highest entry processed), the entries to
/// acknowledge (in a request of their own), and the last `sender_seq` of each sender's chat.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    cursor: u64,
    acks: Vec<u64>,
    last_sender_seq: HashMap<(DeviceAddress, ChatId), u64>,
}

impl Inbox {
    /// A queue read from `cursor` on.
    pub fn new(cursor: u64) -> Self {
        Self {
            cursor,
            ..Self::default()
        }
    }

    /// The highest entry processed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether processed entries wait to be acknowledged.
    pub fn has_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// The next fetch: read after the cursor. It acknowledges nothing: the acks go in their
    /// own request ([`Inbox::take_acks`]), so a page is read without waiting for the commit of
    /// the previous page's acks.
    pub fn next_fetch(&self) -> FetchAndAck {
        FetchAndAck {
            ack: None,
            fetch: Some(FetchQueue {
                after_queue_seq: self.cursor,
                limit: QUEUE_FETCH_ENTRIES_MAX,
            }),
        }
    }

    /// The entries processed and not acknowledged yet (the oldest [`ACKS_PER_REQUEST_MAX`]),
    /// as a request that only acknowledges; `None` when nothing is owed. Give them back with
    /// [`Inbox::restore_acks`] if it fails.
    pub fn take_acks(&mut self) -> Option<FetchAndAck> {
        if self.acks.is_empty() {
            return None;
        }
        let count = self.acks.len().min(ACKS_PER_REQUEST_MAX);
        Some(FetchAndAck {
            ack: Some(AckQueue {
                queue_seqs: self.acks.drain(..count).collect(),
            }),
            fetch: None,
        })
    }

    /// Acks of a failed request, to send with the next (acknowledging twice is harmless).
    pub fn restore_acks(&mut self, fetch: FetchAndAck) {
        if let Some(ack) = fetch.ack {
            self.acks.extend(ack.queue_seqs);
        }
    }

    /// Processes a fetched page: entries must continue the queue gaplessly, each sender's
    /// messages of a chat must continue its order (a repeat is a duplicate).
    pub fn handle_batch(&mut self, batch: &QueueBatch) -> Result<Vec<Arrival>, InboxError> {
        let mut arrivals = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            if entry.queue_seq != self.cursor + 1 {
                return Err(InboxError::QueueGap {
                    cursor: self.cursor,
                    got: entry.queue_seq,
                });
            }
            match &entry.item {
                Some(queue_entry::Item::Message(message)) => {
                    arrivals.push(self.handle_message(message)?);
                }
                // The messages of one chat a region committed together.
                Some(queue_entry::Item::Messages(batch)) => {
                    for message in &batch.messages {
                        arrivals.push(self.handle_message(message)?);
                    }
                }
                Some(queue_entry::Item::Receipt(_)) => arrivals.push(Arrival::Receipts(1)),
                Some(queue_entry::Item::Receipts(batch)) => {
                    arrivals.push(Arrival::Receipts(batch.receipts.len() as u64));
                }
                None => return Err(InboxError::Malformed("an entry with no item".into())),
            }
            self.cursor = entry.queue_seq;
            self.acks.push(entry.queue_seq);
        }
        Ok(arrivals)
    }

    /// One queued message: the next of its sender's chat, a repeat, or out of order.
    fn handle_message(
        &mut self,
        message: &relay_proto::wire::QueuedMessage,
    ) -> Result<Arrival, InboxError> {
        let sender = message
            .sender
            .parse()
            .map_err(|error| InboxError::Malformed(error.message))?;
        let chat = ChatId::from_bytes(&message.chat)
            .map_err(|error| InboxError::Malformed(error.message))?;
        // A group message carries its bytes once for every member device.
        let ciphertext = if message.group == 0 {
            &message.ciphertext
        } else {
            &message.group_ciphertext
        };
        let last = self.last_sender_seq.entry((sender, chat)).or_insert(0);
        if message.sender_seq <= *last {
            Ok(Arrival::Duplicate {
                sender,
                sender_seq: message.sender_seq,
                ciphertext: ciphertext.clone(),
            })
        } else if message.sender_seq == *last + 1 {
            *last = message.sender_seq;
            Ok(Arrival::Message {
                sender,
                chat,
                sender_seq: message.sender_seq,
                ciphertext: ciphertext.clone(),
            })
        } else {
            Err(InboxError::SenderGap {
                sender,
                chat,
                last: *last,
                got: message.sender_seq,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::wire::{QueueEntry, QueuedMessage, QueuedReceipt};

    use super::super::test_support::device;
    use super::*;

    fn message_entry(queue_seq: u64, sender: DeviceAddress, sender_seq: u64) -> QueueEntry {
        QueueEntry {
            queue_seq,
            item: Some(queue_entry::Item::Message(QueuedMessage {
                chat: vec![7; 16],
                chat_seq: sender_seq,
                sender: sender.into(),
                client_message_id: vec![1; 16],
                sender_seq,
                server_time_ms: 0,
                message_type: 1,
                ciphertext: vec![9; 4],
                ..Default::default()
            })),
        }
    }

    fn batch(entries: Vec<QueueEntry>) -> QueueBatch {
        QueueBatch {
            entries,
            ..QueueBatch::default()
        }
    }

    #[test]
    fn an_entry_of_messages_arrives_message_by_message_under_one_ack() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        let messages = (1..=3)
            .map(
                |sender_seq| match message_entry(1, alice, sender_seq).item {
                    Some(queue_entry::Item::Message(message)) => message,
                    other => unreachable!("a message entry, not {other:?}"),
                },
            )
            .collect();
        let entry = QueueEntry {
            queue_seq: 1,
            item: Some(queue_entry::Item::Messages(
                relay_proto::wire::QueuedMessages { messages },
            )),
        };
        let arrivals = inbox.handle_batch(&batch(vec![entry])).expect("in order");
        let numbers: Vec<u64> = arrivals
            .iter()
            .map(|arrival| match arrival {
                Arrival::Message { sender_seq, .. } => *sender_seq,
                other => panic!("a message, not {other:?}"),
            })
            .collect();
        assert_eq!(numbers, vec![1, 2, 3]);
        assert_eq!(inbox.cursor(), 1);
        let acks = inbox.take_acks().and_then(|acks| acks.ack).expect("acks");
        assert_eq!(acks.queue_seqs, vec![1], "one ack for the entry");
    }

    #[test]
    fn the_inbox_acknowledges_what_it_processed_in_its_own_request() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        let first = inbox.next_fetch();
        assert_eq!(first.ack, None, "a fetch acknowledges nothing");
        assert_eq!(first.fetch.map(|fetch| fetch.after_queue_seq), Some(0));
        assert_eq!(inbox.take_acks(), None, "nothing is owed yet");
        let receipt = QueueEntry {
            queue_seq: 3,
            item: Some(queue_entry::Item::Receipt(QueuedReceipt::default())),
        };
        let arrivals = inbox
            .handle_batch(&batch(vec![
                message_entry(1, alice, 1),
                message_entry(2, alice, 2),
                receipt,
            ]))
            .expect("gapless");
        assert_eq!(arrivals.len(), 3);
        assert!(matches!(
            arrivals[1],
            Arrival::Message { sender_seq: 2, .. }
        ));
        assert_eq!(arrivals[2], Arrival::Receipts(1));
        assert_eq!(inbox.cursor(), 3);
        let second = inbox.next_fetch();
        assert_eq!(second.ack, None);
        assert_eq!(
            second.fetch.as_ref().map(|fetch| fetch.after_queue_seq),
            Some(3),
            "the next page is read before the acks are answered"
        );
        let acks = inbox.take_acks().expect("acks owed");
        assert_eq!(
            acks.ack.clone().map(|ack| ack.queue_seqs),
            Some(vec![1, 2, 3])
        );
        assert_eq!(acks.fetch, None, "an ack reads nothing");
        assert!(!inbox.has_acks());
        inbox.restore_acks(acks);
        assert!(inbox.has_acks(), "a failed ack gives its acks back");
    }

    #[test]
    fn an_ack_request_holds_at_most_its_limit_the_oldest_first() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        let owed = ACKS_PER_REQUEST_MAX as u64 + 2;
        let entries = (1..=owed)
            .map(|seq| message_entry(seq, alice, seq))
            .collect();
        inbox.handle_batch(&batch(entries)).expect("gapless");
        let first = inbox.take_acks().and_then(|acks| acks.ack).expect("acks");
        assert_eq!(first.queue_seqs.len(), ACKS_PER_REQUEST_MAX);
        assert_eq!(first.queue_seqs.first(), Some(&1));
        let rest = inbox
            .take_acks()
            .and_then(|acks| acks.ack)
            .expect("the rest");
        assert_eq!(rest.queue_seqs, vec![owed - 1, owed]);
        assert_eq!(inbox.take_acks(), None);
    }

    #[test]
    fn the_inbox_reads_a_group_message_from_its_group_ciphertext() {
        let mut entry = message_entry(1, device(1), 1);
        if let Some(queue_entry::Item::Message(message)) = &mut entry.item {
            message.group = 7;
            message.ciphertext.clear();
            message.group_ciphertext = vec![5; 8];
        }
        let arrivals = Inbox::new(0)
            .handle_batch(&batch(vec![entry]))
            .expect("gapless");
        assert!(
            matches!(&arrivals[0], Arrival::Message { ciphertext, .. } if *ciphertext == [5; 8]),
            "{arrivals:?}"
        );
    }

    #[test]
    fn the_inbox_finds_duplicates_gaps_and_reordering() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        inbox
            .handle_batch(&batch(vec![message_entry(1, alice, 1)]))
            .expect("first");
        let arrivals = inbox
            .handle_batch(&batch(vec![message_entry(2, alice, 1)]))
            .expect("a redelivery");
        assert!(matches!(
            arrivals[0],
            Arrival::Duplicate { sender_seq: 1, .. }
        ));
        assert_eq!(
            inbox.handle_batch(&batch(vec![message_entry(4, alice, 2)])),
            Err(InboxError::QueueGap { cursor: 2, got: 4 })
        );
        assert!(matches!(
            inbox.handle_batch(&batch(vec![message_entry(3, alice, 3)])),
            Err(InboxError::SenderGap {
                last: 1,
                got: 3,
                ..
            })
        ));
    }
}
