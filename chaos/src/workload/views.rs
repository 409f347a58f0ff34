//! Recording what each device holds at the end: its stored history of each chat ([`chat_views`])
//! and its relay-sync documents ([`doc_views`]).

use std::collections::BTreeMap;
use std::path::Path;

use relay_client::history::History;
use relay_client::store::Store;
use relay_client::{ClientError, DATABASE_FILE};
use relay_proto::{AccountId, ChatId, DeviceAddress};

use super::{ClientSetup, Plan};
use crate::history::{ChatView, DocEntry, DocView, MessageRef, ViewEntry};

/// Records the stored history of each chat of device `device` (0 the first, 1 the linked one)
/// of the client, read from its store in `data_dir` by account (names may not have resolved: a
/// device stores a message from an account it could not name).
pub(super) fn record_views(setup: &ClientSetup, data_dir: &Path, device: u32) -> turmoil::Result {
    let accounts = setup.shared.borrow().progress.accounts.clone();
    let views = chat_views(
        data_dir,
        setup.plan.client,
        device,
        &setup.everyone,
        &accounts,
    )?;
    setup.shared.borrow_mut().views.extend(views);
    Ok(())
}

/// Records the relay-sync documents of device `device` (0 the first, 1 the linked one) of the
/// client, from its closed data directory.
pub(super) fn record_docs(setup: &ClientSetup, data_dir: &Path, device: u32) -> turmoil::Result {
    let accounts = setup.shared.borrow().progress.accounts.clone();
    let docs = doc_views(
        data_dir,
        setup.plan.client,
        device,
        &setup.everyone,
        &accounts,
    )?;
    setup.shared.borrow_mut().docs.extend(docs);
    Ok(())
}

/// Device `device` of client `me`: its relay-sync document of its chat with each peer of the
/// plan that registered, read from the saved history in `data_dir` (the device is closed).
pub fn doc_views(
    data_dir: &Path,
    me: u32,
    device: u32,
    everyone: &Plan,
    accounts: &BTreeMap<u32, u64>,
) -> Result<Vec<DocView>, ClientError> {
    let store = Store::open(&data_dir.join(DATABASE_FILE))?;
    let identity = store
        .identity()?
        .ok_or_else(|| ClientError::Invalid(format!("{} holds no device", data_dir.display())))?;
    let address = DeviceAddress {
        account: identity.account,
        device: identity.device,
    };
    // Read only: nothing is saved, so the nonce of this open never reaches a document.
    let history = History::open(data_dir, address, u64::MAX)?;
    let mut docs = Vec::new();
    for peer in everyone.peers_of(me) {
        let Some(&account) = accounts.get(&peer) else {
            continue;
        };
        let view = history.view(ChatId::direct(identity.account, AccountId(account)));
        let entries = view
            .messages
            .into_iter()
            .map(|message| DocEntry {
                chat_seq: message.chat_seq,
                text: message.text,
                edited: message.edited,
                deleted: message.deleted.is_some(),
                reactions: message
                    .reactions
                    .iter()
                    .map(|(by, reaction)| (by.to_string(), reaction.clone()))
                    .collect(),
            })
            .collect();
        docs.push(DocView {
            client: me,
            device,
            peer,
            entries,
            read_marks: view
                .read_marks
                .iter()
                .map(|(device, mark)| (device.to_string(), *mark))
                .collect(),
        });
    }
    Ok(docs)
}

/// Device `device` of client `me`: its stored history of its chat with each peer of the plan
/// that registered, read from the store in `data_dir` by account (names may not have resolved:
/// a device stores a message from an account it could not name).
pub fn chat_views(
    data_dir: &Path,
    me: u32,
    device: u32,
    everyone: &Plan,
    accounts: &BTreeMap<u32, u64>,
) -> Result<Vec<ChatView>, ClientError> {
    let store = Store::open(&data_dir.join(DATABASE_FILE))?;
    let mut views = Vec::new();
    for peer in everyone.peers_of(me) {
        let Some(&account) = accounts.get(&peer) else {
            continue;
        };
        let entries = store
            .history(AccountId(account))?
            .into_iter()
            .map(|stored| ViewEntry {
                outgoing: stored.outgoing,
                message: stored.text.as_deref().and_then(MessageRef::parse),
                chat_seq: stored.chat_seq,
            })
            .collect();
        views.push(ChatView {
            client: me,
            device,
            peer,
            entries,
        });
    }
    Ok(views)
}
