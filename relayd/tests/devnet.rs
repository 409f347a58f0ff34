//! The devnet as an operator meets it: a second devnet on a data folder in use is told so.

mod support;

use std::process::Command;

use support::{Devnet, relayd_bin};

#[test]
fn a_second_devnet_on_the_same_folder_says_another_devnet_uses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("devnet");
    let mut first = Devnet::start(1, &data);
    let second = Command::new(relayd_bin())
        .args(["devnet", "--regions", "1", "--data"])
        .arg(&data)
        .output()
        .expect("relayd runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second devnet must not start");
    assert!(
        stderr.contains("another devnet (pid") && stderr.contains("is using"),
        "{stderr}"
    );
    // The first one was not disturbed: it still stops cleanly.
    first.stop();
}
