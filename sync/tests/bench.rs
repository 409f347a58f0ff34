//! The bootstrap benchmark on 100,000 messages, printed for the report. Ignored by
//! default (it builds the history one operation at a time, which takes long unoptimised): run
//! `cargo test --release -p relay-sync --test bench -- --ignored --nocapture`.
//! It asserts what does not depend on the machine (sizes, convergence); times are printed.

use std::time::Instant;

use relay_sync::bench::{HistoryShape, measure_bootstrap};

#[test]
#[ignore = "100,000 messages: run in release with --ignored --nocapture"]
fn bootstrap_of_a_hundred_thousand_messages() {
    let measured = measure_bootstrap(HistoryShape::BOOTSTRAP, &mut Instant::now).expect("measured");
    println!("{measured:#?}");
    println!(
        "snapshot {} bytes = {:.3} x automerge's own save ({} bytes); load {:?} (automerge {:?}); \
         one remote edit (median of {}): {} bytes applied in {:?}, slowest {:?} (automerge \
         alone: {:?})",
        measured.snapshot_bytes,
        measured.size_ratio(),
        measured.automerge_saved_bytes,
        measured.snapshot_load,
        measured.automerge_load,
        measured.remote_operations,
        measured.remote_operation_bytes,
        measured.remote_operation_apply,
        measured.remote_operation_apply_max,
        measured.automerge_remote_operation_apply,
    );
    assert_eq!(
        measured.epochs as u64,
        HistoryShape::BOOTSTRAP
            .messages
            .div_ceil(relay_sync::limits::EPOCH_MESSAGES_MAX)
    );
    assert!(measured.size_ratio() < 2.0, "{measured:?}");
    assert!(measured.remote_operation_bytes > 0, "the edit travelled");
}
