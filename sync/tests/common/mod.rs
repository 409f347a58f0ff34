//! Helpers shared by the sync tests: devices, messages, and exchanges run to quiescence.

#![allow(dead_code)]

use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId};
use relay_sync::inspect::SyncTranscript;
use relay_sync::{NewMessage, Replica};

/// The user whose devices sync.
pub const OWN_ACCOUNT: AccountId = AccountId(1);
/// The person the user chats with.
pub const OTHER_ACCOUNT: AccountId = AccountId(2);
/// The chat of the tests.
pub const CHAT: ChatId = ChatId([9; 16]);
/// Most rounds an exchange may take before the test calls it stuck.
pub const EXCHANGE_ROUNDS_MAX: usize = 400;

/// The user's device number `n`.
pub fn own(n: u32) -> DeviceAddress {
    DeviceAddress {
        account: OWN_ACCOUNT,
        device: DeviceId(n),
    }
}

/// The other person's device number `n`.
pub fn other(n: u32) -> DeviceAddress {
    DeviceAddress {
        account: OTHER_ACCOUNT,
        device: DeviceId(n),
    }
}

/// The text of message `chat_seq`: unique, and no text contains another.
pub fn text_of(chat_seq: u64) -> String {
    format!("<text of {chat_seq}>")
}

/// The message the relay delivers under `chat_seq` (from `sender`).
pub fn message<'a>(chat_seq: u64, sender: DeviceAddress, text: &'a str) -> NewMessage<'a> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&chat_seq.to_be_bytes());
    NewMessage {
        chat_seq,
        sender,
        client_message_id: ClientMessageId(id),
        server_time_ms: 1_000_000 + chat_seq,
        sent_time_ms: 999_000 + chat_seq,
        text,
        attachment: None,
    }
}

/// What an exchange did.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Sync messages delivered.
    pub messages: usize,
    /// Their bytes.
    pub bytes: usize,
    /// The largest of them, in bytes.
    pub largest_bytes: usize,
    /// Rounds until nothing was left to send.
    pub rounds: usize,
}

/// Runs the sync between the replicas (each pair, both ways) until no one has anything to
/// send; every message produced is recorded in `transcripts[(from, to)]` when given.
pub fn exchange_all(
    replicas: &mut [Replica],
    mut transcripts: Option<&mut Vec<((usize, usize), SyncTranscript)>>,
) -> Exchange {
    let mut exchange = Exchange::default();
    for round in 1..=EXCHANGE_ROUNDS_MAX {
        let mut sent = false;
        for from in 0..replicas.len() {
            for to in 0..replicas.len() {
                if from == to {
                    continue;
                }
                let to_device = replicas[to].device();
                let from_device = replicas[from].device();
                while let Some(bytes) = replicas[from].generate_message(to_device) {
                    sent = true;
                    exchange.messages += 1;
                    exchange.bytes += bytes.len();
                    exchange.largest_bytes = exchange.largest_bytes.max(bytes.len());
                    if let Some(transcripts) = transcripts.as_deref_mut() {
                        let index =
                            match transcripts.iter().position(|(pair, _)| *pair == (from, to)) {
                                Some(index) => index,
                                None => {
                                    transcripts.push(((from, to), SyncTranscript::new()));
                                    transcripts.len() - 1
                                }
                            };
                        transcripts[index]
                            .1
                            .record(&bytes)
                            .expect("our own messages decode");
                    }
                    replicas[to]
                        .receive_message(from_device, &bytes)
                        .expect("a message from an honest peer applies");
                }
            }
        }
        if !sent {
            exchange.rounds = round;
            return exchange;
        }
    }
    panic!("the replicas still had messages for each other after {EXCHANGE_ROUNDS_MAX} rounds");
}
