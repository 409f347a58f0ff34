//! A deletion for everyone removes the text from every device's saved state and from every sync
//! message sent afterwards, not only from the view.

mod common;

use common::*;
use relay_sync::inspect::{SyncTranscript, contains, snapshot_plaintext};
use relay_sync::{Outcome, Replica};

const SECRET: &str = "<the secret that must go>";
const SECRET_EDIT: &str = "<the edited secret that must go too>";

fn scan_replicas(replicas: &mut [Replica], needle: &str) -> Vec<usize> {
    let mut holders = Vec::new();
    for (index, replica) in replicas.iter_mut().enumerate() {
        let snapshot = replica.save_snapshot();
        let mut plaintext = snapshot_plaintext(&snapshot).expect("our own snapshot decodes");
        for peer in [own(1), own(2), own(3)] {
            plaintext.extend_from_slice(&replica.peer_state(peer));
        }
        if contains(&plaintext, needle.as_bytes()) {
            holders.push(index);
        }
    }
    holders
}

fn scan_transcripts(
    transcripts: &[((usize, usize), SyncTranscript)],
    needle: &str,
) -> Vec<(usize, usize)> {
    transcripts
        .iter()
        .filter(|(_, transcript)| contains(transcript.plaintext(), needle.as_bytes()))
        .map(|(pair, _)| *pair)
        .collect()
}

/// Three devices hold a message (edited once), one deletes it; after a sync no device's saved
/// state holds either text, and no sync message sent afterwards does.
#[test]
fn a_deleted_text_is_in_no_saved_state_and_no_later_sync_message() {
    let mut replicas = vec![
        Replica::new(own(1), 1),
        Replica::new(own(2), 2),
        Replica::new(own(3), 3),
    ];
    let texts: Vec<String> = (1..=40).map(text_of).collect();
    for replica in replicas.iter_mut() {
        for (index, text) in texts.iter().enumerate() {
            let chat_seq = index as u64 + 1;
            let text = if chat_seq == 7 { SECRET } else { text };
            replica
                .append(CHAT, &message(chat_seq, own(1), text))
                .expect("append");
        }
    }
    let at = replicas[0].tick(10_000);
    assert_eq!(
        replicas[0].edit(CHAT, 7, SECRET_EDIT, at).expect("edit"),
        Outcome::Applied
    );
    let mut before = Vec::new();
    exchange_all(&mut replicas, Some(&mut before));

    // The control: before the deletion the scans find both texts everywhere (the original is
    // in the history only, under the edit), so clean scans later mean something.
    for needle in [SECRET, SECRET_EDIT] {
        assert_eq!(
            scan_replicas(&mut replicas, needle),
            vec![0, 1, 2],
            "{needle}"
        );
    }
    assert!(!scan_transcripts(&before, SECRET_EDIT).is_empty());

    let at = replicas[1].tick(20_000);
    assert_eq!(
        replicas[1].delete(CHAT, 7, at).expect("delete"),
        Outcome::Applied
    );
    exchange_all(&mut replicas, None);

    // Everything else carries on: more messages, a reaction, a read mark, and the sync of
    // all that is recorded and scanned.
    let later: Vec<String> = (41..=45).map(text_of).collect();
    for replica in replicas.iter_mut() {
        for (index, text) in later.iter().enumerate() {
            replica
                .append(CHAT, &message(41 + index as u64, own(2), text))
                .expect("append");
        }
    }
    let at = replicas[2].tick(30_000);
    replicas[2].react(CHAT, 7, Some("👍"), at).expect("react");
    replicas[0].mark_read(CHAT, own(1), 45).expect("read");
    let mut transcripts = Vec::new();
    exchange_all(&mut replicas, Some(&mut transcripts));
    assert!(
        transcripts
            .iter()
            .any(|(_, transcript)| transcript.documents() > 0)
    );
    // A device that starts over asks for everything again: that traffic is clean too.
    for replica in replicas.iter_mut() {
        for peer in [own(1), own(2), own(3)] {
            replica.reset_peer(peer);
        }
    }
    // The third device is replaced by a fresh install that has nothing yet.
    replicas[2] = Replica::new(own(3), 33);
    exchange_all(&mut replicas, Some(&mut transcripts));

    for needle in [SECRET, SECRET_EDIT] {
        assert_eq!(
            scan_replicas(&mut replicas, needle),
            Vec::<usize>::new(),
            "{needle} survives in a saved state"
        );
        assert_eq!(
            scan_transcripts(&transcripts, needle),
            vec![],
            "{needle} travels in a sync message"
        );
    }
    let view = replicas[0].view(CHAT);
    let deleted = &view.messages[6];
    assert_eq!(deleted.text, None);
    assert_eq!(deleted.deleted.map(|deletion| deletion.by), Some(own(2)));
    assert_eq!(view, replicas[1].view(CHAT));
    assert_eq!(view, replicas[2].view(CHAT));
    assert_eq!(view.messages.len(), 45);
}

/// A device offline during the deletion still holds the old generation, with the text and an
/// edit of another message made meanwhile. When it comes back, the other devices refuse the
/// old generation's changes, it takes the new generation and re-applies its edit onto it: the
/// edit survives, the deleted text never comes back.
#[test]
fn a_device_on_the_old_generation_does_not_resurrect_the_text() {
    let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
    let mut offline = Replica::new(own(3), 3);
    let texts: Vec<String> = (1..=10).map(text_of).collect();
    for replica in replicas.iter_mut().chain(std::iter::once(&mut offline)) {
        for (index, text) in texts.iter().enumerate() {
            let chat_seq = index as u64 + 1;
            let text = if chat_seq == 4 { SECRET } else { text };
            replica
                .append(CHAT, &message(chat_seq, own(1), text))
                .expect("append");
        }
    }
    let at = replicas[0].tick(10_000);
    replicas[0].delete(CHAT, 4, at).expect("delete");
    exchange_all(&mut replicas, None);

    // Meanwhile, offline: an edit of message 5, and a reaction to the deleted message.
    let at = offline.tick(15_000);
    offline.edit(CHAT, 5, "edited offline", at).expect("edit");
    let at = offline.tick(15_001);
    offline.react(CHAT, 4, Some("❤"), at).expect("react");

    replicas.push(offline);
    let mut stale_parts = 0;
    for round in 0..EXCHANGE_ROUNDS_MAX {
        let mut sent = false;
        for (from, to) in [(2, 0), (0, 2), (2, 1), (1, 2), (0, 1), (1, 0)] {
            let (from_device, to_device) = (replicas[from].device(), replicas[to].device());
            while let Some(bytes) = replicas[from].generate_message(to_device) {
                sent = true;
                stale_parts += replicas[to]
                    .receive_message(from_device, &bytes)
                    .expect("receive")
                    .stale_parts;
            }
        }
        if !sent {
            break;
        }
        assert!(round + 1 < EXCHANGE_ROUNDS_MAX, "no quiescence");
    }
    assert!(stale_parts > 0, "the old generation's changes were refused");
    let view = replicas[0].view(CHAT);
    assert_eq!(view, replicas[1].view(CHAT));
    assert_eq!(view, replicas[2].view(CHAT));
    assert_eq!(view.messages[3].text, None);
    assert_eq!(
        view.messages[3].reactions.get(&own(3)).map(String::as_str),
        Some("❤")
    );
    assert_eq!(view.messages[4].text.as_deref(), Some("edited offline"));
    assert!(view.messages[4].edited);
    assert_eq!(scan_replicas(&mut replicas, SECRET), Vec::<usize>::new());
    let generations: Vec<_> = replicas
        .iter_mut()
        .map(|replica| replica.epochs(CHAT))
        .collect();
    assert_eq!(generations[0], generations[1]);
    assert_eq!(generations[0], generations[2]);
}

/// Two devices delete two messages of the same epoch at once: each compacts into its own
/// generation; they settle on one, with both texts gone.
#[test]
fn concurrent_deletions_settle_on_one_generation_without_either_text() {
    let mut replicas = vec![
        Replica::new(own(1), 1),
        Replica::new(own(2), 2),
        Replica::new(own(3), 3),
    ];
    let texts: Vec<String> = (1..=10).map(text_of).collect();
    for replica in replicas.iter_mut() {
        for (index, text) in texts.iter().enumerate() {
            replica
                .append(CHAT, &message(index as u64 + 1, own(1), text))
                .expect("append");
        }
    }
    exchange_all(&mut replicas, None);
    let at = replicas[0].tick(10_000);
    replicas[0].delete(CHAT, 2, at).expect("delete");
    let at = replicas[1].tick(10_000);
    replicas[1].delete(CHAT, 3, at).expect("delete");
    exchange_all(&mut replicas, None);

    let view = replicas[0].view(CHAT);
    assert_eq!(view, replicas[1].view(CHAT));
    assert_eq!(view, replicas[2].view(CHAT));
    assert_eq!(
        (
            view.messages[1].text.as_deref(),
            view.messages[2].text.as_deref()
        ),
        (None, None)
    );
    for chat_seq in [2, 3] {
        assert_eq!(
            scan_replicas(&mut replicas, &text_of(chat_seq)),
            Vec::<usize>::new()
        );
    }
    let epochs: Vec<_> = replicas
        .iter_mut()
        .map(|replica| replica.epochs(CHAT))
        .collect();
    assert_eq!(epochs[0], epochs[1]);
    assert_eq!(epochs[0], epochs[2]);
    assert!(epochs[0][0].generation.expect("in use").generation >= 1);
}

/// A message's attachment (the file's key, for the client) reaches every device with the
/// message; a deletion for everyone removes it from every saved state and from the sync
/// messages sent afterwards, as it removes the text.
#[test]
fn a_deleted_attachment_is_in_no_saved_state_and_no_later_sync_message() {
    const KEY: &str = "<attachment holding a file key that must go>";
    let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
    let texts: Vec<String> = (1..=12).map(text_of).collect();
    for (index, text) in texts.iter().enumerate() {
        let chat_seq = index as u64 + 1;
        let mut appended = message(chat_seq, own(1), text);
        if chat_seq == 5 {
            appended.text = "a caption";
            appended.attachment = Some(KEY.as_bytes());
        }
        // Only the first device received the messages; the second learns them by sync.
        replicas[0].append(CHAT, &appended).expect("append");
    }
    exchange_all(&mut replicas, None);
    for replica in replicas.iter_mut() {
        let view = replica.view(CHAT);
        let shown = view
            .messages
            .iter()
            .find(|message| message.chat_seq == 5)
            .expect("message 5 on every device");
        assert_eq!(shown.attachment.as_deref(), Some(KEY.as_bytes()));
        assert_eq!(shown.text.as_deref(), Some("a caption"));
    }
    assert_eq!(scan_replicas(&mut replicas, KEY), vec![0, 1], "the control");

    let at = replicas[1].tick(20_000);
    assert_eq!(
        replicas[1].delete(CHAT, 5, at).expect("delete"),
        Outcome::Applied
    );
    exchange_all(&mut replicas, None);
    let mut transcripts = Vec::new();
    for replica in replicas.iter_mut() {
        replica.reset_peer(own(1));
        replica.reset_peer(own(2));
    }
    replicas.push(Replica::new(own(3), 3));
    exchange_all(&mut replicas, Some(&mut transcripts));
    for replica in replicas.iter_mut() {
        let view = replica.view(CHAT);
        let shown = view
            .messages
            .iter()
            .find(|message| message.chat_seq == 5)
            .expect("the tombstone stays");
        assert_eq!(
            (shown.attachment.as_deref(), shown.text.as_deref()),
            (None, None)
        );
    }
    assert_eq!(
        scan_replicas(&mut replicas, KEY),
        Vec::<usize>::new(),
        "the attachment survives in a saved state"
    );
    assert_eq!(
        scan_transcripts(&transcripts, KEY),
        Vec::<(usize, usize)>::new()
    );

    // An attachment over the bound is refused, and nothing is appended.
    let too_large = vec![0u8; relay_sync::limits::ATTACHMENT_BYTES_MAX + 1];
    let mut appended = message(13, own(1), "big");
    appended.attachment = Some(&too_large);
    assert!(matches!(
        replicas[0].append(CHAT, &appended),
        Err(relay_sync::SyncError::AttachmentTooLarge { .. })
    ));
}
