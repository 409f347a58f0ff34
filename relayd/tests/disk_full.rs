//! A region's disk fills up, as found by trying real devnets: region 2's data folder is a small
//! tmpfs that a filler file fills. A send to bob (homed in region 2) is then never
//! acknowledged: region 2 answers "storage unavailable", the message stays pending in alice's
//! outbox, and region 2's process stays up. Once the filler is deleted the pending message is
//! acknowledged and bob receives everything, once and in order: nothing acknowledged is lost.
//!
//! Mounting needs root (CI runs as root). Where it is not permitted the test says why and
//! passes only if the refusal is a permission error.

mod support;

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually, json_lines};

/// The tmpfs under region 2's data folder: room for the store, then for the filler.
const MOUNT_OPTIONS: &std::ffi::CStr = c"size=32m,mode=0700";
/// Chunks the filler is written in, largest first, until the filesystem is full.
const FILLER_CHUNK_BYTES: [usize; 3] = [1024 * 1024, 64 * 1024, 4 * 1024];
/// Bytes of each text sent on the full disk (the client's limit is 32 KiB): each needs new
/// pages in region 2's store, so the store's free pages run out after a few.
const TEXT_BYTES: usize = 30_000;
/// Most sends tried on the full disk before one must stay pending.
const SENDS_ON_A_FULL_DISK_MAX: usize = 40;

/// Unmounts the tmpfs when dropped (after the devnet, which is declared after it).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(error) = rustix::mount::unmount(&self.0, UnmountFlags::empty()) {
            eprintln!("unmounting {}: {error}; detaching it", self.0.display());
            let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> usize {
    let mut file = File::create(path).expect("the filler file");
    let mut written = 0;
    for chunk_bytes in FILLER_CHUNK_BYTES {
        let chunk = vec![0xf1; chunk_bytes];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => written += chunk_bytes,
                Err(error) if error.kind() == ErrorKind::StorageFull => break,
                Err(error) => panic!("writing the filler: {error}"),
            }
        }
    }
    // What a partial write left over is on the disk too; the file stays as it is.
    let _ = file.flush();
    written
}

/// A text of [`TEXT_BYTES`] that starts with `label`.
fn text(label: &str) -> String {
    let mut text = format!("{label} ");
    while text.len() < TEXT_BYTES {
        text.push_str("the quick brown fox jumps over the lazy dog ");
    }
    text.truncate(TEXT_BYTES);
    text
}

#[test]
fn a_full_disk_keeps_a_send_pending_until_space_is_freed_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("devnet");
    let region_data = data.join("region-2");
    std::fs::create_dir_all(&region_data).expect("region 2's data folder");
    let _mounted = match rustix::mount::mount(
        "tmpfs",
        &region_data,
        "tmpfs",
        MountFlags::empty(),
        MOUNT_OPTIONS,
    ) {
        Ok(()) => Mounted(region_data.clone()),
        Err(error) => {
            assert!(
                error == Errno::PERM || error == Errno::ACCESS,
                "mounting a tmpfs failed for another reason than permission: {error}"
            );
            eprintln!("skipped: mounting a tmpfs is not permitted here ({error}); needs root");
            return;
        }
    };
    let devnet = Devnet::start(2, &data);
    let region2_pid = u64::from(devnet.region(2).service_pid);
    let alice = Person::new(dir.path(), "alice");
    let bob = Person::new(dir.path(), "bob");
    alice.register(&devnet, "127.0.1.10");
    bob.register(&devnet, "127.0.2.10");
    let mut sent = vec!["before".to_owned()];
    let lines = alice.ok(&["send", "bob", "before"]);
    assert!(
        events(&lines, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent")
    );

    // Region 2's filesystem fills up.
    let filler = region_data.join("filler");
    let filled = fill(&filler);
    eprintln!("the filler took {filled} bytes");

    // Sends to bob need space in region 2. The store may still fit a few in pages it freed
    // earlier (those are acknowledged, as they should be); then one stays pending.
    let mut pending = None;
    for index in 0..SENDS_ON_A_FULL_DISK_MAX {
        let label = format!("full-{index}");
        let attempt = alice.run(&["send", "bob", &text(&label)]);
        assert!(attempt.status.success(), "relay send exits cleanly");
        let lines = json_lines(&attempt.stdout);
        if events(&lines, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent")
        {
            sent.push(label);
            continue;
        }
        let still = events(&lines, "still_pending");
        assert_eq!(still.len(), 1, "an unsent message stays pending: {lines:?}");
        let reason = still[0]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("storage"),
            "the region said its storage is unavailable: {reason}"
        );
        pending = Some(label);
        break;
    }
    let pending = pending
        .unwrap_or_else(|| panic!("{SENDS_ON_A_FULL_DISK_MAX} sends all fit on the full disk"));
    sent.push(pending);
    let unsynced = alice.ok(&["sync"]);
    assert_eq!(
        events(&unsynced, "synced")[0]["pending"],
        1,
        "still pending while the disk is full"
    );

    // Space comes back: the outbox delivers the pending message, without a region restart.
    std::fs::remove_file(&filler).expect("delete the filler");
    eventually(DEADLINE, "the pending message is acknowledged", || {
        let synced = alice.ok(&["sync"]);
        (events(&synced, "synced")[0]["pending"] == 0).then_some(())
    });
    let after = "after the disk was freed".to_owned();
    alice.ok(&["send", "bob", &after]);
    sent.push(after);

    // bob receives everything, once and in order, with gapless chat sequence numbers.
    let received = bob.ok(&["sync"]);
    let messages = events(&received, "message");
    let labels: Vec<String> = messages
        .iter()
        .map(|m| {
            let text = m["text"].as_str().unwrap_or_default();
            text.split(' ').next().unwrap_or_default().to_owned()
        })
        .collect();
    let expected: Vec<String> = sent
        .iter()
        .map(|label| label.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(labels, expected);
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["chat_seq"].as_u64().expect("chat_seq"))
        .collect();
    assert_eq!(seqs, (1..=sent.len() as u64).collect::<Vec<_>>());

    // Region 2 never went down: the same process served throughout.
    assert!(
        Path::new(&format!("/proc/{region2_pid}")).exists(),
        "region 2's process ({region2_pid}) is gone"
    );
    drop(devnet);
}
