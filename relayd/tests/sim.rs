//! `relayd sim` as a person runs it: a short sweep prints a clean JSON summary, a planted bug
//! is found and named with the seed that reproduces it, and bad flags get a clear error.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_relayd"))
        .arg("sim")
        .args(args)
        .output()
        .expect("relayd runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_short_sweep_reports_runs_faults_and_no_violation() {
    let (code, stdout, stderr) = sim(&["--seeds", "6", "--first-seed", "100", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(summary["runs"], 6);
    assert_eq!(summary["first_seed"], 100);
    assert!(summary["simulated_s"].as_f64().unwrap_or(0.0) > 10.0);
    let faults = summary["faults"].as_object().expect("faults by kind");
    assert!(
        faults
            .values()
            .filter_map(|count| count.as_u64())
            .sum::<u64>()
            > 0
    );
    assert_eq!(summary["violations"], serde_json::json!({}));
    assert_eq!(
        summary["messages"]["acknowledged"],
        summary["messages"]["received"]
    );
    // Half the runs have a group: these six seeds have some, whose texts reached members.
    let groups = &summary["groups"];
    let count = |field: &str| groups[field].as_u64().unwrap_or(0);
    assert!(count("runs") > 0, "{groups}");
    assert!(count("groups") >= count("runs"), "{groups}");
    assert!(
        count("messages_acknowledged") <= count("messages_planned"),
        "{groups}"
    );
    assert!(
        count("deliveries") >= count("messages_acknowledged"),
        "{groups}"
    );
    assert!(count("membership_changes") >= count("groups"), "{groups}");
}

#[test]
fn a_planted_bug_is_found_with_the_seed_that_reproduces_it() {
    let (code, stdout, stderr) = sim(&[
        "--seeds",
        "30",
        "--first-seed",
        "0",
        "--plant",
        "receipt-moves-backwards",
    ]);
    assert_eq!(code, 0, "found means success:\n{stdout}\n{stderr}");
    assert!(stdout.contains("I6 receipts move forward"), "{stdout}");
    assert!(
        stdout.contains("--seeds 1 --trace --plant receipt-moves-backwards"),
        "{stdout}"
    );
}

#[test]
fn bad_flags_get_a_clear_error() {
    let (code, _, stderr) = sim(&["--plant", "nope"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("choose one of skip-sender-seq-check"),
        "{stderr}"
    );
    let (code, _, stderr) = sim(&["--seeds", "0"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--seeds must be at least 1"), "{stderr}");
}
