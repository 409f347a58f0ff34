//! A region's store proves it is the one expected, and a damaged queue never yields an
//! acknowledgement, with real `relayd` and `relay` processes on loopback: an emptied store, a
//! store from another devnet and a store of another region are refused before the region
//! listens, with the region's own message; an empty store where accounts live waits for the
//! directory writer and is refused, unless the operator accepts the loss; a queue damaged on
//! disk is refused `RecipientUnavailable` (never ✓), other recipients are served, and after
//! `relayd admin repair-store` everything flows again, the sender told what was lost.

mod support;

use std::path::Path;

use fdb_layers::{Database, EmbeddedOptions, RangeOptions, Subspace, chat_log};
use relay_proto::{AccountId, ChatId};
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, Server, devnet_refuses, eventually, json_lines, relayd};

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|error| panic!("copy {} to {}: {error}", from.display(), to.display()));
}

/// Registers `person` from `bind` and returns their account id.
fn register(person: &Person, devnet: &Devnet, bind: &str) -> u64 {
    let lines = person.register(devnet, bind);
    events(&lines, "registered")[0]["account"]
        .as_u64()
        .expect("account id")
}

#[test]
fn a_store_that_is_not_the_regions_own_is_refused_before_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    let store = |devnet: &Path, region: u32| devnet.join(format!("region-{region}/region.redb"));

    // Two devnets: ours (where bob lives, in region 2) and another one.
    let mut devnet = Devnet::start(2, &ours);
    let bob = Person::new(dir.path(), "bob");
    register(&bob, &devnet, "127.0.2.10");
    devnet.stop();
    Devnet::start(2, &theirs).stop();
    let backup = dir.path().join("region-2.backup");
    copy(&store(&ours, 2), &backup);

    // Emptied (truncated to zero bytes, as in the issue): the marker file beside it tells.
    std::fs::write(store(&ours, 2), b"").expect("truncate");
    let refused = stderr_of(&devnet_refuses(2, &ours));
    assert!(
        refused.contains("region-2 refused to start")
            && refused.contains("is empty, but the marker file")
            && refused.contains("--accept-new-store"),
        "the devnet reports the region's own message: {refused}"
    );

    // Another devnet's region 2 store, copied in.
    copy(&store(&theirs, 2), &store(&ours, 2));
    let refused = stderr_of(&devnet_refuses(2, &ours));
    assert!(
        refused.contains("region-2 refused to start")
            && refused.contains("belongs to another deployment"),
        "{refused}"
    );

    // Region 1's store of this devnet, copied into region 2's folder.
    copy(&store(&ours, 1), &store(&ours, 2));
    let refused = stderr_of(&devnet_refuses(2, &ours));
    assert!(
        refused.contains("it is region 1's store, not region 2's"),
        "{refused}"
    );

    // The backup restored: the devnet starts, and bob's account is still there.
    copy(&backup, &store(&ours, 2));
    let devnet = Devnet::start(2, &ours);
    let synced = bob.ok(&["sync"]);
    assert_eq!(events(&synced, "synced").len(), 1, "{synced:?}");
    drop(devnet);
}

#[test]
fn an_empty_store_where_accounts_live_waits_for_the_writer_and_starts_only_when_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("devnet");
    let mut devnet = Devnet::start(2, &data);
    let bob = Person::new(dir.path(), "bob");
    register(&bob, &devnet, "127.0.2.10");
    devnet.stop();

    // Region 2's whole folder is gone (store and marker): only the directory writer knows.
    std::fs::remove_dir_all(data.join("region-2")).expect("rm");
    let refused = stderr_of(&devnet_refuses(2, &data));
    assert!(
        refused.contains("region-2 refused to start")
            && refused.contains(
                "the directory writer (region 1) says 1 account(s) are homed in region 2"
            ),
        "{refused}"
    );

    // The directory writer down: the region waits for it with bounded retries, then says so.
    let region2_config = data.join("region-2.toml");
    let region2_config = region2_config.to_str().expect("utf-8 path");
    let alone = relayd(&["region", "--config", region2_config]);
    assert!(!alone.status.success());
    let refused = stderr_of(&alone);
    assert!(
        refused.contains("could not be asked whether accounts live here")
            && refused.contains("8 attempts"),
        "{refused}"
    );
    assert!(
        !String::from_utf8_lossy(&alone.stdout).contains("listening on"),
        "nothing was bound"
    );

    // The operator accepts the loss: with the writer up, the region starts empty, says what
    // was lost, and registers its new store.
    let writer_config = data.join("region-1.toml");
    let writer = Server::start(&[
        "region",
        "--config",
        writer_config.to_str().expect("utf-8 path"),
    ]);
    let accepted = Server::start(&["region", "--config", region2_config, "--accept-new-store"]);
    let said = accepted.stop();
    writer.stop();
    assert!(
        said.contains("ON AN EMPTY STORE") && said.contains("1 account(s) homed here"),
        "the loss is logged loudly: {said}"
    );
    // From now on the devnet starts as usual on the new store.
    let devnet = Devnet::start(2, &data);
    let carol = Person::new(dir.path(), "carol");
    register(&carol, &devnet, "127.0.2.11");
}

/// Makes the stored envelope of `chat#chat_seq` in the store at `path` undecodable, as one
/// flipped bit in its first byte would (the tag byte becomes 0xff, a wire type protobuf does
/// not have). The log entry's own fields still decode, so its sender can still be told.
fn damage_stored_envelope(path: &Path, chat: ChatId, chat_seq: u64) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let db = Database::open(path, EmbeddedOptions::default()).expect("the store opens");
        db.transact(|tx| async move {
            let envelope = chat_log::entry(&tx, chat, chat_seq)
                .await?
                .expect("the entry exists")
                .envelope_bytes;
            let record = Subspace::new(&("chat_log", chat))
                .subspace(&("entry",))
                .subspace(&(chat_seq,));
            let (begin, end) = record.range();
            let rows = tx.get_range(&begin, &end, RangeOptions::default()).await?;
            let (key, mut value) = rows.into_iter().next().expect("one chunk");
            let at = value
                .windows(envelope.len())
                .position(|window| window == &envelope[..])
                .expect("the envelope is in the record");
            value[at] = 0xff;
            tx.set(&key, &value)
        })
        .await
        .expect("damaged");
    });
}

#[test]
fn a_damaged_queue_is_refused_never_acknowledged_and_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("devnet");
    let mut devnet = Devnet::start(2, &data);
    let alice = Person::new(dir.path(), "alice");
    let bob = Person::new(dir.path(), "bob");
    let carol = Person::new(dir.path(), "carol");
    let alice_id = register(&alice, &devnet, "127.0.1.10");
    let bob_id = register(&bob, &devnet, "127.0.2.10");
    register(&carol, &devnet, "127.0.2.11");
    let sent = |person: &Person, peer: &str, text: &str| {
        let lines = person.ok(&["send", peer, text]);
        events(&lines, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent")
    };
    assert!(sent(&alice, "bob", "one"));
    assert!(sent(&alice, "bob", "two"));
    devnet.stop();

    // One flipped bit in region 2's copy of "one", which waits in bob's queue.
    let region2 = data.join("region-2");
    let chat = ChatId::direct(AccountId(alice_id), AccountId(bob_id));
    damage_stored_envelope(&region2.join("region.redb"), chat, 1);

    let mut devnet = Devnet::start(2, &data);
    // bob's fetch meets the damage: a typed error, and his device is quarantined.
    let fetch = bob.run(&["sync"]);
    assert!(!fetch.status.success(), "bob's sync cannot succeed");
    let why = stderr_of(&fetch);
    assert!(
        why.contains("RecipientUnavailable") && why.contains("cannot be read"),
        "{why}"
    );
    // Other recipients are served as before.
    assert!(sent(&alice, "carol", "hello carol"));
    // A send to bob is refused, never acknowledged: it stays in alice's outbox, and says why.
    let attempt = alice.run(&["send", "bob", "three"]);
    assert!(attempt.status.success(), "a pending send is not a failure");
    let lines = json_lines(&attempt.stdout);
    assert!(
        events(&lines, "tick")
            .iter()
            .all(|tick| tick["tick"] == "pending"),
        "never ✓: {lines:?}"
    );
    let pending = events(&lines, "still_pending");
    assert_eq!(pending.len(), 1, "{lines:?}");
    assert!(
        pending[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("RecipientUnavailable")),
        "{pending:?}"
    );
    let received = carol.ok(&["sync"]);
    assert_eq!(events(&received, "message").len(), 1);
    devnet.stop();
    let logs = std::fs::read_to_string(data.join("logs/region-2.log")).expect("log");
    assert!(!logs.contains("panicked"), "no handler panicked");

    // The operator's check lists bob's device, damaged and quarantined.
    let region2_dir = region2.to_str().expect("utf-8 path");
    let check = relayd(&["admin", "check-store", "--data", region2_dir, "--json"]);
    assert!(!check.status.success(), "damage found is a non-zero exit");
    let report: Value = serde_json::from_slice(&check.stdout).expect("one JSON object");
    let bob_device = format!("{bob_id}/1");
    assert!(
        report["engine_integrity"]
            .as_str()
            .is_some_and(|integrity| integrity.starts_with("ok (")),
        "{report}"
    );
    assert_eq!(report["marker"], "matches");
    assert_eq!(
        report["damaged"][0]["device"],
        bob_device.as_str(),
        "{report}"
    );
    assert_eq!(report["damaged"][0]["entries"][0]["queue_seq"], 1);
    assert!(
        report["damaged"][0]["entries"][0]["damage"]
            .as_str()
            .is_some_and(|damage| damage.contains("stored envelope")),
        "{report}"
    );
    assert_eq!(report["quarantined"][0]["device"], bob_device.as_str());

    // The repair removes the entry, tells alice, and lifts the quarantine.
    let repair = relayd(&["admin", "repair-store", "--data", region2_dir, "--json"]);
    assert!(repair.status.success(), "{}", stderr_of(&repair));
    let repairs: Value = serde_json::from_slice(&repair.stdout).expect("one JSON object");
    let repaired = &repairs["repairs"][0];
    assert_eq!(repaired["device"], bob_device.as_str());
    assert_eq!(
        repaired["removed_senders_told"][0]["sender"],
        format!("{alice_id}/1").as_str()
    );
    assert_eq!(repaired["quarantine_lifted"], true);
    let again = relayd(&["admin", "check-store", "--data", region2_dir]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("the store reads well"));

    // Everything flows again: "three" leaves alice's outbox, bob gets "two" and "three", and
    // alice learns that "one" never reached bob.
    let _devnet = Devnet::start(2, &data);
    let flushed = alice.ok(&["sync"]);
    assert!(
        events(&flushed, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent"),
        "{flushed:?}"
    );
    let mut heard_expired = !events(&flushed, "expired").is_empty();
    let received = bob.ok(&["sync"]);
    let texts: Vec<&str> = events(&received, "message")
        .iter()
        .filter_map(|message| message["text"].as_str())
        .collect();
    assert_eq!(texts, vec!["two", "three"]);
    eventually(DEADLINE, "alice hears that one expired", || {
        let synced = alice.ok(&["sync"]);
        heard_expired |= !events(&synced, "expired").is_empty();
        heard_expired.then_some(())
    });
}
