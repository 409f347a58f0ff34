//! The locator, checked only through `dig` (as hickory's conformance suite does): the answer
//! depends on the address the question comes from.

mod support;

use std::process::Command;

use support::Devnet;

fn dig(locator: &str, bind: &str, args: &[&str]) -> String {
    let (ip, port) = locator.rsplit_once(':').expect("ip:port");
    let output = Command::new("dig")
        .args([
            "-b",
            bind,
            &format!("@{ip}"),
            "-p",
            port,
            "+time=5",
            "+tries=3",
        ])
        .args(args)
        .output()
        .expect("dig is installed (bind9-dnsutils; .ci/run installs it)");
    assert!(
        output.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn dig_gets_the_edge_of_the_askers_region() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let locator = devnet.locator();
    let edge_ip = |k: u32| devnet.region(k).edge.ip().to_string();
    let edge_port = |k: u32| devnet.region(k).edge.port().to_string();

    // A records: region by source address.
    assert_eq!(
        dig(&locator, "127.0.1.10", &["+short", "edge.relay.test"]).trim(),
        edge_ip(1)
    );
    assert_eq!(
        dig(&locator, "127.0.2.10", &["+short", "edge.relay.test"]).trim(),
        edge_ip(2)
    );

    // SRV gives the port, with the target's address in the additional section.
    let srv = dig(
        &locator,
        "127.0.2.77",
        &["_relay._udp.edge.relay.test", "SRV"],
    );
    assert!(srv.contains("status: NOERROR"), "{srv}");
    assert!(
        srv.contains(&format!(" {} edge-r2-1.relay.test.", edge_port(2))),
        "{srv}"
    );
    assert!(srv.contains(&edge_ip(2)), "{srv}");
    assert!(srv.contains(" aa"), "authoritative answer expected: {srv}");

    // EDNS client subnet wins over the source address.
    let ecs = dig(
        &locator,
        "127.0.1.10",
        &["+short", "+subnet=127.0.2.0/24", "edge.relay.test"],
    );
    assert_eq!(ecs.trim(), edge_ip(2));

    // Names that do not exist, and names outside the zone.
    let missing = dig(&locator, "127.0.1.10", &["nothing.relay.test"]);
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    let outside = dig(&locator, "127.0.1.10", &["example.com"]);
    assert!(outside.contains("status: REFUSED"), "{outside}");
}
