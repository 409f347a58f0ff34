//! What an app shows of a chat: its messages in chat order with their current text, and every
//! device's read watermark. A view is a function of the documents' logical state only, so
//! devices holding the same operations show the same view (I7).

use std::collections::BTreeMap;

use relay_proto::{ChatId, ClientMessageId, DeviceAddress};

use crate::hlc::Hlc;
use crate::schema::{EpochState, MessageState};

/// A deletion for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    /// The device that deleted (the earliest deletion, if several devices deleted).
    pub by: DeviceAddress,
    /// When, by its clock.
    pub at: Hlc,
}

/// One message as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The chat sequence.
    pub chat_seq: u64,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's id for the envelope.
    pub client_message_id: ClientMessageId,
    /// When the region stored it, in ms since the Unix epoch.
    pub server_time_ms: u64,
    /// When the sender sent it, by the sender's clock, in ms since the Unix epoch.
    pub sent_time_ms: u64,
    /// The current text; `None` once deleted.
    pub text: Option<String>,
    /// The attachment as the client encoded it; `None` when it has none or once deleted.
    pub attachment: Option<Vec<u8>>,
    /// Whether the text shown is an edit.
    pub edited: bool,
    /// The deletion, if the message was deleted for everyone.
    pub deleted: Option<Deletion>,
    /// Each reacting device's reaction.
    pub reactions: BTreeMap<DeviceAddress, String>,
}

/// A chat as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatView {
    /// The chat.
    pub chat: ChatId,
    /// Its messages, in chat order.
    pub messages: Vec<MessageView>,
    /// Each device's read watermark: the highest chat sequence it has read.
    pub read_marks: BTreeMap<DeviceAddress, u64>,
}

fn message_view(chat_seq: u64, message: MessageState) -> MessageView {
    let edited = message
        .text
        .as_ref()
        .is_some_and(|text| text.at != Hlc::zero(message.sender));
    MessageView {
        chat_seq,
        sender: message.sender,
        client_message_id: message.client_message_id,
        server_time_ms: message.server_time_ms,
        sent_time_ms: message.sent_time_ms,
        text: message.text.map(|text| text.value),
        attachment: message.attachment,
        edited,
        deleted: message.deleted.map(|at| Deletion { by: at.device, at }),
        reactions: message
            .reactions
            .into_iter()
            .filter(|(_, reaction)| !reaction.value.is_empty())
            .map(|(device, reaction)| (device, reaction.value))
            .collect(),
    }
}

/// The view of a chat from its epochs' states, in epoch order.
pub(crate) fn chat_view(chat: ChatId, epochs: impl IntoIterator<Item = EpochState>) -> ChatView {
    let mut view = ChatView {
        chat,
        messages: Vec::new(),
        read_marks: BTreeMap::new(),
    };
    for state in epochs {
        view.messages.extend(
            state
                .messages
                .into_iter()
                .map(|(chat_seq, message)| message_view(chat_seq, message)),
        );
        for (device, chat_seq) in state.read_marks {
            let mark = view.read_marks.entry(device).or_default();
            *mark = (*mark).max(chat_seq);
        }
    }
    view
}
