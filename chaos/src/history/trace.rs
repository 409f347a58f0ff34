//! The trace a run records and the chat views at its end, in simulation terms (no random bytes:
//! two runs of one seed compare line by line).

use std::fmt;

use crate::faults::FaultKind;

/// A message of the workload: its sender (client number) and the sender's count, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageRef {
    /// The sending client.
    pub sender: u32,
    /// The sender's count of its messages, from 1.
    pub number: u32,
}

impl MessageRef {
    /// The text the workload sends for this message; [`MessageRef::parse`] reads it back.
    pub fn text(&self) -> String {
        format!("{} #{}", client_name(self.sender), self.number)
    }

    /// The text of an edit of this message by device `by` (still naming the message).
    pub fn edited_text(&self, by: &str) -> String {
        format!("{} (edited on {by})", self.text())
    }

    /// The message a text names, if it is one of the workload's (an edit keeps the name and adds
    /// a word after it: [`MessageRef::edited_text`]).
    pub fn parse(text: &str) -> Option<Self> {
        let (sender, number) = text.split_once(" #")?;
        let number = number.split_once(' ').map_or(number, |(number, _)| number);
        Some(Self {
            sender: client_number(sender)?,
            number: number.parse().ok()?,
        })
    }
}

impl fmt::Display for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", client_name(self.sender), self.number)
    }
}

/// A group message of the workload: its group (the workload's number, from 1), its sender
/// (client number) and the sender's count of its messages to that group, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupMessageRef {
    /// The group (the workload's number, not the directory's id).
    pub group: u32,
    /// The sending client.
    pub sender: u32,
    /// The sender's count of its messages to the group, from 1.
    pub number: u32,
}

impl GroupMessageRef {
    /// The text the workload sends for this group message, `c3 #g1.2`; [`GroupMessageRef::parse`]
    /// reads it back. [`MessageRef::parse`] reads no group text (its number is not digits), so
    /// the two never mistake each other.
    pub fn text(&self) -> String {
        format!(
            "{} #g{}.{}",
            client_name(self.sender),
            self.group,
            self.number
        )
    }

    /// The group message a text names, if it is one of the workload's.
    pub fn parse(text: &str) -> Option<Self> {
        let (sender, rest) = text.split_once(" #g")?;
        let (group, number) = rest.split_once('.')?;
        Some(Self {
            group: group.parse().ok()?,
            sender: client_number(sender)?,
            number: number.parse().ok()?,
        })
    }
}

impl fmt::Display for GroupMessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "g{}:{}#{}",
            self.group,
            client_name(self.sender),
            self.number
        )
    }
}

/// A change of a group's membership, as the workload asks the directory writer for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// The group is created with these members (the creator first).
    Create(Vec<u32>),
    /// A member is added.
    Add(u32),
    /// A member is removed.
    Remove(u32),
}

impl fmt::Display for GroupChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupChange::Create(members) => {
                let names: Vec<String> = members.iter().map(|&m| client_name(m)).collect();
                write!(f, "create with {}", names.join(", "))
            }
            GroupChange::Add(member) => write!(f, "add {}", client_name(*member)),
            GroupChange::Remove(member) => write!(f, "remove {}", client_name(*member)),
        }
    }
}

/// The account name of client `number`.
pub fn client_name(number: u32) -> String {
    format!("c{number}")
}

/// The client number of an account name made by [`client_name`].
pub fn client_number(name: &str) -> Option<u32> {
    name.strip_prefix('c')?.parse().ok()
}

/// What a device did to a message with [`What::Changed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Replaced its text with [`MessageRef::edited_text`] naming the device.
    Edit,
    /// Deleted it for everyone.
    Delete,
    /// Reacted to it with this reaction (replacing the device's earlier one).
    React(String),
}

/// One thing that happened, at a simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Simulated time since the start, in ms.
    pub at_ms: u64,
    /// What happened.
    pub what: What,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A client registered its account (homed in `region`).
    Registered {
        /// The client.
        client: u32,
        /// Its account id.
        account: u64,
        /// Its home region.
        region: u32,
    },
    /// A client asked one of its devices to send a message.
    Send {
        /// The message.
        message: MessageRef,
        /// Its recipient.
        recipient: u32,
        /// The sending device of the client (0 the registered one, 1 the linked one).
        device: u32,
    },
    /// The message entered the sender's durable outbox (it will be retried until settled).
    Queued {
        /// The message.
        message: MessageRef,
    },
    /// The sender saw the message acknowledged: its first tick past pending (✓, or ✓✓ when a
    /// delivered receipt overtook the answer to the send), so every destination region committed
    /// it.
    Acked {
        /// The message.
        message: MessageRef,
    },
    /// A device received and decrypted a message.
    Received {
        /// The receiving client.
        receiver: u32,
        /// Which of its devices (0 the registered one, 1 the linked one).
        device: u32,
        /// The message its text names.
        message: MessageRef,
        /// The sending account, as the envelope says (0 when unreadable).
        from_account: u64,
        /// The receiving region's chat sequence.
        chat_seq: u64,
    },
    /// A device could not decrypt a message.
    Undecryptable {
        /// The receiving client.
        receiver: u32,
        /// Which of its devices.
        device: u32,
        /// The sender (account name).
        from: String,
        /// Why, as the client said.
        reason: String,
    },
    /// A device received a message whose text is not one of the workload's.
    Garbled {
        /// The receiving client.
        receiver: u32,
        /// Which of its devices.
        device: u32,
        /// The sender (account name).
        from: String,
        /// The text.
        text: String,
    },
    /// The sender gave the message up (refused permanently).
    Failed {
        /// The message.
        message: MessageRef,
        /// Why, as the client said.
        reason: String,
    },
    /// A region's host crashed (its process and unacknowledged state are gone).
    RegionCrashed {
        /// The region.
        region: u32,
    },
    /// A crashed region's host started again on the same disk.
    RegionRestarted {
        /// The region.
        region: u32,
    },
    /// The sender's tick of one of its messages moved (0 pending, 1 sent, 2 delivered, 3 read).
    Tick {
        /// The message.
        message: MessageRef,
        /// The new tick.
        tick: u8,
    },
    /// A client marked a peer's messages read, sending `envelopes` read receipts (each takes a
    /// chat sequence number in the chat).
    MarkedRead {
        /// The reader.
        reader: u32,
        /// The peer whose messages were read.
        peer: u32,
        /// How many receipt envelopes that queued.
        envelopes: u32,
    },
    /// A fault started.
    FaultStarted {
        /// Its kind.
        kind: FaultKind,
        /// What it hits.
        label: String,
    },
    /// A fault ended.
    FaultEnded {
        /// Its kind.
        kind: FaultKind,
        /// What it hit.
        label: String,
    },
    /// A client linked a second device to its account (through a pairing code its first device
    /// opened and approved), before anyone sent.
    Linked {
        /// The client.
        client: u32,
    },
    /// A device of a linked client edited or deleted for everyone one of its account's
    /// messages, or reacted to one.
    Changed {
        /// The client.
        client: u32,
        /// The device (0 the first, 1 the linked one).
        device: u32,
        /// The message.
        message: MessageRef,
        /// What it did.
        change: Change,
    },
    /// A client app was killed and opened again on its store.
    ClientRestarted {
        /// The client.
        client: u32,
    },
    /// The safety phase ended: every fault is healed, and the liveness bound starts.
    Healed,
    /// A linked client's first device removed the second one (`relay remove-device`).
    Removed {
        /// The client.
        client: u32,
    },
    /// A linked client's first device stopped without both devices saying their documents
    /// were in sync, after waiting for it (`SYNC_CONFIRM_WAIT_MS`) with everything else settled.
    SyncUnconfirmed {
        /// The client.
        client: u32,
    },
    /// A client asked the directory writer for a change of a group (first attempt).
    GroupChangeAsked {
        /// The group (the workload's number).
        group: u32,
        /// The client that asked (the group's creator, an admin).
        by: u32,
        /// The change.
        change: GroupChange,
    },
    /// The directory writer acknowledged a group change (the answer reached the client).
    GroupChanged {
        /// The group (the workload's number).
        group: u32,
        /// The client that asked.
        by: u32,
        /// The change.
        change: GroupChange,
        /// The group's version in the answer.
        version: u64,
    },
    /// A client's device started sending a group message.
    GroupSend {
        /// The message.
        message: GroupMessageRef,
        /// The sending device of the client.
        device: u32,
    },
    /// The group message entered the sender's outbox.
    GroupQueued {
        /// The message.
        message: GroupMessageRef,
    },
    /// The sender saw the group message acknowledged (its first tick past pending).
    GroupAcked {
        /// The message.
        message: GroupMessageRef,
    },
    /// The sender's tick of a group message moved (0 pending, 1 sent, 2 delivered, 3 read).
    GroupTick {
        /// The message.
        message: GroupMessageRef,
        /// The new tick.
        tick: u8,
    },
    /// A device received and decrypted a group message.
    GroupReceived {
        /// The receiving client.
        receiver: u32,
        /// Which of its devices.
        device: u32,
        /// The message its text names.
        message: GroupMessageRef,
        /// The sending account, as the envelope says (0 when unreadable).
        from_account: u64,
        /// The group chat's sequence in the receiving region.
        chat_seq: u64,
    },
    /// A device could not decrypt a group message.
    GroupUndecryptable {
        /// The receiving client.
        receiver: u32,
        /// Which of its devices.
        device: u32,
        /// The sender (account name).
        from: String,
        /// Why, as the device said.
        reason: String,
    },
    /// The sender gave a group message up (refused for good: not a member any more, say).
    GroupFailed {
        /// The message.
        message: GroupMessageRef,
    },
    /// A client finished its workload.
    Finished {
        /// The client.
        client: u32,
        /// Whether it saw everything it waited for before the time limit.
        complete: bool,
    },
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8} ms  ", self.at_ms)?;
        match &self.what {
            What::Registered {
                client,
                account,
                region,
            } => write!(
                f,
                "{} registered as account {account} in region {region}",
                client_name(*client)
            ),
            What::Send {
                message,
                recipient,
                device,
            } => match device {
                0 => write!(f, "{message} sent to {}", client_name(*recipient)),
                _ => write!(
                    f,
                    "{message} sent to {} from {}",
                    client_name(*recipient),
                    device_name(message.sender, *device)
                ),
            },
            What::Queued { message } => write!(f, "{message} queued in the outbox"),
            What::Acked { message } => write!(f, "{message} acknowledged"),
            What::Received {
                receiver,
                device,
                message,
                from_account,
                chat_seq,
            } => write!(
                f,
                "{} received {message} from account {from_account} at chat seq {chat_seq}",
                device_name(*receiver, *device)
            ),
            What::Undecryptable {
                receiver,
                device,
                from,
                reason,
            } => write!(
                f,
                "{} could not decrypt a message from {from}: {reason}",
                device_name(*receiver, *device)
            ),
            What::Garbled {
                receiver,
                device,
                from,
                text,
            } => write!(
                f,
                "{} received an unknown text {text:?} from {from}",
                device_name(*receiver, *device)
            ),
            What::Failed { message, reason } => write!(f, "{message} given up: {reason}"),
            What::Tick { message, tick } => write!(f, "{message} is {}", tick_label(*tick)),
            What::MarkedRead {
                reader,
                peer,
                envelopes,
            } => write!(
                f,
                "{} read {}'s messages ({envelopes} receipt envelope(s))",
                client_name(*reader),
                client_name(*peer)
            ),
            What::FaultStarted { kind, label } => write!(f, "fault: {label} ({kind})"),
            What::FaultEnded { kind, label } => write!(f, "fault over: {label} ({kind})"),
            What::Linked { client } => write!(
                f,
                "{} linked a second device, {}",
                client_name(*client),
                device_name(*client, 1)
            ),
            What::Changed {
                client,
                device,
                message,
                change,
            } => write!(
                f,
                "{} {} {message}",
                device_name(*client, *device),
                match change {
                    Change::Edit => "edited".to_owned(),
                    Change::Delete => "deleted for everyone".to_owned(),
                    Change::React(reaction) => format!("reacted {reaction} to"),
                }
            ),
            What::ClientRestarted { client } => {
                write!(f, "{} killed and opened again", client_name(*client))
            }
            What::Healed => write!(f, "every fault healed; the liveness phase starts"),
            What::RegionCrashed { region } => write!(f, "region {region} crashed"),
            What::RegionRestarted { region } => write!(f, "region {region} restarted"),
            What::Removed { client } => write!(
                f,
                "{} removed its second device, {}",
                client_name(*client),
                device_name(*client, 1)
            ),
            What::SyncUnconfirmed { client } => write!(
                f,
                "{}'s devices never both said their documents were in sync",
                client_name(*client)
            ),
            What::GroupChangeAsked { group, by, change } => {
                write!(f, "{} asks g{group}: {change}", client_name(*by))
            }
            What::GroupChanged {
                group,
                by,
                change,
                version,
            } => write!(
                f,
                "g{group}: {change} acknowledged to {} (version {version})",
                client_name(*by)
            ),
            What::GroupSend { message, device } => match device {
                0 => write!(f, "{message} sent to its group"),
                _ => write!(
                    f,
                    "{message} sent to its group from {}",
                    device_name(message.sender, *device)
                ),
            },
            What::GroupQueued { message } => write!(f, "{message} queued in the outbox"),
            What::GroupAcked { message } => write!(f, "{message} acknowledged"),
            What::GroupTick { message, tick } => write!(f, "{message} is {}", tick_label(*tick)),
            What::GroupReceived {
                receiver,
                device,
                message,
                from_account,
                chat_seq,
            } => write!(
                f,
                "{} received {message} from account {from_account} at group chat seq {chat_seq}",
                device_name(*receiver, *device)
            ),
            What::GroupUndecryptable {
                receiver,
                device,
                from,
                reason,
            } => write!(
                f,
                "{} could not decrypt a group message from {from}: {reason}",
                device_name(*receiver, *device)
            ),
            What::GroupFailed { message } => write!(f, "{message} given up"),
            What::Finished { client, complete } => write!(
                f,
                "{} finished{}",
                client_name(*client),
                if *complete { "" } else { " (time limit)" }
            ),
        }
    }
}

/// A tick's name (0 pending, 1 sent, 2 delivered, 3 read).
pub(super) fn tick_label(tick: u8) -> &'static str {
    match tick {
        0 => "pending",
        1 => "sent",
        2 => "delivered",
        3 => "read",
        _ => "?",
    }
}

/// One message of a client's local history of a chat, at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    /// Sent by this client (else received).
    pub outgoing: bool,
    /// The message its text names (`None`: undecryptable or not the workload's).
    pub message: Option<MessageRef>,
    /// The home region's chat sequence, once known.
    pub chat_seq: Option<u64>,
}

/// A device's local history of its chat with one peer, at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatView {
    /// The client.
    pub client: u32,
    /// Which of its devices (0 the registered one, 1 the linked one).
    pub device: u32,
    /// The peer.
    pub peer: u32,
    /// The messages, in the client's order.
    pub entries: Vec<ViewEntry>,
}

/// One message of a device's relay-sync document of a chat, at the end of the run: what I7
/// compares between the devices of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocEntry {
    /// The chat sequence it is keyed by.
    pub chat_seq: u64,
    /// The current text (`None` once deleted).
    pub text: Option<String>,
    /// Whether the text is an edit.
    pub edited: bool,
    /// Whether it was deleted for everyone.
    pub deleted: bool,
    /// Each reacting device's reaction, as `(device, reaction)` sorted by device.
    pub reactions: Vec<(String, String)>,
}

impl fmt::Display for DocEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {} text {:?}", self.chat_seq, self.text)?;
        if self.edited {
            f.write_str(" (edited)")?;
        }
        if self.deleted {
            f.write_str(" (deleted)")?;
        }
        if !self.reactions.is_empty() {
            write!(f, " reactions {:?}", self.reactions)?;
        }
        Ok(())
    }
}

/// One device's relay-sync document of its account's chat with one peer, after its final sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocView {
    /// The client (account) the device belongs to.
    pub client: u32,
    /// The device's number within the client: 0 for the registered one, 1 for a linked one.
    pub device: u32,
    /// The peer of the chat.
    pub peer: u32,
    /// The messages, in chat order.
    pub entries: Vec<DocEntry>,
    /// Each of the account's devices' read watermark, as `(device, chat seq)` sorted by device.
    pub read_marks: Vec<(String, u64)>,
}

/// The name of device `device` of client `client` in reports: `c3` for the registered device,
/// `c3/d1` for the first linked one.
pub fn device_name(client: u32, device: u32) -> String {
    match device {
        0 => client_name(client),
        _ => format!("{}/d{device}", client_name(client)),
    }
}
