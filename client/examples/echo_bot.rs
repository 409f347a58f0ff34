//! A bot on the client SDK: it stays connected and answers every message it receives with the
//! same text, reversed (after marking it read), until it has answered `--count` messages (or forever without one).
//!
//! ```sh
//! relay --data ./bot register bot --locator 127.0.0.1:5300 --ca ./devnet-data/ca.pem
//! cargo run -p relay-client --example echo_bot -- ./bot 3
//! ```
//!
//! It prints one line per answer, and exits once the answers it sent were delivered (✓✓).

use std::collections::HashSet;
use std::path::PathBuf;

use relay_client::{Device, Direction, Event, Mode, OpenOptions, Tick};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: echo_bot DATA_DIR [COUNT]";
    let data_dir = PathBuf::from(args.next().ok_or(usage)?);
    let count: Option<usize> = match args.next() {
        Some(count) => Some(count.parse().map_err(|_| usage)?),
        None => None,
    };

    let options = OpenOptions {
        mode: Mode::Live,
        ..OpenOptions::default()
    };
    let (device, mut events) = Device::open(&data_dir, options)?;
    println!("{} is listening", device.identity().name);

    // Answers sent and not yet delivered; the bot leaves once it answered `count` messages and
    // each answer reached its reader's device.
    let mut undelivered = HashSet::new();
    let mut answered = 0;
    while let Some(event) = events.next().await {
        match event {
            Event::Message {
                from,
                direction: Direction::In,
                text,
                ..
            } => {
                // Read (the sender sees ✓✓ turn to read), then answered.
                device.mark_read(&from).await?;
                let answer: String = text.chars().rev().collect();
                // Stored and queued at once: the device delivers it while the bot goes on.
                let id = device.send(&from, &answer).await?;
                println!("{from}: {text:?} -> {answer:?}");
                undelivered.insert(id.to_string());
                answered += 1;
            }
            Event::Tick {
                id,
                tick: Tick::Delivered | Tick::Read,
                ..
            } => {
                undelivered.remove(&id);
            }
            _ => {}
        }
        if count.is_some_and(|count| answered >= count) && undelivered.is_empty() {
            break;
        }
    }
    device.close().await?;
    println!("answered {answered}, all delivered");
    Ok(())
}
