//! Replays every committed fuzz corpus file, plus built-in seeds, through the fuzz entry points:
//! a crash the fuzzer found once stays fixed. `RELAY_FUZZ_WRITE_SEEDS=1 cargo test -p
//! relay-chaos --test fuzz_corpus` writes the seeds into the corpus folders, to start a fuzzer.

use std::path::{Path, PathBuf};

use prost::Message as _;
use relay_chaos::fuzz::TARGETS;
use relay_proto::encode_frame;
use relay_proto::wire::{self, client_request, region_request};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

fn envelope() -> wire::Envelope {
    wire::Envelope {
        chat: vec![1; 16],
        sender: wire::DeviceAddr {
            account: 1,
            device: 1,
        },
        client_message_id: vec![2; 16],
        sender_seq: 1,
        recipient_accounts: vec![2, 1],
        ciphertexts: vec![wire::DeviceCiphertext {
            recipient: wire::DeviceAddr {
                account: 2,
                device: 1,
            },
            message_type: 0,
            body: vec![3; 40],
        }],
        device_seq: 0,
        ..Default::default()
    }
}

/// Representative valid inputs for each target.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let client = |body| encode_frame(&wire::ClientRequest { body: Some(body) });
    let region = |body| encode_frame(&wire::RegionRequest { body: Some(body) });
    match target {
        "client_frames" => vec![
            client(client_request::Body::Send(envelope())),
            client(client_request::Body::Hello(wire::Hello {
                client_version: "relay 0.1".into(),
            })),
            client(client_request::Body::FetchQueue(wire::FetchAndAck {
                ack: Some(wire::AckQueue {
                    queue_seqs: vec![1, 2, 3],
                }),
                fetch: Some(wire::FetchQueue {
                    after_queue_seq: 3,
                    limit: 100,
                }),
            })),
        ],
        "region_frames" => vec![
            region(region_request::Body::Commit(wire::CommitEnvelope {
                envelope: envelope(),
                sender_region: 1,
                routed: vec![wire::RoutedHome {
                    account: 2,
                    region: 1,
                }],
            })),
            region(region_request::Body::AckMany(wire::AckMany {
                acks: vec![wire::ForDevice {
                    device: wire::DeviceAddr {
                        account: 2,
                        device: 1,
                    },
                    fetch: Some(wire::FetchAndAck {
                        ack: Some(wire::AckQueue {
                            queue_seqs: vec![1],
                        }),
                        fetch: None,
                    }),
                    ..wire::ForDevice::default()
                }],
            })),
            region(region_request::Body::Subscribe(wire::Subscribe {
                add: vec![wire::DeviceAddr {
                    account: 1,
                    device: 1,
                }],
                ..wire::Subscribe::default()
            })),
        ],
        "envelope" => vec![envelope().encode_to_vec()],
        "content" => {
            let text = relay_client::content::Content::text("hello", 1_700_000_000_000, 2)
                .expect("content");
            vec![text.to_bytes()]
        }
        "dns_answer" => vec![relay_client::discovery::build_query(7).expect("query")],
        "locator_query" => vec![relay_client::discovery::build_query(9).expect("query")],
        "region_config" => vec![include_bytes!("../../home-region/region.example.toml").to_vec()],
        "edge_config" => vec![include_bytes!("../../edge/edge.example.toml").to_vec()],
        "locator_config" => vec![include_bytes!("../../edge/locator.example.toml").to_vec()],
        // Mutations of the seed store: none (the store as written), a flipped byte in the
        // header and in the middle of the file, and a cut at the middle.
        "store_file" => {
            let middle = (relay_chaos::fuzz::seed_store().len() / 2) as u32;
            let mutation = |operation: u8, offset: u32, byte: u8| {
                let mut bytes = vec![operation];
                bytes.extend_from_slice(&offset.to_le_bytes());
                bytes.push(byte);
                bytes
            };
            vec![
                Vec::new(),
                mutation(1, 0, 0xff),
                mutation(1, middle, 0x01),
                mutation(2, middle, 0),
            ]
        }
        _ => Vec::new(),
    }
}

#[test]
fn every_corpus_file_and_seed_decodes_without_panicking() {
    let write = std::env::var_os("RELAY_FUZZ_WRITE_SEEDS").is_some();
    let mut replayed = 0;
    for &(name, target) in TARGETS {
        let folder = corpus_root().join(name);
        for (index, seed) in seeds(name).into_iter().enumerate() {
            target(&seed);
            replayed += 1;
            if write {
                std::fs::create_dir_all(&folder).expect("corpus folder");
                std::fs::write(folder.join(format!("seed-{index}")), &seed).expect("seed written");
            }
        }
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            target(&bytes);
            replayed += 1;
        }
    }
    assert!(
        replayed >= TARGETS.len(),
        "every target has at least one input"
    );
}

#[test]
fn every_target_has_seeds_and_a_fuzz_binary() {
    let fuzz_targets = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("fuzz_targets");
    for &(name, _) in TARGETS {
        assert!(!seeds(name).is_empty(), "{name} has seeds");
        assert!(
            fuzz_targets.join(format!("{name}.rs")).exists(),
            "{name} has a cargo fuzz target"
        );
    }
}
