//! Journey 21: files in messages, through real `relayd devnet` processes. alice (region 1)
//! sends bob (region 2) a 20 MB file with the client SDK, on a devnet whose regions serve no
//! media endpoint, so the file's bytes go through the edges (the route of a device that cannot
//! reach a region's media endpoint; `blobs.rs` takes the direct one); her edge is killed
//! mid-upload, after the region committed some of it, and the upload resumes from there; the message carrying the
//! file's key reaches bob, whose `relay download` (the real binary) checks and opens it byte for
//! byte. A file to a group reaches a member in the other region the same way. A deletion for
//! everyone takes the file's key with it; bad input is refused plainly and loses nothing.

mod support;

use std::path::{Path, PathBuf};

use relay_client::{
    BlobProgress, BlobSource, Device, Environment, FileDescription, MessageState, Mode,
    OpenOptions, Overrides, Tick, register_in,
};
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually, send_signal};

/// The file of issue 14's journey: 20 MB.
const FILE_BYTES: usize = 20 * 1000 * 1000;
/// Units region 1 must have committed before the edge is killed, so a resumption from 0 would
/// show.
const UNITS_BEFORE_KILL: usize = 3;

/// Bytes no file holds by chance: a xorshift stream from `seed`.
fn file_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// How many files are under `folder` (the region's committed units).
fn files_under(folder: &Path) -> usize {
    let mut count = 0;
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                count += 1;
            }
        }
    }
    count
}

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

/// Syncs `person` until a message with a file arrives (of a group when `group` is set);
/// returns that event.
fn file_message(person: &Person, group: Option<u64>) -> Value {
    let kind = if group.is_some() {
        "group_message"
    } else {
        "message"
    };
    eventually(DEADLINE, "the message with the file arrives", || {
        let lines = person.ok(&["sync"]);
        events(&lines, kind)
            .into_iter()
            .find(|line| !line["file"].is_null())
            .cloned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_file_survives_a_dropped_upload_and_opens_byte_for_byte_for_the_recipients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let devnet = Devnet::start_with(2, &root.join("devnet"), &["--no-media-endpoints"]);
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.2.10");
    let carol = Person::new(root, "carol");
    carol.register(&devnet, "127.0.2.11");

    // alice, on the SDK: registered, then open live.
    let overrides = Overrides {
        locator: Some(devnet.ready.locator),
        bind_ip: Some(devnet.region(1).client_bind),
        ca_path: Some(devnet.ready.ca.clone()),
        ..Overrides::default()
    };
    let alice_data = root.join("alice");
    register_in(
        &Environment::default(),
        &alice_data,
        "alice",
        overrides,
        "",
        &mut |_| {},
    )
    .await
    .expect("alice registers");
    let (alice, _events) = Device::open(
        &alice_data,
        OpenOptions {
            mode: Mode::Live,
            ..OpenOptions::default()
        },
    )
    .expect("alice's device opens");

    // A caption too long and a peer name that cannot be are refused before any upload.
    let blob_folder = devnet.data.join("region-1").join("blobs");
    let photo = file_bytes(FILE_BYTES, 0x9E37_79B9_7F4A_7C15);
    let description = FileDescription {
        file_name: "holiday.jpg".into(),
        ..FileDescription::default()
    };
    let too_long = "x".repeat(relay_client::limits::TEXT_BYTES_MAX + 1);
    let refused = alice
        .send_file(
            "bob",
            BlobSource::Bytes(b"tiny"),
            &description,
            &too_long,
            &mut |_| {},
        )
        .await
        .expect_err("a caption over the limit");
    assert!(refused.to_string().contains("limit"), "{refused}");
    assert!(
        alice
            .send_file(
                "no such/name",
                BlobSource::Bytes(b"tiny"),
                &description,
                "",
                &mut |_| {}
            )
            .await
            .is_err()
    );
    assert_eq!(files_under(&blob_folder), 0, "nothing was uploaded");

    // The upload, with alice's edge killed once region 1 committed a few units.
    let edge_pid = devnet.region(1).edge_pid;
    let mut killed = false;
    let mut resumed_from = Vec::new();
    let mut progress = |report: BlobProgress| {
        if let Some(offset) = report.resumed_from {
            resumed_from.push(offset);
        }
        if !killed
            && files_under(&blob_folder) >= UNITS_BEFORE_KILL
            && report.done_bytes < report.total_bytes
        {
            send_signal(edge_pid, "KILL");
            killed = true;
        }
    };
    let id = alice
        .send_file(
            "bob",
            BlobSource::Bytes(&photo),
            &description,
            "the holiday",
            &mut progress,
        )
        .await
        .expect("the file is sent despite the edge's death");
    assert!(killed, "the edge was killed mid-upload");
    let first_resume = *resumed_from.first().expect("the upload resumed");
    assert!(
        first_resume >= UNITS_BEFORE_KILL as u64 * relay_proto::limits::BLOB_COMMIT_UNIT_BYTES,
        "resumed from byte {first_resume}, not from what the region committed"
    );
    // The message carrying the file leaves alice's outbox (✓) before her device closes.
    let mut sent = false;
    for _ in 0..(DEADLINE.as_millis() / 100) {
        if let Ok(MessageState::Ticked(tick)) = alice.message_state(id).await
            && tick != Tick::Pending
        {
            sent = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(sent, "the message carrying the file was not sent");
    alice.close().await.expect("alice closes");

    // bob's device shows the file with its caption, and `relay download` opens it.
    let message = file_message(&bob, None);
    assert_eq!(message["id"], id.to_string());
    assert_eq!(message["text"], "the holiday");
    assert_eq!(message["file"]["name"], "holiday.jpg");
    assert_eq!(message["file"]["media_type"], "image/jpeg");
    assert_eq!(message["file"]["bytes"], FILE_BYTES as u64);
    let out: PathBuf = root.join("bob-holiday.jpg");
    let id_text = id.to_string();
    let written = bob.ok(&["download", &id_text[..8], out.to_str().expect("utf-8 path")]);
    assert_eq!(
        events(&written, "file_written")[0]["bytes"],
        FILE_BYTES as u64
    );
    assert!(
        std::fs::read(&out).expect("the file") == photo,
        "the download differs from what alice sent"
    );
    // An existing file is kept unless --force.
    let kept = bob.run(&["download", &id_text, out.to_str().expect("utf-8 path")]);
    assert!(!kept.status.success());
    assert!(
        String::from_utf8_lossy(&kept.stdout).contains("--force")
            || String::from_utf8_lossy(&kept.stderr).contains("--force")
    );
    // bob's history lists it.
    let history = bob.ok(&["history", "alice"]);
    assert!(
        events(&history, "history")
            .iter()
            .any(|entry| entry["id"] == id_text && entry["file"]["name"] == "holiday.jpg")
    );

    // A file to a group, from the `relay` binary: carol (region 2) downloads it.
    let alice = Person::new(root, "alice");
    let created = alice.ok(&["group", "create", "trip", "bob", "carol"]);
    let group = events(&created, "group")[0]["id"]
        .as_u64()
        .expect("group id");
    let plan_path = root.join("plan.pdf");
    let plan = file_bytes(300_000, 7);
    std::fs::write(&plan_path, &plan).expect("write plan");
    let sent = alice.ok(&[
        "send-group-file",
        &group.to_string(),
        plan_path.to_str().expect("utf-8 path"),
        "--caption",
        "the plan",
    ]);
    assert!(
        events(&sent, "group_tick")
            .iter()
            .any(|tick| tick["tick"] == "sent"),
        "{sent:?}"
    );
    let message = file_message(&carol, Some(group));
    assert_eq!(message["text"], "the plan");
    assert_eq!(message["file"]["media_type"], "application/pdf");
    let group_id = message["id"].as_str().expect("id").to_owned();
    let carol_out = root.join("carol-plan.pdf");
    carol.ok(&[
        "download",
        &group_id,
        carol_out.to_str().expect("utf-8 path"),
    ]);
    assert!(std::fs::read(&carol_out).expect("plan") == plan);

    // A deletion for everyone takes the key with it: bob can no longer download.
    alice.ok(&["delete", "--everyone", "bob", &id_text]);
    eventually(DEADLINE, "the deletion reaches bob", || {
        bob.ok(&["sync"]);
        let gone = bob.run(&["download", &id_text, "--force", out.to_str().expect("path")]);
        let said = String::from_utf8_lossy(&gone.stdout).to_string()
            + &String::from_utf8_lossy(&gone.stderr);
        (!gone.status.success() && said.contains("deleted for everyone")).then_some(())
    });

    // Bad input: an id that is not one, a file that does not exist.
    let bad = bob.run(&["download", "zz"]);
    assert!(!bad.status.success());
    let missing = alice.run(&["send-file", "bob", "/nonexistent/file.bin"]);
    assert!(!missing.status.success());
}
