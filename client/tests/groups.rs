//! Group messages through the SDK against a real deployment in this process (relay_devnet's
//! testbed: two regions, edges, the locator, real stores, real QUIC): members in both regions
//! decrypt every message of every sender, a removed member receives nothing sent after, and a
//! member added later decrypts from then on.

use std::time::Duration;

use relay_client::{Event, Events, Tick, register};
use relay_devnet::testbed::Testbed;

mod support;
use support::{live, overrides, register_all};

/// Generous: the machine is shared.
const DEADLINE: Duration = Duration::from_secs(120);

/// Reads `events` until `done` says so, failing at the deadline; returns what was read.
async fn until(events: &mut Events, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let finished = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            let finished = done(&event);
            seen.push(event);
            if finished {
                return true;
            }
        }
        false
    })
    .await;
    match finished {
        Ok(true) => seen,
        Ok(false) => panic!("the device stopped; it reported {seen:#?}"),
        Err(_) => panic!("not within the deadline; the device reported {seen:#?}"),
    }
}

fn group_text(event: &Event, wanted: &str) -> bool {
    matches!(event, Event::GroupMessage { text, undecryptable: None, .. } if text == wanted)
}

#[tokio::test(flavor = "current_thread")]
async fn members_in_both_regions_read_every_sender_and_a_removed_member_reads_nothing_after() {
    let testbed = Testbed::start(2).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let people = [
        ("alice", 1),
        ("bob", 2),
        ("carol", 1),
        ("dave", 2),
        ("erin", 1),
    ];
    register_all(&testbed, dir.path(), &people).await;
    let mut devices = Vec::new();
    for (name, _) in people {
        devices.push(live(&dir.path().join(name)).await);
    }
    let [alice, bob, carol, dave, erin] = &mut devices[..] else {
        unreachable!()
    };

    let group = alice
        .0
        .create_group("climbing", &["bob", "carol", "dave"])
        .await
        .expect("created");

    // The first message: the device learns the membership from the regions, claims keys,
    // shares its session and sends; every member decrypts, and ✓✓ follows every device.
    let first = alice
        .0
        .send_group(group.id, "hello all")
        .await
        .expect("sent");
    for (name, member) in [
        ("bob", &mut *bob),
        ("carol", &mut *carol),
        ("dave", &mut *dave),
    ] {
        let seen = until(&mut member.1, |event| group_text(event, "hello all")).await;
        assert!(
            seen.iter()
                .all(|event| !matches!(event, Event::Undecryptable { .. })),
            "{name}: {seen:?}"
        );
    }
    until(&mut alice.1, |event| {
        matches!(event, Event::GroupTick { id, tick: Tick::Delivered, .. } if *id == first.to_string())
    })
    .await;

    // Another member (in the other region) writes: everyone else reads it.
    bob.0
        .send_group(group.id, "hi from bob")
        .await
        .expect("sent");
    for member in [&mut *alice, &mut *carol, &mut *dave] {
        until(&mut member.1, |event| group_text(event, "hi from bob")).await;
    }

    // Dave is removed: the next message rotates alice's session and goes to bob and carol
    // only; dave's device is never given it.
    alice
        .0
        .remove_group_member(group.id, "dave")
        .await
        .expect("removed");
    alice
        .0
        .send_group(group.id, "dave is gone")
        .await
        .expect("sent");
    for member in [&mut *bob, &mut *carol] {
        until(&mut member.1, |event| group_text(event, "dave is gone")).await;
    }
    // Bob still holds the membership from before: the regions answer his next message with
    // the change (no region accepts it for dave once the removal was acknowledged), and his
    // device rotates its session and rebuilds the message for the members left. Its new key
    // follows the message, which the members keep until the key arrives.
    bob.0
        .send_group(group.id, "bob, after dave")
        .await
        .expect("sent");
    for member in [&mut *alice, &mut *carol] {
        until(&mut member.1, |event| group_text(event, "bob, after dave")).await;
    }

    // Erin joins: she reads what follows, and nothing sent before she joined.
    alice
        .0
        .add_group_members(group.id, &["erin"])
        .await
        .expect("added");
    alice
        .0
        .send_group(group.id, "welcome erin")
        .await
        .expect("sent");
    for member in [&mut *bob, &mut *carol, &mut *erin] {
        until(&mut member.1, |event| group_text(event, "welcome erin")).await;
    }
    let erin_history = erin.0.group_history(group.id, 100).await.expect("history");
    let texts: Vec<&str> = erin_history
        .iter()
        .filter_map(|event| match event {
            Event::GroupMessage { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["welcome erin"]);

    // Dave, synced after all of it, holds nothing sent after his removal.
    dave.0.sync().await.expect("dave syncs");
    let dave_history = dave.0.group_history(group.id, 100).await.expect("history");
    let texts: Vec<&str> = dave_history
        .iter()
        .filter_map(|event| match event {
            Event::GroupMessage { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["hello all", "hi from bob"], "{dave_history:#?}");

    // Alice's own history holds her messages, delivered.
    let alice_history = alice.0.group_history(group.id, 100).await.expect("history");
    assert!(alice_history.iter().any(|event| matches!(
        event,
        Event::GroupMessage { text, tick: Some(Tick::Delivered), .. } if text == "hello all"
    )));
}

/// The journey at size: 50 members homed in both regions. Every member device
/// decrypts; a removed member receives nothing sent after; a member's newly linked device
/// decrypts what follows.
#[tokio::test(flavor = "current_thread")]
async fn fifty_members_in_two_regions_and_a_newly_linked_device() {
    const MEMBERS: usize = 50;
    let testbed = Testbed::start(2).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let names: Vec<String> = (0..MEMBERS).map(|index| format!("m{index:02}")).collect();
    for (index, name) in names.iter().enumerate() {
        let region = 1 + (index % 2) as u32;
        register(
            &dir.path().join(name),
            name,
            overrides(&testbed, region),
            "",
            &mut |_| {},
        )
        .await
        .unwrap_or_else(|error| panic!("{name} registers: {error}"));
    }
    let mut devices = Vec::new();
    for name in &names {
        devices.push(live(&dir.path().join(name)).await);
    }
    let others: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let group = devices[0]
        .0
        .create_group("fifty", &others)
        .await
        .expect("created");
    assert_eq!(group.member_count as usize, MEMBERS);

    devices[0]
        .0
        .send_group(group.id, "hello fifty")
        .await
        .expect("sent");
    for (name, member) in names.iter().zip(devices.iter_mut()).skip(1) {
        let seen = until(&mut member.1, |event| group_text(event, "hello fifty")).await;
        assert!(
            seen.iter()
                .all(|event| !matches!(event, Event::Undecryptable { .. })),
            "{name}: {seen:?}"
        );
    }

    // The last member is removed: the next message reaches the 48 others only.
    let gone = MEMBERS - 1;
    devices[0]
        .0
        .remove_group_member(group.id, &names[gone])
        .await
        .expect("removed");
    devices[0]
        .0
        .send_group(group.id, "forty-nine left")
        .await
        .expect("sent");
    for member in devices.iter_mut().take(gone).skip(1) {
        until(&mut member.1, |event| group_text(event, "forty-nine left")).await;
    }

    // Member 1 links a laptop; the next message reaches it too.
    let laptop_dir = dir.path().join("m01-laptop");
    let region = 2;
    let pairing = devices[1].0.link().await.expect("pairing");
    let mut quiet = |_| {};
    let ask = relay_client::link::link_accept(
        &laptop_dir,
        &pairing.code,
        overrides(&testbed, region),
        &mut quiet,
    );
    let approve = async {
        for _ in 0..200 {
            match relay_client::flows::approve(
                &devices[1].0,
                Some(&pairing.code),
                relay_client::LinkHistory::default(),
                &mut |_| {},
            )
            .await
            {
                Ok(()) => return,
                Err(relay_client::ClientError::Invalid(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("approve: {error}"),
            }
        }
        panic!("the laptop never asked");
    };
    let (asked, ()) = tokio::join!(ask, approve);
    asked.expect("the laptop linked");
    let (laptop, mut laptop_events) = live(&laptop_dir).await;
    devices[0]
        .0
        .send_group(group.id, "hello laptop")
        .await
        .expect("sent");
    until(&mut laptop_events, |event| {
        group_text(event, "hello laptop")
    })
    .await;
    until(&mut devices[1].1, |event| group_text(event, "hello laptop")).await;

    // The removed member holds nothing sent after its removal; the laptop nothing before its
    // link.
    let texts = |events: Vec<Event>| -> Vec<String> {
        events
            .into_iter()
            .filter_map(|event| match event {
                Event::GroupMessage { text, .. } => Some(text),
                _ => None,
            })
            .collect()
    };
    devices[gone].0.sync().await.expect("syncs");
    assert_eq!(
        texts(
            devices[gone]
                .0
                .group_history(group.id, 100)
                .await
                .expect("history")
        ),
        ["hello fifty"]
    );
    assert_eq!(
        texts(laptop.group_history(group.id, 100).await.expect("history")),
        ["hello laptop"]
    );
}
