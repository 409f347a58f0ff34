//! What a devnet says happened: one enum, printed by `relayd devnet` (one JSON object per line
//! with `--json`, a sentence otherwise) and read back through the same type by everything that
//! follows a devnet (`relayd chaos`, the drills, the tests).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One event of a running devnet. Serialized with its kind in an `event` field
/// (`{"event":"started","name":"region-1",…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DevnetEvent {
    /// A child printed its "listening on" line for the first time.
    Started {
        /// `region-<k>`, `edge-<k>` or `locator`.
        name: String,
        /// Its process id.
        pid: u32,
        /// The address it listens on.
        address: SocketAddr,
    },
    /// A child that died listens again, on the same address.
    Restarted {
        /// The child.
        name: String,
        /// Its new process id.
        pid: u32,
        /// The address it listens on.
        address: SocketAddr,
    },
    /// A child exited; the devnet restarts it.
    Exited {
        /// The child.
        name: String,
        /// How it ended, as the operating system says (`exit status: 1`, `signal: 9 (SIGKILL)`).
        status: String,
    },
    /// A restart of a child failed; the devnet tries again after `retry_in_ms`.
    RestartFailed {
        /// The child.
        name: String,
        /// Why: the child's own error, or the end of its log.
        error: String,
        /// When the next attempt comes, in ms.
        retry_in_ms: u64,
    },
    /// A region exited fenced (its standby took over): the devnet does not start it again.
    Fenced {
        /// The child.
        name: String,
    },
    /// Every child listens: what clients need.
    Ready(Ready),
    /// Every child stopped; the devnet exits.
    Stopped,
}

/// Where clients and operators find a ready devnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The locator's DNS address (UDP and TCP).
    pub locator: SocketAddr,
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The data folder.
    pub data: PathBuf,
    /// The locator's process id.
    pub locator_pid: u32,
    /// Each region, in order.
    pub regions: Vec<RegionReady>,
}

/// One region of a ready devnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionReady {
    /// The region number (from 1).
    pub region: u32,
    /// The region service's internal address.
    pub service: SocketAddr,
    /// The region service's process id.
    pub service_pid: u32,
    /// The region's edge (QUIC for devices).
    pub edge: SocketAddr,
    /// The edge's process id.
    pub edge_pid: u32,
    /// An address a client of this region can bind (the locator answers by source address).
    pub client_bind: IpAddr,
    /// The region's standby (`--standbys`): its replication address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<SocketAddr>,
    /// The standby's process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_pid: Option<u32>,
}

impl Ready {
    /// Region `region`'s entry.
    pub fn region(&self, region: u32) -> Option<&RegionReady> {
        self.regions.iter().find(|entry| entry.region == region)
    }
}

impl DevnetEvent {
    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        // Every field is a string, a number or a list of them: serializing cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|error| format!(r#"{{"event":"unprintable","error":"{error}"}}"#))
    }

    /// Reads one line of `relayd devnet --json` output; `None` for anything else (a log line).
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// The sentence `relayd devnet` prints without `--json` (the ready event is the guide).
impl fmt::Display for DevnetEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevnetEvent::Started { name, pid, address } => {
                write!(f, "{name} started (pid {pid}) listening on {address}")
            }
            DevnetEvent::Restarted { name, pid, address } => {
                write!(f, "{name} restarted (pid {pid}) listening on {address}")
            }
            DevnetEvent::Exited { name, status } => {
                write!(f, "{name} exited ({status}); restarting")
            }
            DevnetEvent::RestartFailed {
                name,
                error,
                retry_in_ms,
            } => write!(
                f,
                "{name} could not restart: {error}; retrying in {retry_in_ms} ms"
            ),
            DevnetEvent::Fenced { name } => {
                write!(
                    f,
                    "{name} was fenced (its standby took over); not restarting it"
                )
            }
            DevnetEvent::Ready(ready) => ready.fmt(f),
            DevnetEvent::Stopped => write!(f, "devnet stopped"),
        }
    }
}

/// The guide: how to find an edge and register people.
impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let locator = self.locator;
        writeln!(f)?;
        writeln!(
            f,
            "devnet ready: {} regions, data in {}",
            self.regions.len(),
            self.data.display()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Find your edge (the answer depends on the address you ask from):"
        )?;
        let first_bind = self
            .regions
            .first()
            .map_or_else(|| "127.0.1.10".to_owned(), |r| r.client_bind.to_string());
        writeln!(
            f,
            "  dig -b {first_bind} @{} -p {} edge.relay.test",
            locator.ip(),
            locator.port()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Register people (region k's clients bind an address in 127.0.k.0/24):"
        )?;
        let people = ["alice", "bob", "carol", "dave"];
        for (index, region) in self.regions.iter().enumerate() {
            let name = people.get(index).copied().unwrap_or("user");
            writeln!(
                f,
                "  relay --data ./{name} register {name} --locator {locator} --bind {} --ca {}",
                region.client_bind,
                self.ca.display()
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Then: relay --data ./alice send bob \"hi\" --wait   |   relay --data ./bob sync"
        )?;
        writeln!(f)?;
        write!(f, "Stop everything with Ctrl-C.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Ready {
        Ready {
            locator: "127.0.0.1:5300".parse().expect("address"),
            ca: PathBuf::from("/d/pki/ca.pem"),
            data: PathBuf::from("/d"),
            locator_pid: 7,
            regions: vec![RegionReady {
                standby: None,
                standby_pid: None,
                region: 1,
                service: "127.0.1.1:4000".parse().expect("address"),
                service_pid: 5,
                edge: "127.0.1.2:4001".parse().expect("address"),
                edge_pid: 6,
                client_bind: "127.0.1.10".parse().expect("address"),
            }],
        }
    }

    /// Every event survives its JSON line, which keeps the field names scripts rely on.
    #[test]
    fn events_round_trip_through_their_json_lines() {
        let events = [
            DevnetEvent::Started {
                name: "region-1".into(),
                pid: 10,
                address: "127.0.1.1:1".parse().expect("address"),
            },
            DevnetEvent::Exited {
                name: "edge-1".into(),
                status: "signal: 9 (SIGKILL)".into(),
            },
            DevnetEvent::RestartFailed {
                name: "edge-1".into(),
                error: "no".into(),
                retry_in_ms: 400,
            },
            DevnetEvent::Ready(ready()),
            DevnetEvent::Stopped,
        ];
        for event in events {
            let line = event.to_json();
            assert_eq!(DevnetEvent::parse(&line), Some(event), "{line}");
        }
        let line = DevnetEvent::Ready(ready()).to_json();
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["event"], "ready");
        assert_eq!(value["locator"], "127.0.0.1:5300");
        assert_eq!(value["regions"][0]["edge_pid"], 6);
        assert_eq!(DevnetEvent::parse("2026-12-03 INFO something"), None);
    }

    #[test]
    fn the_guide_names_the_register_lines() {
        let guide = DevnetEvent::Ready(ready()).to_string();
        assert!(guide.contains(
            "relay --data ./alice register alice --locator 127.0.0.1:5300 --bind 127.0.1.10 --ca /d/pki/ca.pem"
        ));
        assert!(guide.contains("dig -b 127.0.1.10 @127.0.0.1 -p 5300 edge.relay.test"));
    }
}
