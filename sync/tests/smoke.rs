//! A first look: two devices append, edit, and converge.

mod common;

use common::*;
use relay_sync::Replica;

#[test]
fn two_devices_converge() {
    let mut replicas = vec![Replica::new(own(1), 11), Replica::new(own(2), 22)];
    let texts: Vec<String> = (1..=5).map(text_of).collect();
    for (index, text) in texts.iter().enumerate() {
        let seq = index as u64 + 1;
        replicas[0]
            .append(CHAT, &message(seq, own(1), text))
            .expect("append");
    }
    let at = replicas[0].tick(5_000);
    replicas[0].edit(CHAT, 2, "edited", at).expect("edit");
    let exchange = exchange_all(&mut replicas, None);
    println!("{exchange:?}");
    assert_eq!(replicas[0].view(CHAT), replicas[1].view(CHAT));
    let at = replicas[1].tick(6_000);
    replicas[1].delete(CHAT, 3, at).expect("delete");
    let exchange = exchange_all(&mut replicas, None);
    println!("{exchange:?}");
    assert_eq!(replicas[0].view(CHAT), replicas[1].view(CHAT));
    println!("{:#?}", replicas[0].view(CHAT).messages[2]);
    println!("{:?}", replicas[0].epochs(CHAT));
}
