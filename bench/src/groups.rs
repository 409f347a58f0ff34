//! W3 of the message benchmark (`relayd bench messages`, opaque mode): one sender device to a
//! group, after the W1 and W4 rows on the same devnet, reported beside W1 max of the same run.
//!
//! - **Setup**: a sender and the member devices (one account and device each, registered like
//!   the W1 receivers through region 1's edge, so homed in region 1, the directory writer),
//!   every one connected and draining its queue on pushes as the W1 receivers do. The sender's
//!   account creates each group through the real `GroupCommand` path and adds the members in
//!   `Add` commands of [`GROUP_ADD_ACCOUNTS_PER_COMMAND`] accounts; the directory's last answer
//!   (version and members) is what the sender encrypts for. A group of N members is the sender
//!   and N − 1 member devices, and the groups share their first members.
//! - **W3 max** (each size): closed loop with the client's pipeline window for the group's
//!   fan-out ([`pipeline_window`] envelopes of the group chat in flight, in `sender_seq` order):
//!   the next message is composed when one in flight is ✓.
//! - **W3 at 50 %** (the first size): open loop, messages due at half the group messages per
//!   second W3 max delivered, latencies from when each was due.
//!
//! Each row reports deliveries per second (counted at the member devices, inside the window),
//! group messages per second (deliveries over member devices), its share of W1 max's 1:1
//! deliveries, ✓ and send → deliver percentiles (the composition time travels inside the
//! opaque group ciphertext), server CPU and deliveries per server CPU-second, and this
//! process's CPU: the member devices share the machine with the servers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rand::RngCore;
use relay_client::limits::pipeline_window;
use relay_proto::DeviceAddress;
use relay_proto::limits::GROUP_REQUEST_ID_BYTES;
use relay_proto::wire::{AddGroupMembers, CreateGroup, GroupInfo, group_command};
use serde::Serialize;

use crate::BenchError;
use crate::device::{
    Composed, Device, EdgeLink, Endpoints, GroupTarget, client_message_id, opaque_group_envelope,
};
use crate::limits::{
    DRAIN_TIMEOUT_MS, GROUP_ADD_ACCOUNTS_PER_COMMAND, OPEN_LOOP_SHARE_OF_MAX,
    REGISTRATION_TIMEOUT_MS, W3_DELIVERIES_PER_SECOND_TARGET,
    W3_OPEN_SEND_TO_DELIVER_P99_MS_TARGET, W3_TARGET_MEMBERS,
};
use crate::measure::{Timing, ratio, thousands};
use crate::messages::{
    Context, Lane, MessageRow, Online, Pace, ROW_W3_MAX_FIRST, ROW_W3_OPEN, Sender, register_all,
    w1_row,
};

/// One W3 row.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    /// Members of the group, the sender's account included.
    pub members: usize,
    /// Member devices each message reaches (every member's device but the sender's).
    pub receiving_devices: usize,
    /// Bytes of each encoded group envelope.
    pub envelope_bytes: usize,
    /// Envelopes of the group chat in flight at once.
    pub pipeline_window: usize,
    /// How long after the row ended the sender had fetched a delivered receipt for every
    /// delivery of the row (its ✓✓ trailing its ✓), in ms; `None` when that took longer than
    /// [`DRAIN_TIMEOUT_MS`]. The next row starts after it, so one row's receipts do not weigh
    /// on the next.
    pub receipts_settled_after_ms: Option<u64>,
    /// Group messages delivered in the window per second (`delivered_per_second` over
    /// `receiving_devices`).
    pub messages_per_second: f64,
    /// `delivered_per_second` over W1 max's 1:1 delivered per second in the same run.
    pub share_of_one_to_one: f64,
    /// What was measured, as for a W1 row: `sent` counts group messages ✓, `delivered` and
    /// `delivered_per_second` count deliveries at the member devices, `offered_per_second`
    /// (open loop) group messages composed per second.
    #[serde(flatten)]
    pub measured: MessageRow,
}

/// The steps [`w3_rows`] announces for `sizes`.
pub(crate) fn steps(sizes: &[usize]) -> u64 {
    if sizes.is_empty() {
        0
    } else {
        // Setup, a closed-loop row per size, the open-loop row.
        2 + sizes.len() as u64
    }
}

/// Runs W3 for groups of `sizes` members through the edge at `edge` (region 1's):
/// registers and connects the devices, creates the groups, runs a closed-loop row per size and
/// the open-loop row for the first. `one_to_one_per_second` is W1 max's delivered rate. The
/// devices' connections join `links` (closed by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn w3_rows(
    context: &Context<'_>,
    endpoints: &Arc<Endpoints>,
    edge: SocketAddr,
    sizes: &[usize],
    one_to_one_per_second: f64,
    timing: Timing,
    step: &(dyn Fn(&str) + Sync),
    links: &mut Vec<Arc<EdgeLink>>,
) -> Result<Vec<GroupRow>, BenchError> {
    let Some(&largest) = sizes.iter().max() else {
        return Ok(Vec::new());
    };
    step(&format!(
        "W3: registering a sender and {} member devices, creating groups of {}",
        largest - 1,
        sizes
            .iter()
            .map(|size| thousands(*size as f64))
            .collect::<Vec<_>>()
            .join(" and ")
    ));
    let deadline = Instant::now() + Duration::from_millis(REGISTRATION_TIMEOUT_MS);
    let registered = async {
        let online = Online::Yes(&context.recorder);
        let sender = register_all(endpoints, edge, "group-sender", 1, online).await?;
        let online = Online::Yes(&context.recorder);
        let members = register_all(endpoints, edge, "group-member", largest - 1, online).await?;
        Ok::<_, BenchError>((sender, members))
    };
    let (sender, members) = tokio::time::timeout_at(deadline.into(), registered)
        .await
        .map_err(|_| {
            BenchError::Timeout(format!(
                "registering the group devices took longer than {REGISTRATION_TIMEOUT_MS} ms"
            ))
        })??;
    links.extend(members.iter().filter_map(|member| member.link.clone()));
    let sender = sender
        .into_iter()
        .next()
        .ok_or_else(|| BenchError::Refused("the group sender was not registered".into()))?;
    let link = sender
        .link
        .ok_or_else(|| BenchError::Refused("the group sender is offline".into()))?;
    links.push(link.clone());
    let member_devices: Vec<_> = members.iter().map(|member| member.device.address).collect();

    let mut lanes = Vec::with_capacity(sizes.len());
    let mut envelope_bytes = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let devices = &member_devices[..size - 1];
        let info = create_group(&sender.device, &link, size, devices).await?;
        let target = GroupTarget::new(&info, sender.device.address, devices)?;
        let sample = Composed {
            sender_seq: 1,
            client_message_id: client_message_id(),
            composed_at_us: context.clock.now_us(),
        };
        envelope_bytes.push(
            opaque_group_envelope(sender.device.address, &target, &sample, ROW_W3_OPEN, 1)
                .encoded_len(),
        );
        lanes.push(Lane::group(target, pipeline_window(size - 1)));
    }
    let mut senders = vec![Sender {
        device: sender.device,
        link,
        lanes,
    }];

    let mut rows = Vec::with_capacity(sizes.len() + 1);
    for (index, &size) in sizes.iter().enumerate() {
        step(&format!(
            "W3 max: closed loop to a group of {} members",
            thousands(size as f64)
        ));
        // `index` is below GROUP_SIZES_MAX (validated), and the rows up to it fit a u8
        // (asserted where the row numbers are).
        let row = ROW_W3_MAX_FIRST.saturating_add(u8::try_from(index).unwrap_or(u8::MAX));
        let receiving = size as u64 - 1;
        let receipts_before = context.recorder.receipts();
        let measured = w1_row(
            context,
            &mut senders,
            index,
            row,
            Pace::Closed,
            timing,
            receiving,
        )
        .await?;
        let settled = settle_receipts(context, receipts_before + measured.delivered).await;
        rows.push(group_row(
            size,
            envelope_bytes[index],
            one_to_one_per_second,
            measured,
            settled,
        ));
    }

    let first = sizes[0];
    let offered = rows[0].messages_per_second * OPEN_LOOP_SHARE_OF_MAX;
    if offered <= 0.0 {
        return Err(BenchError::Refused(
            "W3 max delivered nothing in its window: there is no rate to take half of".into(),
        ));
    }
    step(&format!(
        "W3 at 50%: open loop at {} group messages/s to {} members",
        thousands(offered),
        thousands(first as f64)
    ));
    let receipts_before = context.recorder.receipts();
    let measured = w1_row(
        context,
        &mut senders,
        0,
        ROW_W3_OPEN,
        Pace::Open {
            per_second: offered,
        },
        timing,
        first as u64 - 1,
    )
    .await?;
    let settled = settle_receipts(context, receipts_before + measured.delivered).await;
    rows.push(group_row(
        first,
        envelope_bytes[0],
        one_to_one_per_second,
        measured,
        settled,
    ));
    Ok(rows)
}

/// Waits for the sender to have fetched `receipts` receipts over the run (one per delivery);
/// how long after now that took, `None` past [`DRAIN_TIMEOUT_MS`].
async fn settle_receipts(context: &Context<'_>, receipts: u64) -> Option<u64> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(DRAIN_TIMEOUT_MS);
    context
        .recorder
        .wait_receipts(receipts, deadline)
        .await
        .then(|| u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// Creates a group of `size` members as `sender`'s account: created with no other member, then
/// the accounts of `devices` added in batches; returns the directory's last answer, checked to
/// hold exactly the sender and those accounts.
async fn create_group(
    sender: &Device,
    link: &EdgeLink,
    size: usize,
    devices: &[DeviceAddress],
) -> Result<GroupInfo, BenchError> {
    let mut request_id = [0u8; GROUP_REQUEST_ID_BYTES];
    rand::rng().fill_bytes(&mut request_id);
    let create = group_command::Command::Create(CreateGroup {
        name: format!("w3 {size}"),
        members: Vec::new(),
        request_id: request_id.to_vec(),
    });
    let mut info = sender.group_command(link, create).await?;
    let group = info.group;
    let accounts: Vec<u64> = devices.iter().map(|device| device.account.0).collect();
    for batch in accounts.chunks(GROUP_ADD_ACCOUNTS_PER_COMMAND) {
        let add = group_command::Command::Add(AddGroupMembers {
            group,
            accounts: batch.to_vec(),
        });
        info = sender.group_command(link, add).await?;
    }
    let expected: BTreeSet<u64> = accounts
        .iter()
        .copied()
        .chain([sender.address.account.0])
        .collect();
    let members: BTreeSet<u64> = info.members.iter().map(|member| member.account).collect();
    if info.group != group || members != expected || info.member_count as usize != size {
        return Err(BenchError::Protocol(format!(
            "group {group} was filled with {size} members, and the directory answered group {} \
             with {} ({} listed)",
            info.group,
            info.member_count,
            members.len()
        )));
    }
    Ok(info)
}

fn group_row(
    members: usize,
    envelope_bytes: usize,
    one_to_one_per_second: f64,
    measured: MessageRow,
    receipts_settled_after_ms: Option<u64>,
) -> GroupRow {
    let receiving_devices = members - 1;
    GroupRow {
        members,
        receiving_devices,
        envelope_bytes,
        pipeline_window: pipeline_window(receiving_devices),
        receipts_settled_after_ms,
        messages_per_second: ratio(measured.delivered_per_second, receiving_devices as f64),
        share_of_one_to_one: ratio(measured.delivered_per_second, one_to_one_per_second),
        measured,
    }
}

/// The W3 rows as a Markdown table with its context and the targets;
/// `one_to_one_per_second` is W1 max's delivered rate in the same run.
pub(crate) fn table(rows: &[GroupRow], payload_bytes: usize, one_to_one_per_second: f64) -> String {
    if rows.is_empty() {
        return String::new();
    }
    // Per closed-loop row (one per group size): its envelope's bytes and its window.
    let (sizes, windows): (Vec<String>, Vec<String>) = rows
        .iter()
        .filter(|row| row.measured.pacing == "closed")
        .map(|row| {
            let members = thousands(row.members as f64);
            (
                format!(
                    "{} B to {members} members",
                    thousands(row.envelope_bytes as f64)
                ),
                format!("{} to {members} members", row.pipeline_window),
            )
        })
        .unzip();
    let mut out = format!(
        "\nW3 group fan-out: one sender device → a group (the sender and its members' devices \
         homed in region 1, each connected and draining its queue on pushes), the group chat's \
         envelopes in flight as the client's window for its fan-out ({}), {payload_bytes} B \
         opaque group ciphertexts (envelopes of {}); deliveries counted at the member devices, \
         beside W1 max's {} delivered/s 1:1 in this run\n\n",
        windows.join(", "),
        sizes.join(", "),
        thousands(one_to_one_per_second),
    );
    out.push_str(
        "| workload | members | deliveries/s | group messages/s | ÷ W1 max 1:1 | ✓ p50 / p99 / \
         p99.9 ms | send→deliver p50 / p99 / p99.9 ms | sent | delivered | timeouts | \
         retries: conflicts / other | server CPU s | deliveries per server CPU-s | bench CPU s | \
         receipts settled after ms |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for row in rows {
        let measured = &row.measured;
        let workload = match measured.offered_per_second {
            Some(offered) => format!(
                "{} ({} loop, {} messages/s offered)",
                measured.workload,
                measured.pacing,
                thousands(offered)
            ),
            None => format!("{} ({} loop)", measured.workload, measured.pacing),
        };
        out.push_str(&format!(
            "| {workload} | {} | {} | {} | {:.1}× | {} | {} | {} | {} | {} | {} / {} | {:.1} | {} \
             | {} | {} |\n",
            thousands(row.members as f64),
            thousands(measured.delivered_per_second),
            thousands(row.messages_per_second),
            row.share_of_one_to_one,
            measured.ack.cell(),
            measured.send_to_deliver.cell(),
            thousands(measured.sent as f64),
            thousands(measured.delivered as f64),
            measured.request_timeouts,
            thousands(measured.conflict_retries as f64),
            thousands(measured.other_retries as f64),
            measured.server_cpu_seconds,
            thousands(measured.delivered_per_server_cpu_second),
            measured
                .bench_cpu_seconds
                .map_or_else(|| "n/a".to_owned(), |seconds| format!("{seconds:.1}")),
            row.receipts_settled_after_ms.map_or_else(
                || format!("> {}", thousands(DRAIN_TIMEOUT_MS as f64)),
                |ms| thousands(ms as f64)
            ),
        ));
    }
    let max = rows
        .iter()
        .find(|row| row.members == W3_TARGET_MEMBERS && row.measured.pacing == "closed");
    let open = rows
        .iter()
        .find(|row| row.members == W3_TARGET_MEMBERS && row.measured.pacing == "open");
    if let (Some(max), Some(open)) = (max, open) {
        let met = |yes: bool| if yes { "met" } else { "missed" };
        out.push_str(&format!(
            "\nIssue 13's targets for {W3_TARGET_MEMBERS} members: ≥ {} deliveries/s: {} ({}); \
             send→deliver p99 ≤ {W3_OPEN_SEND_TO_DELIVER_P99_MS_TARGET} ms at 50 %: {} ({} \
             ms). Server CPU in W3 max's window by process: {}\n",
            thousands(W3_DELIVERIES_PER_SECOND_TARGET),
            met(max.measured.delivered_per_second >= W3_DELIVERIES_PER_SECOND_TARGET),
            thousands(max.measured.delivered_per_second),
            met(open.measured.send_to_deliver.p99_ms <= W3_OPEN_SEND_TO_DELIVER_P99_MS_TARGET),
            crate::measure::milliseconds(open.measured.send_to_deliver.p99_ms),
            max.measured
                .server_cpu_seconds_by_process
                .iter()
                .map(|(name, seconds)| format!("{name} {seconds:.1} s"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    out
}
