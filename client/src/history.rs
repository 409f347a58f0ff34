//! The device's history as relay-sync documents ([`relay_sync::Replica`]), kept in the data
//! directory, and what a person sees of it.
//!
//! Every message this device sends (once its home region gave it a chat sequence) or receives
//! is appended to the chat's documents; edits, deletions for everyone, reactions and this
//! device's read mark are applied to them, and the account's devices converge on the same
//! documents through the sync protocol (the core carries its messages as end-to-end encrypted
//! envelopes in the account's chat with itself: see `core::changes`). The SQLite store keeps
//! what is this device's own (ticks, receipts, the outbox); the documents keep what all of the
//! account's devices share, so a newly linked device shows the whole history from them.
//!
//! **Files**, beside `relay.db` (a data directory stays one flat folder, so a backup copies its
//! files): `DIR/history` holds a header (magic, a save counter, the highest row of the store's
//! `messages` table the documents hold) and the replica's snapshot; `DIR/history-peer-A-D` the
//! persisted sync state with own device `A/D`. Each is written to
//! a temporary file, synced, renamed over the old one and the directory synced, so a crash
//! leaves the old or the new file whole. A deletion compacts the chat's documents (the text
//! is in no saved byte of the new generation) and the file is written anew.
//!
//! **Several processes on one data directory** (`relay listen` while `relay edit` runs): every
//! change happens under the store's write lock, and starts by reloading the file if another
//! process saved it since (its save counter moved), so no process writes over another's
//! changes.
//!
//! **Recovery, and appends saved lazily.** Messages are committed to the store before they
//! reach the documents; on open (and after reloading another process's save), rows past the
//! header's mark are appended again (an append of a message the documents hold changes
//! nothing), so a crash between the two loses nothing. So appends alone are not saved at once
//! (a save writes every document): the documents are saved with the next change the store
//! cannot rebuild (an edit, a deletion, a reaction, a read mark, a sync message in or out),
//! after `HISTORY_APPENDS_UNSAVED_MAX` appends, and when the device closes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use relay_proto::{ChatId, ClientMessageId, DeviceAddress};
use relay_sync::{ChatView, MessageView, Received, Replica, SyncError};

use crate::error::{ClientError, Result};

/// The replica's file in the data directory.
pub const REPLICA_FILE: &str = "history";
/// How the name of each peer state's file in the data directory starts.
pub const PEER_FILE_PREFIX: &str = "history-peer-";

const MAGIC: &[u8; 8] = b"RLYHIST1";
const HEADER_BYTES: usize = MAGIC.len() + 8 + 8;

/// The sync messages a history exchanged with the account's other devices since it was opened:
/// how many, and the bytes of their plaintext (each travels as one end-to-end encrypted
/// envelope, a little larger). For measurements (`relayd bench sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncTraffic {
    /// Sync messages received (duplicates and refused ones included).
    pub received_messages: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Sync messages generated to be sent.
    pub sent_messages: u64,
    /// Their bytes.
    pub sent_bytes: u64,
}

/// The history of one device: its replica and where it is kept.
#[derive(Debug)]
pub struct History {
    dir: PathBuf,
    me: DeviceAddress,
    session_nonce: u64,
    replica: Replica,
    /// The save counter of the file this replica was loaded from or last saved to.
    saves: u64,
    /// The highest row of the store's `messages` table the documents hold.
    rows_mark: i64,
    /// Messages appended since the last save (they are in the store: see [`History::save`]).
    unsaved_appends: usize,
    /// Sync messages in and out since the history was opened.
    traffic: SyncTraffic,
}

impl History {
    /// Opens the history of device `me` in `data_dir` (an empty one if it has none yet).
    /// `session_nonce` must be fresh at every open (see [`Replica::new`]).
    pub fn open(data_dir: &Path, me: DeviceAddress, session_nonce: u64) -> Result<Self> {
        let dir = data_dir.to_path_buf();
        let mut history = History {
            dir,
            me,
            session_nonce,
            replica: Replica::new(me, session_nonce),
            saves: 0,
            rows_mark: 0,
            unsaved_appends: 0,
            traffic: SyncTraffic::default(),
        };
        history.reload()?;
        Ok(history)
    }

    /// The replica (reads).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The replica, to change it; call [`History::save`] after the change.
    pub fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    /// Applies a sync message from own device `from` (see [`Replica::receive_message`]),
    /// counted in [`History::sync_traffic`].
    pub fn receive_sync(
        &mut self,
        from: DeviceAddress,
        bytes: &[u8],
    ) -> std::result::Result<Received, SyncError> {
        self.traffic.received_messages += 1;
        self.traffic.received_bytes += bytes.len() as u64;
        self.replica.receive_message(from, bytes)
    }

    /// The next sync message for own device `peer` (see [`Replica::generate_message`]),
    /// counted in [`History::sync_traffic`].
    pub fn generate_sync(&mut self, peer: DeviceAddress) -> Option<Vec<u8>> {
        let bytes = self.replica.generate_message(peer)?;
        self.traffic.sent_messages += 1;
        self.traffic.sent_bytes += bytes.len() as u64;
        Some(bytes)
    }

    /// The sync messages exchanged since the history was opened.
    pub fn sync_traffic(&self) -> SyncTraffic {
        self.traffic
    }

    /// The highest row of the store's `messages` table the documents hold.
    pub fn rows_mark(&self) -> i64 {
        self.rows_mark
    }

    /// Raises the row mark (saved with the next [`History::save`]).
    pub fn raise_rows_mark(&mut self, row: i64) {
        self.rows_mark = self.rows_mark.max(row);
    }

    /// Counts `count` messages appended and not saved yet.
    pub fn note_appends(&mut self, count: usize) {
        self.unsaved_appends = self.unsaved_appends.saturating_add(count);
    }

    /// Messages appended since the last save.
    pub fn unsaved_appends(&self) -> usize {
        self.unsaved_appends
    }

    /// Reloads the file if another process saved it since this one loaded or saved it; returns
    /// whether it did. Call it under the store's write lock, before a change.
    pub fn refresh(&mut self) -> Result<bool> {
        let path = self.dir.join(REPLICA_FILE);
        let saves = match fs::File::open(&path) {
            Ok(mut file) => {
                let mut header = [0u8; HEADER_BYTES];
                std::io::Read::read_exact(&mut file, &mut header)
                    .map_err(|error| corrupt(&path, &error.to_string()))?;
                parse_header(&path, &header)?.0
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(ClientError::Io(error)),
        };
        if saves == self.saves {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Writes the replica and the sync state with each of `peers` to their files.
    pub fn save(&mut self, peers: &[DeviceAddress]) -> Result<()> {
        self.saves += 1;
        let snapshot = self.replica.save_snapshot();
        let mut bytes = Vec::with_capacity(HEADER_BYTES + snapshot.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.saves.to_le_bytes());
        bytes.extend_from_slice(&self.rows_mark.to_le_bytes());
        bytes.extend_from_slice(&snapshot);
        write_atomically(&self.dir, REPLICA_FILE, &bytes)?;
        self.unsaved_appends = 0;
        for &peer in peers {
            let state = self.replica.peer_state(peer);
            write_atomically(&self.dir, &peer_file(peer), &state)?;
        }
        Ok(())
    }

    /// Every chat's documents as one snapshot, for a device linked after the fact (the
    /// bootstrap uploads it encrypted as a blob; see `Device::history_snapshot`).
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.replica.save_snapshot()
    }

    /// Takes `snapshot` (another device's, from [`History::snapshot`]) as this device's
    /// history; refused when this device already holds a chat (the sync protocol merges
    /// those) and when the bytes do not decode (nothing changes then).
    pub fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<()> {
        if !self.replica.chats().is_empty() {
            return Err(ClientError::Invalid(
                "this device already holds history; it converges with the others by sync".into(),
            ));
        }
        self.replica = Replica::load_snapshot(self.me, self.session_nonce, snapshot)
            .map_err(|error| ClientError::Invalid(format!("history snapshot: {error}")))?;
        Ok(())
    }

    /// The chat as shown.
    pub fn view(&self, chat: ChatId) -> ChatView {
        self.replica.view(chat)
    }

    /// The message of `chat` sent by `sender` as `id`.
    pub fn find(
        &self,
        chat: ChatId,
        sender: DeviceAddress,
        id: ClientMessageId,
    ) -> Option<MessageView> {
        self.replica
            .view(chat)
            .messages
            .into_iter()
            .find(|message| message.sender == sender && message.client_message_id == id)
    }

    /// The message of `chat` whose id starts with `prefix` (hex digits, any case).
    pub fn find_by_prefix(&self, chat: ChatId, prefix: &str) -> Result<MessageView> {
        let prefix = id_prefix(prefix)?;
        let mut found = self
            .replica
            .view(chat)
            .messages
            .into_iter()
            .filter(|message| message.client_message_id.to_string().starts_with(&prefix));
        match (found.next(), found.next()) {
            (Some(message), None) => Ok(message),
            (None, _) => Err(ClientError::Invalid(format!(
                "no message of this chat has an id starting with {prefix} (a message not sent \
                 yet cannot be changed)"
            ))),
            (Some(_), Some(_)) => Err(ClientError::Invalid(format!(
                "more than one message has an id starting with {prefix}; give more digits"
            ))),
        }
    }

    /// Loads the file (or starts empty without one) with a new session, and the sync state
    /// with every own device that has a file.
    fn reload(&mut self) -> Result<()> {
        let path = self.dir.join(REPLICA_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.replica = Replica::new(self.me, self.session_nonce);
                self.saves = 0;
                self.rows_mark = 0;
                return Ok(());
            }
            Err(error) => return Err(ClientError::Io(error)),
        };
        let (saves, rows_mark) = parse_header(&path, &bytes)?;
        self.session_nonce = self.session_nonce.wrapping_add(1 << 32);
        let mut replica =
            Replica::load_snapshot(self.me, self.session_nonce, &bytes[HEADER_BYTES..])
                .map_err(|error| corrupt(&path, &error.to_string()))?;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(peer) = name.to_str().and_then(parse_peer_file) else {
                continue;
            };
            let state = fs::read(entry.path())?;
            replica
                .load_peer_state(peer, &state)
                .map_err(|error: SyncError| corrupt(&entry.path(), &error.to_string()))?;
        }
        self.replica = replica;
        self.saves = saves;
        self.rows_mark = rows_mark;
        self.unsaved_appends = 0;
        Ok(())
    }
}

/// The file of the sync state with own device `peer`.
fn peer_file(peer: DeviceAddress) -> String {
    format!("{PEER_FILE_PREFIX}{}-{}", peer.account.0, peer.device.0)
}

fn parse_peer_file(name: &str) -> Option<DeviceAddress> {
    let rest = name.strip_prefix(PEER_FILE_PREFIX)?;
    let (account, device) = rest.split_once('-')?;
    Some(DeviceAddress {
        account: relay_proto::AccountId(account.parse().ok()?),
        device: relay_proto::DeviceId(device.parse().ok()?),
    })
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<(u64, i64)> {
    let header = bytes
        .get(..HEADER_BYTES)
        .filter(|header| header.starts_with(MAGIC))
        .ok_or_else(|| corrupt(path, "it is not a Relay history file"))?;
    let number = |range: std::ops::Range<usize>| {
        let mut le = [0u8; 8];
        le.copy_from_slice(&header[range]);
        le
    };
    let saves = u64::from_le_bytes(number(8..16));
    let rows_mark = i64::from_le_bytes(number(16..24));
    Ok((saves, rows_mark))
}

fn corrupt(path: &Path, problem: &str) -> ClientError {
    ClientError::Corrupt(format!(
        "the history file {} is damaged ({problem}); restore the data directory from a backup",
        path.display()
    ))
}

/// Writes `bytes` as `dir/name` through a synced temporary file and a rename, then syncs
/// `dir`.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, dir.join(name))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// `prefix` as a message id prefix people type (`relay edit`, `info`, ...): lowercased, at
/// least [`crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN`] and at most 32 hex digits.
pub(crate) fn id_prefix(prefix: &str) -> Result<String> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN
        || prefix.len() > 32
        || !prefix.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(ClientError::Invalid(format!(
            "name a message by its id as `relay history` shows it (at least {} hex digits)",
            crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN
        )));
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};
    use relay_sync::NewMessage;

    use super::*;

    fn device(account: u64, device: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(device),
        }
    }

    #[test]
    fn a_history_survives_a_reopen_and_a_damaged_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = device(1, 1);
        let chat = ChatId::direct(AccountId(1), AccountId(2));
        let mut history = History::open(dir.path(), me, 1).expect("open");
        history
            .replica_mut()
            .append(
                chat,
                &NewMessage {
                    chat_seq: 1,
                    sender: device(2, 1),
                    client_message_id: ClientMessageId([0xab; 16]),
                    server_time_ms: 5,
                    sent_time_ms: 4,
                    text: "kept",
                    attachment: None,
                },
            )
            .expect("append");
        history.raise_rows_mark(7);
        history.save(&[device(1, 2)]).expect("save");

        assert_eq!(history.unsaved_appends(), 0, "a save counts from zero");
        let mut again = History::open(dir.path(), me, 2).expect("reopen");
        assert_eq!(again.rows_mark(), 7);
        let found = again
            .find_by_prefix(chat, "ABABAB")
            .expect("found by its id's prefix");
        assert_eq!(found.text.as_deref(), Some("kept"));
        assert!(again.find_by_prefix(chat, "abab").is_err(), "too short");
        assert!(!again.refresh().expect("refresh"), "nobody else saved");
        history.save(&[]).expect("another process saves");
        assert!(again.refresh().expect("refresh"), "reloaded");

        let path = dir.path().join(REPLICA_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes.truncate(HEADER_BYTES + 3);
        fs::write(&path, &bytes).expect("damage");
        let error = History::open(dir.path(), me, 3).expect_err("damaged");
        assert!(
            matches!(&error, ClientError::Corrupt(text) if text.contains("history file")),
            "{error}"
        );
        assert_eq!(fs::read(&path).expect("read"), bytes, "left as it was");
    }

    #[test]
    fn a_new_device_takes_another_devices_snapshot_only_while_it_holds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        for device in ["phone", "laptop"] {
            fs::create_dir(dir.path().join(device)).expect("a data directory");
        }
        let chat = ChatId::direct(AccountId(1), AccountId(2));
        let append = |history: &mut History, chat_seq: u64, text: &str| {
            history
                .replica_mut()
                .append(
                    chat,
                    &NewMessage {
                        chat_seq,
                        sender: device(2, 1),
                        client_message_id: ClientMessageId([chat_seq as u8; 16]),
                        server_time_ms: chat_seq,
                        sent_time_ms: chat_seq,
                        text,
                        attachment: None,
                    },
                )
                .expect("append");
        };
        let mut phone = History::open(&dir.path().join("phone"), device(1, 1), 1).expect("open");
        append(&mut phone, 1, "one");
        append(&mut phone, 2, "two");
        let snapshot = phone.snapshot();

        let mut laptop = History::open(&dir.path().join("laptop"), device(1, 2), 2).expect("open");
        assert!(laptop.load_snapshot(b"not a snapshot").is_err());
        assert!(
            laptop.replica().chats().is_empty(),
            "nothing taken from bad bytes"
        );
        laptop.load_snapshot(&snapshot).expect("load");
        assert_eq!(laptop.view(chat), phone.view(chat));
        laptop.save(&[]).expect("save");
        let reopened = History::open(&dir.path().join("laptop"), device(1, 2), 3).expect("open");
        assert_eq!(reopened.view(chat), phone.view(chat));

        // A device with history converges by sync instead.
        let error = laptop.load_snapshot(&snapshot).expect_err("holds history");
        assert!(error.to_string().contains("by sync"), "{error}");
    }

    #[test]
    fn sync_messages_are_counted_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        for device in ["phone", "laptop"] {
            fs::create_dir(dir.path().join(device)).expect("a data directory");
        }
        let chat = ChatId::direct(AccountId(1), AccountId(2));
        let (phone_address, laptop_address) = (device(1, 1), device(1, 2));
        let mut phone = History::open(&dir.path().join("phone"), phone_address, 1).expect("open");
        let mut laptop =
            History::open(&dir.path().join("laptop"), laptop_address, 2).expect("open");
        phone
            .replica_mut()
            .append(
                chat,
                &NewMessage {
                    chat_seq: 1,
                    sender: device(2, 1),
                    client_message_id: ClientMessageId([1; 16]),
                    server_time_ms: 1,
                    sent_time_ms: 1,
                    text: "counted",
                    attachment: None,
                },
            )
            .expect("append");
        assert_eq!(phone.sync_traffic(), SyncTraffic::default());
        let (mut phone_sent, mut laptop_sent) = (SyncTraffic::default(), SyncTraffic::default());
        for _ in 0..16 {
            let mut quiet = true;
            while let Some(bytes) = phone.generate_sync(laptop_address) {
                quiet = false;
                phone_sent.sent_messages += 1;
                phone_sent.sent_bytes += bytes.len() as u64;
                laptop.receive_sync(phone_address, &bytes).expect("applied");
            }
            while let Some(bytes) = laptop.generate_sync(phone_address) {
                quiet = false;
                laptop_sent.sent_messages += 1;
                laptop_sent.sent_bytes += bytes.len() as u64;
                phone.receive_sync(laptop_address, &bytes).expect("applied");
            }
            if quiet {
                break;
            }
        }
        assert_eq!(laptop.view(chat), phone.view(chat), "in step");
        assert!(phone_sent.sent_messages > 0 && laptop_sent.sent_messages > 0);
        let counted = |sent: SyncTraffic, received: SyncTraffic| SyncTraffic {
            received_messages: received.sent_messages,
            received_bytes: received.sent_bytes,
            ..sent
        };
        assert_eq!(phone.sync_traffic(), counted(phone_sent, laptop_sent));
        assert_eq!(laptop.sync_traffic(), counted(laptop_sent, phone_sent));
        // Bytes refused are counted as received, and change nothing.
        assert!(laptop.receive_sync(phone_address, b"noise").is_err());
        assert_eq!(
            laptop.sync_traffic().received_messages,
            phone_sent.sent_messages + 1
        );
    }
}
