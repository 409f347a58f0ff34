//! The whole relay in simulation: real regions, edges and clients over simulated QUIC and TLS,
//! in one thread, from one seed. Set `RELAY_SIM_SEED` to rerun a failing seed, and
//! `RELAY_SIM_TRACE=1` to print the trace of every run.

use std::time::{Duration, Instant};

use relay_chaos::faults::FaultKind;
use relay_chaos::history::What;
use relay_chaos::{Report, Simulation, seed_from_env};

/// Runs a simulation, reports it on stderr, and fails on a broken invariant.
fn run(simulation: &Simulation) -> Report {
    let started = Instant::now();
    let report = simulation.run().unwrap_or_else(|error| panic!("{error}"));
    eprintln!(
        "{report} ({:.2} s real; {} datagrams)",
        started.elapsed().as_secs_f64(),
        report.packets.datagrams
    );
    if std::env::var_os("RELAY_SIM_TRACE").is_some() {
        eprintln!("{}", report.trace_text());
    }
    report.assert_invariants();
    report
}

/// Store faults that are only failing disks: a commit fails with `probability`, stored or not.
fn disk_failures(seed: u64, probability: f64) -> fdb_layers::FaultConfig {
    fdb_layers::FaultConfig {
        seed,
        conflict_probability: 0.0,
        commit_unknown_result_probability: 0.0,
        slow_commit_probability: 0.0,
        slow_commit_ms: 0,
        io_error_probability: probability,
    }
}

/// Asserts that every planned message was acknowledged and received, by every client in time.
fn assert_complete(report: &Report, clients: usize) {
    let reproduce = format!("reproduce with seed={}", report.seed);
    assert_eq!(report.complete_clients(), clients, "{reproduce}");
    assert_eq!(report.acknowledged(), report.planned.len(), "{reproduce}");
    assert_eq!(report.received(), report.planned.len(), "{reproduce}");
}

#[test]
fn two_regions_deliver_every_message_once_in_order() {
    let report = run(&Simulation::new(seed_from_env(1)));
    assert_complete(&report, 4);
    assert_eq!(report.planned.len(), 40);
    assert!(
        report.elapsed < Duration::from_secs(60),
        "took {:?} of simulated time; reproduce with seed={}",
        report.elapsed,
        report.seed
    );
}

/// Every client links a second device through the real flow before anyone sends; the two
/// devices split the client's messages, and both edit and react while they send (the second
/// pausing its syncing for a while); every message still reaches both devices of its recipient
/// once and in order (I1–I6 per device), nothing is undecryptable on either device (I8), and
/// each second device's documents equal its first device's, message by message (I7).
#[test]
fn linked_second_devices_hold_the_same_documents() {
    let report = run(&Simulation::new(seed_from_env(3)).linked_percent(100));
    assert_complete(&report, 4);
    let reproduce = format!("reproduce with seed={}", report.seed);
    let linked = report
        .trace
        .iter()
        .filter(|event| matches!(event.what, What::Linked { .. }))
        .count();
    assert_eq!(linked, 4, "{reproduce}");
    // The second devices sent their share of the messages, and received every message meant
    // for their accounts (every client is linked here).
    let from_second = report
        .trace
        .iter()
        .filter(|event| matches!(event.what, What::Send { device: 1, .. }))
        .count();
    assert!(from_second > 0, "{reproduce}");
    assert!(from_second < report.planned.len(), "{reproduce}");
    assert_eq!(
        report.received_by_second_devices(),
        report.planned.len(),
        "{reproduce}"
    );
    // Both devices of every client recorded each of its chats, and the chats hold messages: I7
    // compared something.
    for device in [0, 1] {
        let docs: Vec<_> = report
            .docs
            .iter()
            .filter(|doc| doc.device == device)
            .collect();
        assert!(docs.len() >= 4, "device {device}: {docs:?}; {reproduce}");
        let messages: usize = docs.iter().map(|doc| doc.entries.len()).sum();
        assert!(messages >= report.planned.len(), "{reproduce}");
    }
    // Both devices changed messages (edits, reactions), and the documents I7 compared hold them.
    for device in [0, 1] {
        let changes = report
            .trace
            .iter()
            .filter(|event| matches!(event.what, What::Changed { device: d, .. } if d == device))
            .count();
        assert!(changes > 0, "device {device} changed nothing; {reproduce}");
    }
    let changed = report
        .docs
        .iter()
        .flat_map(|doc| &doc.entries)
        .filter(|entry| entry.edited || !entry.reactions.is_empty())
        .count();
    assert!(changed > 0, "{reproduce}");
}

/// An operator moves two accounts' homes while everyone sends: client 0 (region 1, the
/// directory writer) to region 2, and client 3 (region 2) to region 1. Every message still
/// arrives once and in order, with no chat number seen twice (I1–I8).
#[test]
fn accounts_moving_home_mid_run_lose_nothing() {
    let report = run(&Simulation::new(seed_from_env(4))
        .move_home(0, 2, Duration::from_millis(900))
        .move_home(3, 1, Duration::from_millis(1_700)));
    assert_complete(&report, 4);
    let moved: Vec<&str> = report
        .trace
        .iter()
        .filter_map(|event| match &event.what {
            What::FaultStarted { label, .. } if label.contains("home moves") => {
                Some(label.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(moved.len(), 2, "reproduce with seed={}", report.seed);
    assert!(
        moved.iter().all(|label| label.contains(": moved")),
        "{moved:?}; reproduce with seed={}",
        report.seed
    );
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let seed = seed_from_env(2);
    let simulation =
        Simulation::new(seed).crash_region(2, Duration::from_millis(1_200), Duration::from_secs(2));
    let first = run(&simulation);
    let second = run(&simulation);
    let (first_text, second_text) = (first.trace_text(), second.trace_text());
    if first_text != second_text {
        let line = first_text
            .lines()
            .zip(second_text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(first_text.lines().count().min(second_text.lines().count()));
        let from = |text: &str| {
            text.lines()
                .skip(line)
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "the traces differ from line {}:\n{}\nversus\n{}\nreproduce with seed={seed}",
            line + 1,
            from(&first_text),
            from(&second_text),
        );
    }
    assert_eq!(
        first.packets, second.packets,
        "the network carried different datagrams; reproduce with seed={seed}"
    );
    let other = run(&Simulation::new(seed + 1).crash_region(
        2,
        Duration::from_millis(1_200),
        Duration::from_secs(2),
    ));
    assert_ne!(other.trace_text(), first_text, "the seed changes the run");
}

#[test]
fn a_crashed_region_loses_no_acknowledged_message() {
    let first_seed = seed_from_env(3);
    for seed in first_seed..first_seed + 3 {
        // Region 1 is also the directory writer: registrations and lookups stall with it.
        let crash_at = Duration::from_millis(1_500);
        let down_for = Duration::from_secs(3);
        let report = run(&Simulation::new(seed)
            .regions(3)
            .crash_region(1, crash_at, down_for));
        assert_complete(&report, 6);
        let reproduce = format!("reproduce with seed={seed}");
        assert!(
            report.trace_text().contains("region 1 restarted"),
            "{reproduce}"
        );
        // Some message entered an outbox while the region was down and was acknowledged only
        // after it came back: the crash hit traffic in flight, and the retries carried it.
        let down = crash_at.as_millis() as u64..(crash_at + down_for).as_millis() as u64;
        let queued_while_down: Vec<_> = report
            .trace
            .iter()
            .filter_map(|event| match event.what {
                What::Queued { message } if down.contains(&event.at_ms) => Some(message),
                _ => None,
            })
            .collect();
        let carried_over = report.trace.iter().any(|event| match event.what {
            What::Acked { message } => {
                event.at_ms >= down.end && queued_while_down.contains(&message)
            }
            _ => false,
        });
        assert!(carried_over, "no send was caught by the crash; {reproduce}");
    }
}

#[test]
fn three_regions_survive_crashes_of_each_region_in_turn() {
    let seed = seed_from_env(40);
    let report = run(&Simulation::new(seed)
        .regions(3)
        .clients_per_region(3)
        .messages_per_client(20)
        .crash_region(1, Duration::from_secs(1), Duration::from_secs(2))
        .crash_region(2, Duration::from_secs(4), Duration::from_millis(500))
        .crash_region(3, Duration::from_secs(5), Duration::from_secs(1)));
    assert_complete(&report, 9);
}

#[test]
fn regions_whose_disks_fail_now_and_then_lose_nothing() {
    let seed = seed_from_env(60);
    // One commit in five fails as a failing disk would (stored or not): the region answers
    // "storage unavailable", the client keeps the message pending and retries.
    let report = run(&Simulation::new(seed).store_faults(disk_failures(seed, 0.2)));
    assert_complete(&report, 4);
    assert!(
        report.store_commits_failed > 0,
        "no commit failed; reproduce with seed={seed}"
    );
    eprintln!("{} store commits failed", report.store_commits_failed);
}

/// Every client links a second device and removes it at a drawn moment of the run: messages on
/// their way to the account meet the region's "mismatched devices" and reach the remaining
/// device, and a removed device receives nothing queued after its removal (checked with every
/// other invariant by `run`).
#[test]
fn removed_devices_get_nothing_more_and_the_first_devices_get_everything() {
    let report = run(&Simulation::new(seed_from_env(4))
        .linked_percent(100)
        .removed_percent(100));
    let reproduce = format!("reproduce with seed={}", report.seed);
    let removed = report
        .trace
        .iter()
        .filter(|event| matches!(event.what, What::Removed { .. }))
        .count();
    assert_eq!(removed, 4, "{reproduce}");
    assert_eq!(report.complete_clients(), 4, "{reproduce}");
    // Every acknowledged message reached its recipient's first device.
    assert_eq!(report.received(), report.acknowledged(), "{reproduce}");
}

/// Seed 58's swarm run restarts the app of a linked user after its devices last synced: the
/// restarted device knew nothing of the other's documents until its first sync said its heads
/// again (before, it never did, and its account never confirmed being in sync).
#[test]
fn a_restarted_device_learns_again_that_its_other_device_holds_its_documents() {
    let report = run(&Simulation::swarm(seed_from_env(58)));
    let unconfirmed = report
        .trace
        .iter()
        .filter(|event| matches!(event.what, What::SyncUnconfirmed { .. }))
        .count();
    assert_eq!(unconfirmed, 0, "reproduce with seed={}", report.seed);
}

/// Groups in a run: a group created with members in both regions, its members' texts, one
/// member removed and one added while texts fly; every group invariant is checked by `run`
/// (I1 for the members throughout, removal for the removed one, I3, I4, I6, I8, liveness).
#[test]
fn group_texts_reach_every_member_device_and_no_removed_member_reads_later_ones() {
    let report = run(&Simulation::new(seed_from_env(2))
        .clients_per_region(3)
        .linked_percent(50)
        .group_percent(100));
    let reproduce = format!("reproduce with seed={}", report.seed);
    assert!(!report.groups.is_empty(), "{reproduce}");
    assert_eq!(report.complete_clients(), 6, "{reproduce}");
    assert!(report.group_deliveries() > 0, "{reproduce}");
    // Every group was created, and each of its changes acknowledged.
    let changes: usize = report
        .groups
        .iter()
        .map(|group| {
            1 + usize::from(group.removal.is_some()) + usize::from(group.addition.is_some())
        })
        .sum();
    assert_eq!(report.group_changes(), changes, "{reproduce}");
}

/// An edge that throttles a connection to a burst of 3 requests: creating a group of five
/// looks up four names at once and, once created, names its five members again. Throttled
/// lookups failed the whole command, every time it was tried (seed 27 of the swarm sweep never
/// created its group); the client now retries a throttled lookup after the edge's hint.
#[test]
fn a_group_is_created_through_an_edge_that_throttles_lookups() {
    let limits = relay_edge::session::SessionLimits {
        requests_per_second: 6,
        requests_burst: 3,
        ..relay_edge::session::SessionLimits::default()
    };
    // The first seed whose plan has a group of five.
    let shape = relay_chaos::workload::WorkloadShape {
        regions: 2,
        clients_per_region: 3,
        messages_per_client: 10,
        pause_ms_max: 300,
        read_percent: 50,
        linked_percent: 0,
        removed_percent: 0,
        group_percent: 100,
    };
    let seed = (0..1_000)
        .find(|&seed| {
            relay_chaos::workload::Plan::draw(seed, shape)
                .groups
                .iter()
                .any(|group| group.members.len() == 5)
        })
        .expect("a plan with a group of five");
    let simulation = Simulation::new(seed_from_env(seed))
        .clients_per_region(3)
        .group_percent(100)
        .edge_limits(limits);
    let report = run(&simulation);
    let reproduce = format!("reproduce with seed={}", report.seed);
    let widest = report
        .groups
        .iter()
        .map(|group| group.members.len())
        .max()
        .unwrap_or(0);
    assert!(widest >= 5, "a group of {widest} members; {reproduce}");
    let created = report
        .trace
        .iter()
        .filter(|event| {
            matches!(
                event.what,
                What::GroupChanged {
                    change: relay_chaos::history::GroupChange::Create(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(created, report.groups.len(), "{reproduce}");
    assert_eq!(report.complete_clients(), 6, "{reproduce}");
}

/// Swarm seed 62: c1 sends to a group while a member homed in a third region is being added;
/// that region has none of c1's earlier numbers in the group's chat (they went to the regions of
/// the members then) and asked for 1; c1 renumbered its waiting entries down to 1 and 2, which
/// the other regions already held, and they refused it as a device whose state went back. Now a
/// group envelope names the previous number that must be stored first (`group_prev_seq`), a
/// region takes it once it holds that one, and a group chat is never renumbered.
#[test]
fn an_honest_group_sender_is_never_refused_as_rolled_back() {
    run(&Simulation::swarm(seed_from_env(62)));
}

/// Swarm seed 133: an account removes its second device while the network drops the answer;
/// the retried removal was refused ("the account has no device 2") and the run failed. Device
/// numbers are never reused, so a removal of a number the account gave out is now answered
/// with the device list, changing nothing.
#[test]
fn a_retried_device_removal_changes_nothing_and_fails_nothing() {
    run(&Simulation::swarm(seed_from_env(133)));
}

/// Swarm seed 35: c1's text to its group, sent while c1's removal was asked, is stored by one
/// region before the removal and refused by another after it. The edge answered the region's
/// `UnknownGroup` as `Unavailable`, so the sender retried it for ever; now the refusal reaches
/// the sender as it is, and the text fails there ("not a member").
#[test]
fn a_removed_members_racing_text_settles_at_its_sender() {
    let report = run(&Simulation::swarm(seed_from_env(35)));
    assert_eq!(
        report.group_stuck(),
        0,
        "reproduce with seed={}",
        report.seed
    );
}

/// Swarm seed 1215: c0's app was killed just after the region acknowledged two of its messages
/// and before it passed the "sent" ticks on; the reopened app had nothing left to send, so the
/// messages were delivered but never acknowledged to its user. An app shows what its store
/// says when it opens (`App::recall` reads each message it never heard about), as a person's
/// app does; events are not kept across a kill.
#[test]
fn an_app_killed_before_it_passed_a_tick_on_shows_it_when_it_opens() {
    run(&Simulation::swarm(seed_from_env(1215)));
}

/// Swarm seed 1783 with its home moves: an account moves into the region of its correspondent,
/// which numbers their chat for the correspondent in another order. Before views, messages that
/// region had stored reached the moved account's devices under its numbers, which they held
/// already for other messages (I2), and a linked device's history lost one of two messages
/// keyed by the same number (I7). The moved account now goes on with its own numbers there.
#[test]
fn an_account_moving_into_its_correspondents_region_keeps_its_numbers() {
    let simulation = Simulation::swarm(seed_from_env(1783)).with_home_moves();
    assert_moved_someone(&run(&simulation));
}

/// That the run moved an account's home.
fn assert_moved_someone(report: &Report) {
    assert!(
        report
            .faults
            .get(&FaultKind::HomeMove)
            .copied()
            .unwrap_or(0)
            > 0,
        "reproduce with seed={}",
        report.seed
    );
}

/// Swarm seed 2543 with its home moves: c2's envelope, sent just before its account moved, went
/// to a region that refused it `UnknownAccount` ("moved"), and the edge, which could not route
/// it anew in one round, passed the refusal on; the device took it for good and gave the
/// message up, though the old home had committed it (acknowledged later, stored with no chat
/// number: I2). The edge now routes an envelope again up to three rounds, and answers a refusal
/// it cannot route around `Unavailable`, which the device retries.
#[test]
fn an_envelope_refused_by_a_region_its_account_left_is_retried_not_given_up() {
    run(&Simulation::swarm(seed_from_env(2543)).with_home_moves());
}

/// Swarm seed 2642 with its home moves: the new home's storage failed the move's last part, so
/// it learned of the account from its directory replica, without the mark of when it arrived;
/// an envelope it had stored for the account before the move, sent again, was then not queued
/// for it (I1). The old home now sends a part refused for now again, and the activation in the
/// background until the new home takes it.
#[test]
fn a_move_whose_activation_failed_at_the_new_home_still_delivers_everything() {
    run(&Simulation::swarm(seed_from_env(2642)).with_home_moves());
}

/// Swarm seed 165 with its home moves: c1, a member of a group, moves to region 3,
/// which numbers the group's chat for the members homed there. Before group views, the
/// group's texts reached c1's devices under that region's numbers, which they held already
/// for other texts of the group (I2). The moved member now goes on with its own numbers there.
#[test]
fn a_group_member_moving_to_a_region_that_numbers_the_group_keeps_its_numbers() {
    let simulation = Simulation::swarm(seed_from_env(165)).with_home_moves();
    let report = run(&simulation);
    assert_moved_someone(&report);
    assert!(
        report.group_planned() > 0,
        "reproduce with seed={}",
        report.seed
    );
}

/// Swarm seed 514 with its home moves: c0's messages 7 and 8 to c1 were stored by c0's region
/// while c1 still lived in the other one, whose link to c0's edge was clogged, so c1's old home
/// never got them; c1 then moved into c0's region, where only c0's retries brought them to c1,
/// after its messages 9 and 10 (I3). An entry queued to a moved account now brings the sender's
/// earlier ones it was never shown, in order.
#[test]
fn a_moved_account_gets_its_correspondents_messages_in_order_whatever_the_retries() {
    run(&Simulation::swarm(seed_from_env(514)).with_home_moves());
}

/// Swarm seed 2319 with its home moves: a move failed, and the failing disk of the old home
/// refused to remove the move's away mark too, so the account was refused as moving until its
/// region restarted, which it never did: its client never finished. The region now tries the
/// removal again in the background.
#[test]
fn a_failed_move_whose_mark_the_disk_would_not_clear_lets_the_account_go_on() {
    run(&Simulation::swarm(seed_from_env(2319)).with_home_moves());
}

/// Swarm seed 2160 with its home moves: region 3 moved c6's account to region 2 while its disk
/// failed, so it could not write the account's new record there, and its directory replica
/// could not follow the writer either. An edge following the move asked region 3 where the
/// account lived, was told region 3, and c6's request failed "account 4 moved to region 2". A
/// region now answers a lookup of an account it moved away with the account's new home.
#[test]
fn an_account_moved_away_is_found_at_its_new_home_while_the_old_homes_disk_fails() {
    run(&Simulation::swarm(seed_from_env(2160)).with_home_moves());
}

/// Swarm seed 12030 with its home moves: c1's two devices each sent c0 a text while the
/// regions were apart, and the two regions' logs of the chat ordered them differently. c0 moved
/// to c1's region, then c1 to c0's old one, whose log still numbered the chat for c0: the
/// region adopted c1's old numbering only past its own last number, so c1's devices got each
/// other's texts under numbers they held for their own (I2). A log that already numbered the
/// chat now gives a moved-in account a view of its own, as for a peer homed there.
#[test]
fn an_account_moving_into_a_log_its_peer_left_keeps_its_own_numbers() {
    run(&Simulation::swarm(seed_from_env(12030)).with_home_moves());
}

/// Every region ships its commits to a standby of its own over the simulated network and
/// acknowledges only what the standby holds; a region crash (its standby then gets the groups
/// it missed, or a full copy) and a standby crash (its region's commits wait for it) lose
/// nothing, and at the end each copy is its region's store pair for pair (checked by `run`).
#[test]
fn regions_with_standbys_lose_nothing_and_their_copies_match_their_stores() {
    let seed = seed_from_env(70);
    let report = run(&Simulation::new(seed)
        .standbys()
        .crash_region(1, Duration::from_millis(1_500), Duration::from_secs(2))
        .crash_standby(2, Duration::from_millis(2_000), Duration::from_secs(1)));
    assert_complete(&report, 4);
    let reproduce = format!("reproduce with seed={seed}");
    assert_eq!(report.standby_versions.len(), 2, "{reproduce}");
    assert!(
        report.standby_versions.values().all(|&version| version > 0),
        "{:?}; {reproduce}",
        report.standby_versions
    );
    assert_eq!(
        report.faults.get(&FaultKind::StandbyCrash),
        Some(&1),
        "{reproduce}"
    );
    // Region 1's second start and region 2's standby's second start each began a session.
    eprintln!("{:?}", report.shipping);
    assert!(
        report.shipping.sessions >= 4,
        "{:?}; {reproduce}",
        report.shipping
    );
}

/// A commit the disk failed may still be on it, and is then on the region's store but was
/// never shipped: the standby refuses the next group, which does not follow its copy, and is
/// brought up to date by a full copy. Nothing acknowledged is lost, and the copies match.
#[test]
fn standbys_of_regions_whose_disks_fail_catch_up_and_match() {
    let seed = seed_from_env(80);
    let report = run(&Simulation::new(seed)
        .standbys()
        .store_faults(disk_failures(seed, 0.05)));
    assert_complete(&report, 4);
    assert!(
        report.store_commits_failed > 0,
        "no commit failed; reproduce with seed={seed}"
    );
    eprintln!("{:?}", report.shipping);
    assert!(
        report.shipping.full_copies > 2,
        "no full copy after a failed commit; {:?}; reproduce with seed={seed}",
        report.shipping
    );
}

/// Swarm seed 93 with standbys: a group text stored in one build at a region and built again at
/// a later index for a device the sender learned of late reached that device, after its account
/// moved into the region, in the first build, which it could not read (I8, I1). A moved member
/// now keeps the build it can read as its own copy.
#[test]
fn a_moved_member_reads_the_build_of_a_group_text_made_for_its_device() {
    run(&Simulation::swarm(seed_from_env(93))
        .with_standbys()
        .with_home_moves());
}

/// Swarm seed 17 with failovers: the old home of a moving account could not record the move in
/// its store (an injected disk failure) after the directory had moved the account, and went on
/// taking the account's sends; the device's numbers then split between its two homes and it
/// was refused as rolled back. From the flip on, the old home turns the account's requests
/// away, and records the move again until its store takes it.
#[test]
fn an_old_home_that_cannot_record_a_move_still_turns_the_account_away() {
    run(&Simulation::swarm(seed_from_env(17))
        .with_failovers()
        .with_home_moves());
}

/// Region 1 loses its standby for 4 s while everyone goes on reaching it: the standby takes
/// over when the lease expires, while the old primary still runs. What the old primary showed
/// its devices or acknowledged in that window must be on the standby's copy.
#[test]
fn a_primary_cut_off_from_its_standby_shows_nothing_the_standby_lacks() {
    for seed in [seed_from_env(91), 92, 94, 95] {
        let report = run(&Simulation::new(seed)
            .messages_per_client(20)
            .cut_off_standby(1, Duration::from_millis(2_500), Duration::from_secs(4)));
        assert_complete(&report, 4);
        let reproduce = format!("reproduce with seed={seed}");
        assert_eq!(report.promoted.get(&1), Some(&1), "{reproduce}");
    }
}

/// Region 1, the directory writer, hangs for 5 s while everyone sends: its standby takes over
/// once the lease expires, edges and region 2 follow it to the standby's host, and the old
/// primary, back, hears it was fenced and stops. Nothing acknowledged is lost (every invariant
/// is checked by `run`) and every client finishes.
#[test]
fn a_region_that_fails_over_to_its_standby_loses_nothing() {
    let seed = seed_from_env(90);
    let report = run(&Simulation::new(seed).messages_per_client(20).fail_over(
        1,
        Duration::from_millis(2_500),
        Duration::from_secs(5),
    ));
    assert_complete(&report, 4);
    let reproduce = format!("reproduce with seed={seed}");
    assert_eq!(report.promoted.get(&1), Some(&1), "{reproduce}");
    let text = report.trace_text();
    assert!(text.contains("took over as region 1"), "{reproduce}");
    assert!(text.contains("heard its standby took over"), "{reproduce}");
}
