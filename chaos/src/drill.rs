//! `relayd drill failover`: a region's primary fails under load, its standby takes over, and
//! the drill measures how long sends went unacknowledged (the recovery time, RTO) and checks
//! that nothing acknowledged was lost.
//!
//! The drill starts a devnet with a standby per region (`relayd devnet --standbys`) and, per
//! region, a sender device and a receiver device of the client SDK: each sender sends to the
//! next region's receiver (with one region, to its own), one message after the other, each
//! waiting for its ✓ (`Tick::Sent`: stored by every destination region, and so by its standby).
//! A third of the way through the load, the failing region's primary fails:
//! - `kill`: SIGKILL, and the devnet is told not to start it again (a `.down` file: the
//!   machine is gone);
//! - `pause`: SIGSTOP (the machine hangs); after the load it is resumed with SIGCONT and must be
//!   fenced (it dials its standby, hears it was promoted, and exits);
//! - `partition`: every packet from and to the primary's address dropped (nftables, inside the
//!   network namespace `relayd drill` runs in; the machine is cut off but runs on); after the
//!   load the partition heals and the old primary must be fenced;
//! - `planned`: the operator's planned failover (`relayd admin failover`, through
//!   `home_region::handover`): the region holds requests, ships everything, its standby takes
//!   over at once and the old primary stops. No send may fail: every sender's count of failed
//!   attempts (`Device::send_attempts_failed`) must stay 0.
//!
//! RTO is, per sender, the longest it waited for a ✓ after the failure (its sends are
//! sequential: a message waits from the previous ✓, or the failure if that came later, to its
//! own), so how long it could not get a message acknowledged; the report gives the largest. Then every receiver syncs until every acknowledged message arrived, and the
//! drill counts lost (acknowledged, never received), duplicated (received twice), out of order
//! (a sender's messages received in another order) and undecryptable messages.
//!

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use relay_client::{Device, Event, Events, Mode, OpenOptions, Overrides, Tick};
use relay_devnet::process::{DevnetProcess, DevnetSettings};
use relay_devnet::{DOWN_SUFFIX, region_ip};
use rustix::process::Signal;
use serde::Serialize;

use crate::real::{ProgressSink, RealChaosError};

/// How the primary fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillKind {
    /// SIGKILL, never started again.
    Kill,
    /// SIGSTOP, resumed after the load (and fenced).
    Pause,
    /// Every packet from and to the primary dropped, healed after the load (and fenced).
    Partition,
    /// The operator's planned failover: a handover to the standby.
    Planned,
}

impl std::str::FromStr for DrillKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim() {
            "kill" => Ok(DrillKind::Kill),
            "pause" => Ok(DrillKind::Pause),
            "planned" => Ok(DrillKind::Planned),
            "partition" => Ok(DrillKind::Partition),
            other => Err(format!(
                "{other:?} is not a drill kind (kill, pause, partition, planned)"
            )),
        }
    }
}

/// The recovery-time target of an unplanned failover on loopback, lease included.
pub const RTO_TARGET_MS: u64 = 5_000;

/// Shortest and longest load of a drill.
const LOAD_SECONDS_MIN: f64 = 3.0;
const LOAD_SECONDS_MAX: f64 = 600.0;
/// How long the receivers may take to receive everything after the load.
const CATCH_UP_TIMEOUT_MS: u64 = 90_000;
/// How long a send may wait for its ✓ before the drill gives up on the region.
const ACK_TIMEOUT_MS: u64 = 60_000;
/// How long a resumed old primary may take to be fenced.
const FENCE_TIMEOUT_MS: u64 = 30_000;
/// Pause between two syncs of a receiver catching up.
const SYNC_PAUSE_MS: u64 = 200;

/// One drill's settings.
#[derive(Clone)]
pub struct DrillConfig {
    /// The region whose primary fails.
    pub region: u32,
    /// How it fails.
    pub kind: DrillKind,
    /// Regions of the devnet.
    pub regions: u32,
    /// Seconds of load (the failure comes at a third of it).
    pub load_seconds: f64,
    /// Folder for the devnet and the devices (kept, for a look at the logs).
    pub data: PathBuf,
    /// The `relayd` executable.
    pub relayd: PathBuf,
    /// Progress lines.
    pub progress: ProgressSink,
}

/// What a drill measured.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The region whose primary failed.
    pub region: u32,
    /// How it failed.
    pub kind: DrillKind,
    /// Regions of the devnet.
    pub regions: u32,
    /// When the primary failed, in ms after the load began.
    pub failed_at_ms: u64,
    /// The longest a sender waited for a ✓ after the failure, in ms; `None` when a sender never
    /// got one after it.
    pub rto_ms: Option<u64>,
    /// Each sender's wait, by name.
    pub rto_ms_by_sender: BTreeMap<String, u64>,
    /// The target (loopback, lease included).
    pub rto_target_ms: u64,
    /// Messages sent, and acknowledged (✓).
    pub sent: u64,
    /// Messages acknowledged.
    pub acknowledged: u64,
    /// Acknowledged messages no receiver got.
    pub lost: u64,
    /// Messages a receiver got more than once.
    pub duplicated: u64,
    /// Messages received before an earlier one of the same sender.
    pub out_of_order: u64,
    /// Messages that could not be decrypted.
    pub undecryptable: u64,
    /// The standby's address is the region's in the peers file now.
    pub standby_serves: bool,
    /// (pause, planned) The old primary was fenced and stopped.
    pub old_primary_fenced: Option<bool>,
    /// Send attempts the senders made that failed and were retried (a planned failover must
    /// cause none).
    pub send_attempts_failed: u64,
    /// (planned) How long the region held requests, as it reported (ms).
    pub held_ms: Option<u64>,
    /// Nothing lost, duplicated, reordered or undecryptable, and every sender recovered.
    pub pass: bool,
}

impl DrillReport {
    /// The report as a person reads it.
    pub fn table(&self) -> String {
        let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
        let rto = self.rto_ms.map_or_else(
            || "never".to_owned(),
            |ms| format!("{:.2} s", ms as f64 / 1000.0),
        );
        let mut out = format!(
            "relayd drill failover: region {}'s primary {} at {:.1} s of load ({} regions)\n\n\
             | measure | value | |\n|---|--:|---|\n\
             | RTO (longest wait for a ✓ after the failure) | {rto} | target < {:.0} s: {} |\n",
            self.region,
            match self.kind {
                DrillKind::Kill => "killed",
                DrillKind::Pause => "paused",
                DrillKind::Partition => "cut off by a partition",
                DrillKind::Planned => "handed over to its standby (planned)",
            },
            self.failed_at_ms as f64 / 1000.0,
            self.regions,
            self.rto_target_ms as f64 / 1000.0,
            if self.rto_ms.is_some_and(|ms| ms < self.rto_target_ms) {
                "met"
            } else {
                "MISSED"
            },
        );
        for (sender, ms) in &self.rto_ms_by_sender {
            out.push_str(&format!(
                "| … {sender} | {:.2} s | |\n",
                *ms as f64 / 1000.0
            ));
        }
        out.push_str(&format!(
            "| sent / acknowledged | {} / {} | |\n\
             | lost | {} | {} |\n| duplicated | {} | {} |\n| out of order | {} | {} |\n\
             | undecryptable | {} | {} |\n| the standby serves the region | {} | {} |\n",
            self.sent,
            self.acknowledged,
            self.lost,
            mark(self.lost == 0),
            self.duplicated,
            mark(self.duplicated == 0),
            self.out_of_order,
            mark(self.out_of_order == 0),
            self.undecryptable,
            mark(self.undecryptable == 0),
            self.standby_serves,
            mark(self.standby_serves),
        ));
        if let Some(fenced) = self.old_primary_fenced {
            out.push_str(&format!(
                "| the old primary was fenced | {fenced} | {} |\n",
                mark(fenced)
            ));
        }
        if let Some(held_ms) = self.held_ms {
            out.push_str(&format!(
                "| requests held by the region | {:.2} s | |\n",
                held_ms as f64 / 1000.0
            ));
        }
        out.push_str(&format!(
            "| send attempts that failed (retried) | {} | {} |\n",
            self.send_attempts_failed,
            if self.kind == DrillKind::Planned {
                mark(self.send_attempts_failed == 0)
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "\nverdict: {}\n",
            if self.pass { "PASS" } else { "FAIL" }
        ));
        out
    }
}

/// One sender's record.
#[derive(Debug, Default)]
struct Sent {
    /// The text of each message, in send order, with when it was acknowledged.
    messages: Vec<(String, Option<Instant>)>,
}

/// Runs a drill.
pub async fn run(config: &DrillConfig) -> Result<DrillReport, RealChaosError> {
    if !(LOAD_SECONDS_MIN..=LOAD_SECONDS_MAX).contains(&config.load_seconds) {
        return Err(RealChaosError::Invalid(format!(
            "--seconds must be between {LOAD_SECONDS_MIN} and {LOAD_SECONDS_MAX}"
        )));
    }
    if config.regions == 0 || config.region == 0 || config.region > config.regions {
        return Err(RealChaosError::Invalid(format!(
            "--region must name one of the {} regions",
            config.regions
        )));
    }
    std::fs::create_dir_all(&config.data)
        .map_err(|error| RealChaosError::io("creating the drill's folder", error))?;
    let devnet_data = config.data.join("devnet");
    let devnet = DevnetProcess::start_with(
        &config.relayd,
        config.regions,
        &devnet_data,
        &config.data.join("devnet.log"),
        &DevnetSettings {
            standbys: true,
            ..DevnetSettings::default()
        },
    )?;
    let result = drill(config, &devnet, &devnet_data).await;
    // Nothing stays stopped, and the devnet stops its children.
    if let Some(pid) = devnet
        .state()
        .borrow()
        .pids
        .get(&format!("region-{}", config.region))
    {
        relay_devnet::process::signal_pid(*pid, Signal::CONT);
    }
    devnet.stop().await;
    result
}

async fn drill(
    config: &DrillConfig,
    devnet: &DevnetProcess,
    devnet_data: &std::path::Path,
) -> Result<DrillReport, RealChaosError> {
    let progress = |line: String| (config.progress)(line);
    let ready = devnet.ready().await?;
    progress(format!(
        "devnet ready with standbys; locator {}",
        ready.locator
    ));
    let overrides = |region: u32, host: u8| Overrides {
        locator: Some(ready.locator),
        bind_ip: Some(region_ip(region, host)),
        ca_path: Some(ready.ca.clone()),
        device_key: None,
    };
    // Sender s<k> in region k sends to receiver r<k+1> (the next region's).
    let mut names = Vec::new();
    for region in 1..=config.regions {
        for (name, host) in [(format!("s{region}"), 10), (format!("r{region}"), 11)] {
            let data_dir = config.data.join("devices").join(&name);
            relay_client::register(&data_dir, &name, overrides(region, host), "", &mut |_| {})
                .await
                .map_err(|error| RealChaosError::Run(format!("{name} cannot register: {error}")))?;
            names.push((name, region, host, data_dir));
        }
    }
    let open = |data_dir: &PathBuf, region: u32, host: u8, mode: Mode| {
        Device::open(
            data_dir,
            OpenOptions {
                overrides: overrides(region, host),
                mode,
                ..OpenOptions::default()
            },
        )
        .map_err(|error| RealChaosError::Run(format!("opening a device: {error}")))
    };
    progress(format!(
        "{} senders and {} receivers registered; load for {:.1} s, region {}'s primary fails at a third",
        config.regions, config.regions, config.load_seconds, config.region
    ));

    let began = Instant::now();
    let load = Duration::from_secs_f64(config.load_seconds);
    let fail_at = began + load / 3;
    let mut senders = Vec::new();
    for (name, region, host, data_dir) in &names {
        if name.starts_with('s') {
            let peer = format!("r{}", region % config.regions + 1);
            let (device, events) = open(data_dir, *region, *host, Mode::Live)?;
            senders.push((name.clone(), peer, device, events));
        }
    }
    let failing = format!("region-{}", config.region);
    let fault = async {
        tokio::time::sleep_until(fail_at.into()).await;
        let state = devnet.state().borrow().clone();
        if config.kind == DrillKind::Planned {
            let pid = state.pids.get(&failing).copied().unwrap_or(0);
            let region_config =
                home_region::RegionConfig::load(&devnet_data.join(format!("{failing}.toml")))
                    .map_err(|error| {
                        RealChaosError::Run(format!("the region's configuration: {error}"))
                    })?;
            progress(format!(
                "{:>6.1} s  asking {failing} (pid {pid}) to hand over to its standby",
                began.elapsed().as_secs_f64()
            ));
            let asked = Instant::now();
            let handed = home_region::handover::request_handover(&region_config)
                .await
                .map_err(|error| RealChaosError::Run(format!("the handover failed: {error}")))?;
            progress(format!(
                "{:>6.1} s  handed over: epoch {}, version {}, requests held {} ms",
                began.elapsed().as_secs_f64(),
                handed.epoch,
                handed.version,
                handed.held_ms
            ));
            return Ok::<(Instant, u32, Option<u64>), RealChaosError>((
                asked,
                pid,
                Some(handed.held_ms),
            ));
        }
        if config.kind == DrillKind::Partition {
            let pid = state.pids.get(&failing).copied().unwrap_or(0);
            crate::real::netns::nft_isolate(region_ip(
                config.region,
                relay_devnet::launcher::REGION_HOST,
            ))?;
            progress(format!(
                "{:>6.1} s  cut {failing} (pid {pid}) off: every packet from and to it dropped",
                began.elapsed().as_secs_f64()
            ));
            return Ok((Instant::now(), pid, None));
        }
        if config.kind == DrillKind::Kill {
            let down = devnet_data.join(format!("{failing}{DOWN_SUFFIX}"));
            std::fs::write(&down, b"drill: this machine is gone\n")
                .map_err(|error| RealChaosError::io("writing the down file", error))?;
        }
        let signal = match config.kind {
            DrillKind::Kill => Signal::KILL,
            _ => Signal::STOP,
        };
        let pid = relay_devnet::process::signal_child(&state, devnet.pid(), &failing, signal)?;
        progress(format!(
            "{:>6.1} s  {} {failing} (pid {pid})",
            began.elapsed().as_secs_f64(),
            match config.kind {
                DrillKind::Kill => "killed",
                _ => "paused",
            }
        ));
        Ok((Instant::now(), pid, None))
    };
    let sending = futures::future::join_all(
        senders
            .iter_mut()
            .map(|(_, peer, device, events)| send_until(device, events, peer, began + load)),
    );
    let (failed, records) = tokio::join!(fault, sending);
    let (failed_at, old_pid, held_ms) = failed?;
    let mut records_by_sender = BTreeMap::new();
    for ((name, ..), record) in senders.iter().zip(records) {
        records_by_sender.insert(name.clone(), record?);
    }
    let mut send_attempts_failed = 0;
    for (_, _, device, _) in senders {
        send_attempts_failed += device.send_attempts_failed().await.unwrap_or(0);
        let _ = device.close().await;
    }
    progress(format!(
        "{:>6.1} s  load over",
        began.elapsed().as_secs_f64()
    ));

    // RTO: each sender's longest wait for a ✓ after the failure. Its sends are sequential, so a
    // message waited from the previous ✓ (or the failure, if later) to its own. (The first ✓
    // after the failure alone would count an answer already on its way when it came.)
    let mut rto_ms_by_sender = BTreeMap::new();
    let mut recovered = true;
    for (name, sent) in &records_by_sender {
        let mut previous = began;
        let mut longest: Option<Duration> = None;
        for acked in sent.messages.iter().filter_map(|(_, acked)| *acked) {
            if acked >= failed_at {
                let waited = acked - previous.max(failed_at);
                longest = Some(longest.map_or(waited, |longest| longest.max(waited)));
            }
            previous = acked;
        }
        match longest {
            Some(waited) => {
                rto_ms_by_sender.insert(name.clone(), millis(waited));
            }
            None => recovered = false,
        }
    }

    let fenced_within = |timeout_ms: u64| {
        let mut state = devnet.state();
        let failing = failing.clone();
        async move {
            tokio::time::timeout(
                Duration::from_millis(timeout_ms),
                state.wait_for(|state| state.fenced.contains(&failing)),
            )
            .await
            .is_ok_and(|seen| seen.is_ok())
        }
    };
    let old_primary_fenced = match config.kind {
        DrillKind::Kill => None,
        DrillKind::Pause | DrillKind::Partition | DrillKind::Planned => {
            if config.kind == DrillKind::Pause {
                relay_devnet::process::signal_pid(old_pid, Signal::CONT);
                progress(format!(
                    "{:>6.1} s  resumed the old primary (pid {old_pid})",
                    began.elapsed().as_secs_f64()
                ));
            }
            if config.kind == DrillKind::Partition {
                crate::real::netns::nft_heal()?;
                progress(format!(
                    "{:>6.1} s  healed the partition of the old primary (pid {old_pid})",
                    began.elapsed().as_secs_f64()
                ));
            }
            let fenced = fenced_within(FENCE_TIMEOUT_MS).await;
            progress(format!(
                "{:>6.1} s  the old primary {}",
                began.elapsed().as_secs_f64(),
                if fenced {
                    "was fenced"
                } else {
                    "was NOT fenced"
                }
            ));
            Some(fenced)
        }
    };
    let peers = std::fs::read_to_string(devnet_data.join("peers.toml")).unwrap_or_default();
    let standby_host = region_ip(config.region, relay_devnet::launcher::STANDBY_HOST).to_string();
    let standby_serves = peers.contains(&format!("\"{standby_host}:"));

    // Every receiver syncs until it has every acknowledged message meant for it.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    let mut sent_count = 0u64;
    let mut acknowledged = 0u64;
    for (name, sent) in &records_by_sender {
        let region: u32 = name[1..].parse().unwrap_or(1);
        let receiver = format!("r{}", region % config.regions + 1);
        for (text, acked) in &sent.messages {
            sent_count += 1;
            if acked.is_some() {
                acknowledged += 1;
                expected
                    .entry(receiver.clone())
                    .or_default()
                    .push(text.clone());
            }
        }
    }
    let mut received: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut undecryptable = 0u64;
    for (name, region, host, data_dir) in &names {
        if !name.starts_with('r') {
            continue;
        }
        let wanted = expected.get(name).cloned().unwrap_or_default();
        let (device, mut events) = open(data_dir, *region, *host, Mode::OnDemand)?;
        let got = received.entry(name.clone()).or_default();
        let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
        let mut take = |event: Event, got: &mut Vec<String>| match event {
            Event::Message { text, .. } => got.push(text),
            Event::Undecryptable { .. } => undecryptable += 1,
            _ => {}
        };
        loop {
            // The events are taken while the sync runs: their channel is bounded, and a sync
            // of many messages waits for room in it.
            let sync = device.sync();
            tokio::pin!(sync);
            loop {
                tokio::select! {
                    _ = &mut sync => break,
                    Some(event) = events.next() => take(event, got),
                }
            }
            while let Some(event) = events.try_next() {
                take(event, got);
            }
            if wanted.iter().all(|text| got.contains(text)) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(SYNC_PAUSE_MS)).await;
        }
        let _ = device.close().await;
        progress(format!(
            "{:>6.1} s  {name} received {} of {} acknowledged messages",
            began.elapsed().as_secs_f64(),
            wanted.iter().filter(|text| got.contains(text)).count(),
            wanted.len()
        ));
    }
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    let mut out_of_order = 0u64;
    for (receiver, wanted) in &expected {
        let got = received.get(receiver).cloned().unwrap_or_default();
        lost += wanted.iter().filter(|text| !got.contains(text)).count() as u64;
    }
    for got in received.values() {
        let mut seen: HashMap<&str, u32> = HashMap::new();
        let mut last_index: HashMap<&str, u64> = HashMap::new();
        for text in got {
            *seen.entry(text.as_str()).or_default() += 1;
            // "drill s1 #7": a sender's messages arrive in the order it sent them.
            if let Some((sender, index)) = text
                .strip_prefix("drill ")
                .and_then(|rest| rest.split_once(" #"))
                .and_then(|(sender, index)| Some((sender, index.parse::<u64>().ok()?)))
            {
                if last_index.get(sender).is_some_and(|last| *last > index) {
                    out_of_order += 1;
                }
                last_index.insert(sender, index);
            }
        }
        duplicated += seen.values().filter(|count| **count > 1).count() as u64;
    }
    let rto_ms = recovered
        .then(|| rto_ms_by_sender.values().copied().max())
        .flatten();
    let pass = lost == 0
        && duplicated == 0
        && out_of_order == 0
        && undecryptable == 0
        && rto_ms.is_some()
        && standby_serves
        && old_primary_fenced != Some(false)
        && (config.kind != DrillKind::Planned || send_attempts_failed == 0);
    Ok(DrillReport {
        region: config.region,
        kind: config.kind,
        regions: config.regions,
        failed_at_ms: millis(failed_at - began),
        rto_ms,
        rto_ms_by_sender,
        rto_target_ms: RTO_TARGET_MS,
        sent: sent_count,
        acknowledged,
        lost,
        duplicated,
        out_of_order,
        undecryptable,
        standby_serves,
        old_primary_fenced,
        send_attempts_failed,
        held_ms,
        pass,
    })
}

/// Sends "drill <name> #i" to `peer`, one after the other, each waiting for its ✓ (at most
/// [`ACK_TIMEOUT_MS`]), until `until`.
async fn send_until(
    device: &Device,
    events: &mut Events,
    peer: &str,
    until: Instant,
) -> Result<Sent, RealChaosError> {
    let name = device.identity().name.clone();
    let mut sent = Sent::default();
    for index in 0u64.. {
        if Instant::now() >= until {
            break;
        }
        let text = format!("drill {name} #{index}");
        let id = device
            .send(peer, &text)
            .await
            .map_err(|error| RealChaosError::Run(format!("{name} cannot send: {error}")))?
            .to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ACK_TIMEOUT_MS);
        let mut acked = None;
        while acked.is_none() {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(Event::Tick {
                    id: ticked, tick, ..
                })) if ticked == id && tick != Tick::Pending => {
                    acked = Some(Instant::now());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        sent.messages.push((text, acked));
        if acked.is_none() {
            // The region did not come back within the bound: the report says so.
            break;
        }
    }
    Ok(sent)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
