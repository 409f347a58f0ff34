//! Helpers of the history journeys: a chat's history as `relay history` shows it, linking a
//! device with `relay link` and `relay link-accept`, filling a long history through the client
//! library, syncing devices until they converge, and scanning files for a text.

use std::path::Path;
use std::time::{Duration, Instant};

use relay_client::{Device, Mode, OpenOptions};

use super::{DEADLINE, Devnet, Person, eventually};

/// One message of `relay history`, as compared between devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub text: Option<String>,
    pub edited: bool,
    pub deleted: bool,
    pub reactions: Vec<(String, String)>,
}

/// The history of `person`'s chat with `peer`, in order.
pub fn history(person: &Person, peer: &str) -> Vec<Entry> {
    person
        .ok(&["history", peer])
        .iter()
        .filter(|line| line["event"] == "history")
        .map(|line| Entry {
            id: line["id"].as_str().expect("id").to_owned(),
            text: line["text"].as_str().map(str::to_owned),
            edited: line["edited"] == true,
            deleted: line["deleted"] == true,
            reactions: line["reactions"]
                .as_array()
                .expect("reactions")
                .iter()
                .map(|reaction| {
                    (
                        reaction["from"].as_str().unwrap_or_default().to_owned(),
                        reaction["reaction"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// The first 8 hex digits of the id of the message of `entries` whose text is `text`.
pub fn id_of(entries: &[Entry], text: &str) -> String {
    entries
        .iter()
        .find(|entry| entry.text.as_deref() == Some(text))
        .unwrap_or_else(|| panic!("no message {text:?} in {entries:?}"))
        .id[..8]
        .to_owned()
}

/// `person` sends `text` to `peer` with `relay send`, which must reach ✓ (sent); returns the
/// command's notes (stderr).
pub fn send(person: &Person, peer: &str, text: &str) -> String {
    let output = person.run(&["send", peer, text]);
    assert!(output.status.success(), "send {text:?} failed");
    let lines = super::json_lines(&output.stdout);
    assert!(
        lines
            .iter()
            .any(|line| line["event"] == "tick" && line["tick"] == "sent"),
        "{text:?} did not reach sent: {lines:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Links a new device of `existing`'s account in `new` (binding `bind`) with `relay link` on
/// `existing` and `relay link-accept` on `new`; both must end well.
pub fn link(devnet: &Devnet, existing: &Person, new: &Person, bind: &str) {
    let mut linking = existing.spawn(&["link", "--timeout", "120"]);
    let pairing = linking.wait_for(DEADLINE, |line| line["event"] == "pairing_code");
    let code = pairing["code"].as_str().expect("code").to_owned();
    let mut accepting = new.spawn(&[
        "link-accept",
        &code,
        "--locator",
        &devnet.locator(),
        "--bind",
        bind,
        "--ca",
        &devnet.ca(),
    ]);
    accepting.wait_for(DEADLINE, |line| line["event"] == "linked");
    assert!(accepting.child.wait().expect("link-accept ends").success());
    assert!(linking.child.wait().expect("link ends").success());
}

/// Sends `texts` from `person` to `peer` through the client library, all in flight at once (a
/// `relay send` process per message would take minutes), until every one reached its region
/// or `deadline` passed.
pub fn send_many(person: &Person, peer: &str, texts: &[String], deadline: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let options = OpenOptions {
            mode: Mode::Live,
            ..OpenOptions::default()
        };
        let (device, events) = Device::open(&person.data, options).expect("opens");
        // Nobody reads the events here: a device whose events receiver is gone stops keeping
        // them (one held and never read would fill its channel and stall the device).
        drop(events);
        let started = Instant::now();
        for text in texts {
            device.send(peer, text).await.expect("queued");
        }
        while device.pending_count().await.expect("the outbox") > 0 {
            assert!(started.elapsed() < deadline, "the messages were not sent");
            device.flush(Duration::from_secs(5)).await.expect("flush");
        }
        device.close().await.expect("the device closes");
    });
}

/// Runs `relay sync` on every device of `devices`, round after round, until `done` holds for
/// what `look` then reads from them, or `deadline` passes; returns what `look` read last.
pub fn sync_until<T>(
    devices: &[&Person],
    deadline: Duration,
    what: &str,
    look: impl Fn() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    eventually(deadline, what, || {
        for device in devices {
            device.ok(&["sync"]);
        }
        let seen = look();
        done(&seen).then_some(seen)
    })
}

/// Every file under `root` whose bytes hold `needle`.
pub fn files_holding(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read a folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|window| window == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}
