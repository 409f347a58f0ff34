//! Presence and typing through the SDK against a real deployment in this process (relay_devnet's
//! testbed: two regions, edges, the locator, real stores, real QUIC): a watcher in the other
//! region sees comings and goings as each privacy setting allows, and a typing indicator
//! crosses regions and ends by itself.

use std::time::{Duration, Instant};

use relay_client::limits::REQUEST_TIMEOUT_MS;
use relay_client::{ClientError, Event, Events, PresenceVisibility, TypingSent, register};
use relay_devnet::testbed::Testbed;
use relay_proto::limits::TYPING_SHOWN_MS;

mod support;
use support::{live, overrides, register_all};

/// Generous: the machine is shared.
const DEADLINE: Duration = Duration::from_secs(120);

/// Reads `events` until one about presence or typing satisfies `wanted`, failing at the
/// deadline; returns it.
async fn next_matching(events: &mut Events, wanted: impl Fn(&Event) -> bool) -> Event {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            if wanted(&event) {
                return Some(event);
            }
            seen.push(event);
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the device stopped; it reported {seen:#?}"),
        Err(_) => panic!("not within the deadline; the device reported {seen:#?}"),
    }
}

fn presence_of<'a>(peer: &'a str, state: &'a str) -> impl Fn(&Event) -> bool + 'a {
    move |event| matches!(event, Event::Presence { peer: p, state: s, .. } if p == peer && s == state)
}

/// Whatever presence events wait now (none is awaited).
fn presence_waiting(events: &mut Events) -> Vec<Event> {
    std::iter::from_fn(|| events.try_next())
        .filter(|event| matches!(event, Event::Presence { .. }))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_watcher_in_the_other_region_sees_what_each_privacy_setting_allows() {
    let testbed = Testbed::start(2).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    register_all(
        &testbed,
        dir.path(),
        &[("alice", 1), ("bob", 2), ("carol", 1)],
    )
    .await;
    let (alice, _alice_events) = live(&dir.path().join("alice")).await;
    let (bob, mut bob_events) = live(&dir.path().join("bob")).await;
    let (carol, mut carol_events) = live(&dir.path().join("carol")).await;
    // Bob is alice's contact: they have a chat.
    alice.send("bob", "hi bob").await.expect("sent");
    alice.connect().await.expect("alice connects");

    // Everyone (the default): bob (region 2) and carol (region 1) see alice online.
    bob.watch_presence("alice").await.expect("bob watches");
    carol.watch_presence("alice").await.expect("carol watches");
    next_matching(&mut bob_events, presence_of("alice", "online")).await;
    next_matching(&mut carol_events, presence_of("alice", "online")).await;

    // Contacts: bob still sees her, carol is told it is hidden now.
    let setting = alice
        .set_presence_privacy(PresenceVisibility::Contacts)
        .await
        .expect("set");
    assert_eq!(
        (setting.visibility.as_str(), setting.contacts),
        ("contacts", 1)
    );
    next_matching(&mut carol_events, presence_of("alice", "hidden")).await;
    next_matching(&mut bob_events, presence_of("alice", "online")).await;

    // Alice leaves: bob sees when she was last seen; carol hears nothing of it.
    let before_leaving_ms = now_ms();
    alice.close().await.expect("alice closes");
    let offline = next_matching(&mut bob_events, presence_of("alice", "offline")).await;
    let Event::Presence {
        last_seen_ms: Some(last_seen_ms),
        ..
    } = offline
    else {
        panic!("no last-seen time in {offline:?}");
    };
    assert!(
        last_seen_ms >= before_leaving_ms,
        "{last_seen_ms} < {before_leaving_ms}"
    );
    assert_eq!(presence_waiting(&mut carol_events), Vec::new());

    // A watch begun now reads the last-seen time kept by alice's home region.
    let (dave_dir, dave_region) = (dir.path().join("dave"), 2);
    register(
        &dave_dir,
        "dave",
        overrides(&testbed, dave_region),
        "",
        &mut |_| {},
    )
    .await
    .expect("dave registers");
    let (dave, mut dave_events) = live(&dave_dir).await;
    dave.watch_presence("alice").await.expect("dave watches");
    let hidden = next_matching(
        &mut dave_events,
        |event| matches!(event, Event::Presence { peer, .. } if peer == "alice"),
    )
    .await;
    assert!(
        matches!(&hidden, Event::Presence { state, last_seen_ms: None, .. } if state == "hidden"),
        "dave is not alice's contact: {hidden:?}"
    );

    // Nobody: alice back online, and bob is told it is hidden now; her own other devices
    // would still see it (tested in the region's board).
    let (alice, _alice_events) = live(&dir.path().join("alice")).await;
    alice.connect().await.expect("alice connects");
    next_matching(&mut bob_events, presence_of("alice", "online")).await;
    alice
        .set_presence_privacy(PresenceVisibility::Nobody)
        .await
        .expect("set");
    next_matching(&mut bob_events, presence_of("alice", "hidden")).await;
    assert_eq!(
        alice.presence_privacy().await.expect("read").visibility,
        "nobody"
    );

    // Everyone again: all three watchers see her.
    alice
        .set_presence_privacy(PresenceVisibility::Everyone)
        .await
        .expect("set");
    next_matching(&mut bob_events, presence_of("alice", "online")).await;
    next_matching(&mut carol_events, presence_of("alice", "online")).await;
    next_matching(&mut dave_events, presence_of("alice", "online")).await;

    // After bob stops watching, alice's comings and goings are not pushed to him.
    bob.unwatch_presence("alice").await.expect("unwatch");
    alice.close().await.expect("alice closes");
    next_matching(&mut carol_events, presence_of("alice", "offline")).await;
    // Carol's update left alice's region after bob's unwatch reached it (the edge passes them
    // on in order), so bob's would have come by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(presence_waiting(&mut bob_events), Vec::new());

    // A name nobody has is refused plainly.
    let unknown = carol
        .watch_presence("nobody-here")
        .await
        .expect_err("no such account");
    assert!(
        matches!(unknown, ClientError::UnknownPeer(_)),
        "{unknown:?}"
    );

    for device in [bob, carol, dave] {
        device.close().await.expect("closes");
    }
    testbed.stop().await;
}

/// Alice's home moves while bob watches her: his watch moves with her (his edge places it at
/// her new home), so he is never told she left while she is still online, and he sees her
/// leave once she does.
#[tokio::test(flavor = "current_thread")]
async fn a_watch_follows_the_watched_account_to_its_new_home() {
    let testbed = Testbed::start(2).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    register_all(&testbed, dir.path(), &[("alice", 1), ("bob", 2)]).await;
    let (alice, _alice_events) = live(&dir.path().join("alice")).await;
    let (bob, mut bob_events) = live(&dir.path().join("bob")).await;
    alice.send("bob", "hi bob").await.expect("sent");
    alice.connect().await.expect("alice connects");
    bob.watch_presence("alice").await.expect("bob watches");
    next_matching(&mut bob_events, presence_of("alice", "online")).await;

    let moved = testbed
        .move_home("alice", 1, 2)
        .await
        .expect("alice moves to region 2");
    assert_eq!(moved.account.region, 2);
    // Her new home tells bob what it sees: online (his watch reached it).
    let mut seen = Vec::new();
    let online = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = bob_events.next().await {
            if presence_of("alice", "online")(&event) {
                return true;
            }
            seen.push(event);
        }
        false
    })
    .await;
    assert_eq!(online, Ok(true), "bob saw {seen:#?}");
    assert!(
        !seen.iter().any(presence_of("alice", "offline")),
        "bob was told alice left while she was online: {seen:#?}"
    );

    // She leaves: her new home tells bob.
    alice.close().await.expect("alice closes");
    next_matching(&mut bob_events, presence_of("alice", "offline")).await;
    bob.close().await.expect("bob closes");
    testbed.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_typing_indicator_crosses_regions_and_ends_by_itself() {
    let testbed = Testbed::start(2).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    register_all(&testbed, dir.path(), &[("alice", 1), ("bob", 2)]).await;
    let (alice, _alice_events) = live(&dir.path().join("alice")).await;
    let (bob, mut bob_events) = live(&dir.path().join("bob")).await;
    bob.connect().await.expect("bob connects");
    alice.connect().await.expect("alice connects");

    let typing = |wanted: bool| move |event: &Event| matches!(event, Event::Typing { peer, typing, .. } if peer == "alice" && *typing == wanted);
    // Bob's subscription at his region may not be up the instant he connects: alice says it
    // until bob hears it (each attempt is sent: they are further apart than the repeat window).
    let heard = tokio::time::timeout(DEADLINE, async {
        loop {
            // Taken before the indicator leaves: bob shows it from later on.
            let shown_since = Instant::now();
            let sent = alice.set_typing("bob", true).await.expect("typing");
            let wait = Duration::from_millis(REQUEST_TIMEOUT_MS);
            if let Ok(event) =
                tokio::time::timeout(wait, next_matching(&mut bob_events, typing(true))).await
            {
                return (sent, event, shown_since);
            }
        }
    })
    .await
    .expect("bob hears alice typing");
    let (sent, _, shown_since) = heard;
    assert_eq!(sent, TypingSent::Sent);
    // Alice says nothing more: bob's "typing…" ends by itself, not before TYPING_SHOWN_MS.
    next_matching(&mut bob_events, typing(false)).await;
    assert!(
        shown_since.elapsed()
            >= Duration::from_millis(TYPING_SHOWN_MS) - Duration::from_millis(100),
        "expired after {:?}",
        shown_since.elapsed()
    );

    // A stop ends it at once (at least, before any expiry could: the indicator is new).
    assert_eq!(
        alice.set_typing("bob", true).await.expect("typing"),
        TypingSent::Sent
    );
    next_matching(&mut bob_events, typing(true)).await;
    assert_eq!(
        alice.set_typing("bob", false).await.expect("stop"),
        TypingSent::Sent
    );
    next_matching(&mut bob_events, typing(false)).await;
    // A stop said twice is not sent twice.
    assert_eq!(
        alice.set_typing("bob", false).await.expect("stop"),
        TypingSent::Repeated
    );

    alice.close().await.expect("closes");
    bob.close().await.expect("closes");
    testbed.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_group_typing_indicator_reaches_the_members_in_both_regions_and_only_from_members() {
    let testbed = Testbed::start(2).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    register_all(
        &testbed,
        dir.path(),
        // Dave first: the lowest account, so an edge holding two indicators for one device
        // (kept by typing device, in account order) would hand over his first.
        &[("dave", 1), ("alice", 1), ("bob", 2), ("carol", 1)],
    )
    .await;
    let (alice, _alice_events) = live(&dir.path().join("alice")).await;
    let (bob, mut bob_events) = live(&dir.path().join("bob")).await;
    let (carol, mut carol_events) = live(&dir.path().join("carol")).await;
    let (dave, _dave_events) = live(&dir.path().join("dave")).await;
    let team = alice
        .create_group("team", &["bob", "carol"])
        .await
        .expect("group")
        .id;
    for device in [&alice, &bob, &carol, &dave] {
        device.connect().await.expect("connects");
    }
    // Bob and carol know dave first, from a message: a report about an account a device cannot
    // name yet waits for its lookup, so dave's indicator, were it passed on, would come late.
    for (name, events) in [("bob", &mut bob_events), ("carol", &mut carol_events)] {
        dave.send(name, "hi").await.expect("sent");
        next_matching(
            events,
            |event| matches!(event, Event::Message { from, .. } if from == "dave"),
        )
        .await;
    }

    let typing = |wanted: bool| {
        move |event: &Event| {
            matches!(event, Event::Typing { peer, typing, group, .. }
                if peer == "alice" && *typing == wanted && *group == Some(team))
        }
    };
    // The members' subscriptions may not be up the instant they connect: alice says it until
    // both hear it (each attempt is sent: they are further apart than the repeat window).
    let wait = Duration::from_millis(REQUEST_TIMEOUT_MS);
    tokio::time::timeout(DEADLINE, async {
        let (mut bob_heard, mut carol_heard) = (false, false);
        while !(bob_heard && carol_heard) {
            let sent = alice.set_group_typing(team, true).await.expect("typing");
            assert_eq!(sent, TypingSent::Sent);
            if !bob_heard {
                bob_heard =
                    tokio::time::timeout(wait, next_matching(&mut bob_events, typing(true)))
                        .await
                        .is_ok();
            }
            if !carol_heard {
                carol_heard =
                    tokio::time::timeout(wait, next_matching(&mut carol_events, typing(true)))
                        .await
                        .is_ok();
            }
        }
    })
    .await
    .expect("bob (region 2) and carol (region 1) hear alice typing in the group");
    // Alice says nothing more: her "typing…" ends by itself at both.
    for events in [&mut bob_events, &mut carol_events] {
        next_matching(events, typing(false)).await;
    }

    // Dave is no member: his indicator reaches nobody. Alice's next one, sent after it on the
    // same path, is the next typing either member sees.
    assert_eq!(
        dave.set_group_typing(team, true)
            .await
            .expect("the edge takes it"),
        TypingSent::Sent
    );
    assert_eq!(
        alice.set_group_typing(team, true).await.expect("typing"),
        TypingSent::Sent
    );
    for events in [&mut bob_events, &mut carol_events] {
        let next = next_matching(events, |event| matches!(event, Event::Typing { .. })).await;
        assert!(typing(true)(&next), "{next:?}");
    }
    assert!(
        alice.set_group_typing(0, true).await.is_err(),
        "there is no group 0"
    );

    for device in [alice, bob, carol, dave] {
        device.close().await.expect("closes");
    }
    testbed.stop().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
