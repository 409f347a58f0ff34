//! `relayd bench messages` (opaque and E2EE devices), `relayd bench connections`,
//! `relayd bench sync`, `relayd bench presence`, `relayd bench blobs` (both routes) and
//! `relayd bench storage --standby` as a user runs them, in their short versions
//! on this debug build (`--quick --allow-debug`): every row and ceiling is there with non-zero
//! figures, every message acknowledged ✓ was delivered once (to every member device of a W3
//! group), every idle device connected and left, every presence change reached every watcher.
//! Nothing here asserts a speed: a debug build on a shared machine says nothing about one.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use serde_json::Value;

/// Generous: the short run takes about 20 s; the machines are shared and noisy.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// Runs `relayd <args>` and returns its standard output as JSON, failing the test if it does
/// not finish within [`RUN_DEADLINE`] or exits unsuccessfully.
fn run_json(args: &[&str]) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relayd"))
        .args(args)
        .env("RELAY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("relayd bench starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (sender, output) = channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let read = stdout.read_to_string(&mut text);
        let _ = sender.send(read.map(|_| text));
    });
    let Ok(text) = output.recv_timeout(RUN_DEADLINE) else {
        stop(&mut child);
        panic!("relayd {args:?} did not finish within {RUN_DEADLINE:?}");
    };
    let text = text.expect("stdout is text");
    let status = child.wait().expect("relayd bench exits");
    assert!(status.success(), "relayd {args:?} failed: {status}");
    serde_json::from_str(text.trim())
        .unwrap_or_else(|error| panic!("one JSON object expected, got {text:?}: {error}"))
}

/// Stops the benchmark by its own pid only: it stops its devnet on SIGTERM.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn number(value: &Value, field: &str) -> f64 {
    value[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {value:#}"))
}

fn positive(value: &Value, field: &str) {
    let number = number(value, field);
    assert!(number > 0.0, "{field} is {number} in {value:#}");
}

/// A CPU time (or a rate over one) is reported: `/proc` counts CPU in 10 ms ticks, and a short
/// row on a fast machine may cost a process less than one, so zero is a valid reading.
fn reported(value: &Value, field: &str) {
    let number = number(value, field);
    assert!(number >= 0.0, "{field} is {number} in {value:#}");
}

#[test]
fn the_message_benchmark_reports_every_row_and_loses_nothing() {
    let report = run_json(&[
        "bench",
        "messages",
        "--quick",
        "--allow-debug",
        "--json",
        "--senders",
        "4",
        // Small groups: W3's 100 and 1,024 members would add minutes on a debug build.
        "--group-members",
        "5,9",
    ]);
    assert_eq!(report["build"], "debug");
    assert_eq!(report["mode"], "opaque");
    assert_eq!(report["senders"], 4);
    positive(&report, "envelope_bytes");
    every_row_and_ceiling_with_nothing_lost(&report);
    every_group_row_delivered_to_every_member(&report);
}

/// W3: a closed-loop row per group size, then the first size at 50 %; every group message ✓
/// reached every member device but the sender's, once.
fn every_group_row_delivered_to_every_member(report: &Value) {
    let rows = report["groups"].as_array().expect("the W3 rows");
    let shape: Vec<(&str, u64, u64)> = rows
        .iter()
        .map(|row| {
            (
                row["workload"].as_str().expect("a workload name"),
                row["members"].as_u64().expect("members"),
                row["receiving_devices"]
                    .as_u64()
                    .expect("receiving devices"),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [("W3 max", 5, 4), ("W3 max", 9, 8), ("W3 at 50%", 5, 4)]
    );
    for row in rows {
        for field in [
            "sent",
            "delivered_in_window",
            "delivered_per_second",
            "messages_per_second",
            "share_of_one_to_one",
            "envelope_bytes",
        ] {
            positive(row, field);
        }
        reported(row, "server_cpu_seconds");
        let receiving = row["receiving_devices"]
            .as_u64()
            .expect("receiving devices");
        let sent = row["sent"].as_u64().expect("sent");
        assert_eq!(
            row["delivered"].as_u64(),
            Some(sent * receiving),
            "every ✓ delivered to every member device: {row:#}"
        );
        assert!(
            row["receipts_settled_after_ms"].is_u64(),
            "the sender got a delivered receipt for every delivery: {row:#}"
        );
        assert_eq!(row["duplicates"], 0, "{row:#}");
        for latency in ["ack", "send_to_deliver"] {
            positive(&row[latency], "samples");
            positive(&row[latency], "p50_ms");
        }
    }
    // A larger group's envelope lists more devices.
    assert!(number(&rows[1], "envelope_bytes") > number(&rows[0], "envelope_bytes"));
    positive(&rows[2], "offered_per_second");
}

/// The checks both modes share: the three W1 rows with every ✓ delivered once and non-zero
/// figures, the backlog of the quick run delivered whole, every ceiling measured.
fn every_row_and_ceiling_with_nothing_lost(report: &Value) {
    let rows = report["rows"].as_array().expect("rows");
    let workloads: Vec<&str> = rows
        .iter()
        .map(|row| row["workload"].as_str().expect("a workload name"))
        .collect();
    assert_eq!(workloads, ["W1 max", "W1 at 50%", "W1 two regions"]);
    for row in rows {
        for field in [
            "sent",
            "delivered",
            "delivered_in_window",
            "delivered_per_second",
        ] {
            positive(row, field);
        }
        reported(row, "server_cpu_seconds");
        reported(row, "delivered_per_server_cpu_second");
        assert_eq!(row["sent"], row["delivered"], "every ✓ delivered: {row:#}");
        assert_eq!(row["duplicates"], 0, "{row:#}");
        for latency in ["ack", "send_to_deliver"] {
            positive(&row[latency], "samples");
            positive(&row[latency], "p50_ms");
            assert!(
                number(&row[latency], "p999_ms") >= number(&row[latency], "p50_ms"),
                "{row:#}"
            );
        }
    }
    positive(&rows[1], "offered_per_second");
    positive(&rows[2], "share_of_one_region");

    let backlog = &report["backlog"];
    assert_eq!(backlog["messages"], 300);
    assert_eq!(backlog["delivered"], backlog["messages"], "{backlog:#}");
    for field in [
        "store_seconds",
        "stored_per_second",
        "drain_seconds",
        "drained_per_second",
    ] {
        positive(backlog, field);
    }

    let ceilings = &report["ceilings"];
    positive(&ceilings["quic"], "per_second");
    positive(&ceilings["quic"]["latency"], "samples");
    positive(&ceilings["redb"], "per_second");
    positive(&ceilings["redb"], "fsync_per_second");
    positive(&ceilings["olm"], "encrypt_per_second");
    positive(&ceilings["olm"], "decrypt_per_second");
}

#[test]
fn the_message_benchmark_runs_end_to_end_encrypted_through_the_sdk() {
    // Short: two senders, half-second rows.
    let report = run_json(&[
        "bench",
        "messages",
        "--quick",
        "--allow-debug",
        "--json",
        "--mode",
        "e2ee",
        "--senders",
        "2",
        "--seconds",
        "0.5",
    ]);
    assert_eq!(report["mode"], "e2ee");
    assert_eq!(report["senders"], 2);
    // W3 measures the servers' fan-out with opaque devices only.
    assert_eq!(report["groups"].as_array().map(Vec::len), Some(0));
    // An Olm ciphertext of the text and its routing: more than the text itself.
    assert!(
        number(&report, "envelope_bytes") > number(&report, "payload_bytes"),
        "{report:#}"
    );
    every_row_and_ceiling_with_nothing_lost(&report);
    for row in report["rows"].as_array().expect("rows") {
        // The devices' Olm and SQLite work is this process's, and is reported.
        reported(row, "bench_cpu_seconds");
        assert!(row["connections_lost"].is_u64(), "{row:#}");
    }
}

#[test]
fn the_connection_benchmark_connects_every_device_and_reads_the_edge() {
    let report = run_json(&[
        "bench",
        "connections",
        "--quick",
        "--allow-debug",
        "--json",
        "--devices",
        "100",
    ]);
    assert_eq!(report["devices"], 100);
    for field in [
        "edge_rss_before_bytes",
        "edge_rss_connected_bytes",
        "edge_rss_after_bytes",
        "connect_seconds",
        "connections_per_second",
    ] {
        positive(&report, field);
    }
    reported(&report, "edge_cpu_seconds_connecting");
    assert_eq!(report["connect_latency"]["samples"], 100);
    let summary = report["verdict"]["summary"].as_str().expect("a verdict");
    assert!(summary.contains("per idle connection"), "{summary}");
    // The ceiling: the same devices on a bare QUIC server of its own process, a full handshake
    // each, then each resuming with the ticket its first login left it.
    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["devices"], 100);
    for field in ["rss_before_bytes", "rss_connected_bytes", "rss_after_bytes"] {
        positive(ceiling, field);
    }
    for wave in ["first", "again"] {
        positive(&ceiling[wave], "connections_per_second");
        reported(&ceiling[wave], "server_cpu_seconds");
        assert_eq!(ceiling[wave]["latency"]["samples"], 100, "{ceiling:#}");
    }
    assert_eq!(ceiling["first"]["certificates_verified"], 100);
    assert_eq!(ceiling["again"]["certificates_verified"], 0);
}

#[test]
fn the_sync_benchmark_links_a_laptop_by_snapshot_and_by_sync_only() {
    let report = run_json(&[
        "bench",
        "sync",
        "--quick",
        "--allow-debug",
        "--json",
        "--messages",
        "1200",
        "--compare-messages",
        "600",
    ]);
    let history = report["history_written"]
        .as_str()
        .expect("how the history came");
    assert!(history.contains("not sent through the relay"), "{history}");
    let bootstrap = &report["bootstrap"];
    assert_eq!(bootstrap["path"], "snapshot");
    assert_eq!(bootstrap["messages"], 1200);
    for field in [
        "usable_seconds",
        "converged_seconds",
        "approve_seconds",
        "blob_bytes",
        "sync_bytes_to_laptop",
        "automerge_saved_bytes",
        "bytes_ratio",
    ] {
        positive(bootstrap, field);
    }
    let bytes = |link: &Value, field: &str| number(link, field) as u64;
    assert_eq!(
        bytes(bootstrap, "total_bytes"),
        bytes(bootstrap, "blob_bytes")
            + bytes(bootstrap, "sync_bytes_to_laptop")
            + bytes(bootstrap, "sync_bytes_from_laptop")
    );
    // The sealed snapshot holds every document automerge saved, and a little more.
    assert!(bytes(bootstrap, "blob_bytes") > bytes(bootstrap, "automerge_saved_bytes"));
    assert!(number(bootstrap, "usable_seconds") <= number(bootstrap, "converged_seconds"));
    let ceilings = &report["ceilings"];
    assert_eq!(
        ceilings["documents"], 2,
        "1,200 messages in epochs of 1,000"
    );
    for field in [
        "automerge_saved_bytes",
        "automerge_save_ms",
        "automerge_load_ms",
        "raw_quic_upload_ms",
        "raw_quic_download_ms",
    ] {
        positive(ceilings, field);
    }

    let comparison = report["comparison"].as_array().expect("the comparison");
    assert_eq!(comparison.len(), 2);
    let (snapshot, sync_only) = (&comparison[0], &comparison[1]);
    assert_eq!(
        (&snapshot["path"], &sync_only["path"]),
        (&"snapshot".into(), &"sync only".into())
    );
    for link in comparison {
        assert_eq!(link["messages"], 600);
        positive(link, "converged_seconds");
        positive(link, "total_bytes");
    }
    assert_eq!(sync_only["blob_bytes"], 0);
    // Without a snapshot the sync messages carry the whole history, not a catch-up.
    assert!(bytes(sync_only, "sync_bytes_to_laptop") > bytes(snapshot, "sync_bytes_to_laptop"));

    let remote = &report["remote_operation"];
    assert_eq!(remote["epochs"], 2);
    assert_eq!(remote["operations"], 21);
    positive(remote, "apply_ms");
    positive(remote, "bytes");
}

#[test]
fn the_presence_benchmark_tells_every_watcher_every_change_and_delivers_typing() {
    let (watchers, accounts, cycles, typists) = (20u64, 3u64, 2u64, 10u64);
    let report = run_json(&[
        "bench",
        "presence",
        "--quick",
        "--allow-debug",
        "--json",
        "--watchers",
        &watchers.to_string(),
        "--accounts",
        &accounts.to_string(),
        "--cycles",
        &cycles.to_string(),
        "--typing-senders",
        &typists.to_string(),
        "--seconds",
        "2",
    ]);
    let setup = &report["watch_setup"];
    assert_eq!(setup["watches"], watchers * accounts);
    assert_eq!(setup["first_states"], watchers * accounts, "{setup:#}");
    positive(setup, "watches_per_second");
    reported(&setup["server_cpu"], "seconds");
    let rows = report["fan_out"].as_array().expect("fan-out rows");
    assert_eq!(rows.len(), 2, "every account at once, then one at a time");
    for (row, together) in rows.iter().zip([accounts, 1]) {
        assert_eq!(row["together"], together);
        // Every connect and leave of every account reached every watcher, each once, and
        // every watcher ends seeing every account offline.
        let expected = accounts * cycles * 2 * watchers;
        assert_eq!(row["expected"], expected);
        assert_eq!(row["delivered"], expected, "{row:#}");
        for field in [
            "missing",
            "unmatched",
            "wrong_final_states",
            "waves_timed_out",
        ] {
            assert_eq!(row[field], 0, "{field} in {row:#}");
        }
        positive(row, "delivered_per_second");
        assert_eq!(row["change_to_watcher"]["samples"], expected);
        reported(row, "delivered_per_server_cpu_second");
    }
    let typing = &report["typing"];
    // Paced at the edge's sustained rate: nothing is throttled, every notice arrives.
    assert_eq!(typing["throttled"], 0, "{typing:#}");
    positive(typing, "sent");
    assert_eq!(typing["delivered"], typing["sent"], "{typing:#}");
    assert_eq!(typing["unmatched"], 0);
    assert_eq!(
        report["typing_malformed"], 0,
        "every typing notice names its device"
    );
    positive(typing, "delivered_per_second");
    positive(&report["quic_ceiling"], "per_second");
}

#[test]
fn the_push_benchmark_delivers_every_wake_and_its_ceiling() {
    let report = run_json(&[
        "bench",
        "push",
        "--json",
        "--pushes",
        "200",
        "--concurrency",
        "16",
    ]);
    assert_eq!(report["pushes"], 200);
    assert_eq!(report["concurrency"], 16);
    positive(&report, "body_bytes");
    positive(&report, "pushes_per_second");
    positive(&report, "baseline_posts_per_second");
    positive(&report, "share_of_baseline");
}

#[test]
fn the_directory_benchmark_replicates_every_account_and_group_and_its_ceilings() {
    let report = run_json(&[
        "bench",
        "directory",
        "--json",
        "--accounts",
        "3000",
        "--groups",
        "40",
        "--members",
        "20",
    ]);
    assert_eq!(report["accounts"], 3000);
    assert_eq!(report["groups"], 40);
    assert_eq!(report["members_per_group"], 20);
    positive(&report, "groups_replicated_per_second");
    positive(&report, "groups_read_per_second");
    positive(&report, "groups_apply_per_second");
    positive(&report, "groups_share_of_ceiling");
    // Pages of up to 1,024 accounts: three at least.
    assert!(number(&report, "pages") >= 3.0, "{report:#}");
    positive(&report, "replicated_per_second");
    positive(&report, "read_per_second");
    positive(&report, "apply_per_second");
    positive(&report, "share_of_ceiling");
    positive(&report, "fsync_per_second");
}

#[test]
fn the_home_move_benchmark_moves_every_queued_message_and_its_ceilings() {
    let report = run_json(&["bench", "home-move", "--json", "--messages", "600"]);
    assert_eq!(report["messages"], 600);
    // Both devices' queues, and each message's log entry once.
    assert_eq!(report["queue_entries"], 1200, "{report:#}");
    assert_eq!(report["log_entries"], 600, "{report:#}");
    assert!(number(&report, "parts") >= 2.0, "{report:#}");
    positive(&report, "moved_per_second");
    positive(&report, "export_per_second");
    positive(&report, "apply_per_second");
    positive(&report, "share_of_ceiling");
    positive(&report, "fsync_per_second");
    reported(&report, "held_ms");
}

#[test]
fn the_blob_benchmark_moves_a_blob_both_ways_on_both_routes() {
    let report = run_json(&["bench", "blobs", "--json", "--quick", "--allow-debug"]);
    assert_eq!(report["rounds"], 1);
    assert!(
        number(&report, "sealed_bytes") > number(&report, "blob_bytes"),
        "{report:#}"
    );
    for route in [&report, &report["through_edge"]] {
        for direction in ["upload", "download"] {
            let measured = &route[direction];
            positive(measured, "raw_mb_per_second");
            positive(measured, "blob_mb_per_second");
            positive(measured, "share_of_raw");
            reported(measured, "device_cpu_seconds");
        }
    }
    let ceilings = &report["ceilings"];
    for rates in ["seal_mb_per_second", "open_mb_per_second"] {
        for format in ["format 1", "format 2"] {
            positive(&ceilings[rates], format);
        }
    }
    positive(ceilings, "unit_files_mb_per_second");
}

#[test]
fn a_debug_build_is_refused_without_allow_debug() {
    let output = Command::new(env!("CARGO_BIN_EXE_relayd"))
        .args(["bench", "messages", "--quick"])
        .stdin(Stdio::null())
        .output()
        .expect("relayd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("debug build") && stderr.contains("cargo run --release"),
        "{stderr}"
    );
}

#[test]
fn the_storage_benchmark_reports_the_cost_of_a_standby() {
    let report = run_json(&[
        "bench",
        "storage",
        "--json",
        "--seconds",
        "0.3",
        "--writers",
        "1,10",
        "--standby",
    ]);
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    for row in rows {
        positive(row, "layer_per_second");
        let cell = &row["with_standby"];
        positive(cell, "per_second");
        positive(cell, "commit_p50_ms");
        positive(cell, "average_batch");
    }
    positive(&report, "fsync_per_second_start");
}
