//! The `relay` command line: argument parsing (clap), one line of output per [`Event`] (human or
//! `--json`), and exit codes. All behaviour lives in the `relay-client` SDK (each command is one
//! of its [`relay_client::flows`] over a [`Device`]); this is the edge where library errors
//! become messages on stderr (JSON objects with `--json`).

use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use relay_client::content::Change;
use relay_client::events::{ChangeKind, format_time_ms};
use relay_client::flows::{self, GroupRequest, Wait};
use relay_client::limits::TEXT_BYTES_MAX;
use relay_client::{
    BlobProgress, BlobRef, BlobSource, ClientError, Device, Direction, Event, FileDescription,
    FileInfo, IfExists, LinkHistory, Mode, OpenOptions, Overrides, PresenceVisibility,
    PushRegistration, Tick, link_accept, register, terminal,
};

/// Exit code of a command that failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of bad flags or arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `send --wait` when the timeout passed first.
pub const EXIT_TIMEOUT: u8 = 3;
/// Exit code of `send --wait` interrupted by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

const ABOUT: &str = "Relay: end-to-end encrypted chat through the nearest edge";

const LONG_ABOUT: &str = "\
Relay: end-to-end encrypted chat through the nearest edge.

Each data directory is one device of one account. `register` creates it; every other command
works on it. Messages are encrypted per recipient device with Olm; no server sees their text,
nor whether you read them.

A first conversation (without --ca the system's trusted roots are used):
  relay --data alice register alice --locator 127.0.0.1:5353 --bind 127.0.1.10 --ca ca.pem
  relay --data bob   register bob   --locator 127.0.0.1:5353 --bind 127.0.2.10 --ca ca.pem
  relay --data alice send bob 'hello bob' --wait --until delivered --timeout 30 &
  echo 'a longer text' | relay --data alice send bob -
  relay --data bob   sync            # prints alice's message; the ack makes alice's tick ✓✓
  relay --data bob   read alice      # sends an encrypted read receipt
  relay --data alice history bob
  relay --data bob   listen --timeout 60";

const AFTER_HELP: &str = "\
OUTPUT
  stdout carries one line per event; notes and errors go to stderr. With --json each stdout line
  is one JSON object with an \"event\" field (times are ms since the Unix epoch, ids 32 hex digits):
    {\"event\":\"registered\",\"name\":N,\"account\":A,\"device\":D,\"region\":R}
        registered N: account A, device D, region R
    {\"event\":\"listening\",\"name\":N}
        listening as N
    {\"event\":\"tick\",\"id\":ID,\"peer\":P,\"tick\":\"pending\"|\"sent\"|\"delivered\"|\"read\"}
        ID → P: pending | sent ✓ | delivered ✓✓ | read
    {\"event\":\"message\",\"id\":ID,\"from\":F,\"peer\":P,\"direction\":\"in\"|\"out\",
     \"sender_device\":\"A/D\",\"chat_seq\":S,\"time_ms\":T,\"sent_at_ms\":T,\"text\":X}
        [TIME] F: X            (direction out, a copy from another own device: [TIME] F → P: X)
    {\"event\":\"undecryptable\",\"id\":ID,\"from\":F,\"sender_device\":\"A/D\",\"time_ms\":T,\"reason\":R}
        [TIME] F: ⚠ undecryptable message ID (R)
    {\"event\":\"expired\",\"id\":ID,\"peer\":P,\"device\":\"A/D\"}
        ID → P: not delivered to device A/D (expired)
    {\"event\":\"failed\",\"id\":ID,\"peer\":P,\"reason\":R}
        ID → P: failed (R)
    {\"event\":\"still_pending\",\"id\":ID,\"peer\":P,\"reason\":R}
        ID → P: still pending (R); the outbox retries it on the next relay command
    {\"event\":\"marked_read\",\"peer\":P,\"count\":C}
        marked C message(s) from P read
    {\"event\":\"history\",\"id\":ID,\"direction\":\"in\"|\"out\",\"from\":F,\"peer\":P,\"time_ms\":T,
     \"text\":X|null,\"tick\":TICK|null,\"read\":BOOL|null,\"undecryptable\":R|null,
     \"failed\":R|null,\"chat_seq\":S|null,\"edited\":B,\"deleted\":B,
     \"reactions\":[{\"from\":F,\"reaction\":R}]}
        ID8 [TIME] → P: X (TICK)       an outgoing message and its tick (ID8: the id's first 8
                                       hex digits, which edit, delete and react take)
        ID8 [TIME] ← F: X              an incoming message (\" (unread)\" until `relay read`)
                                       X ends with \" (edited)\" and \" [R F, …]\" (reactions);
                                       a deleted one reads \"message deleted\"
    {\"event\":\"receipt\",\"id\":ID,\"name\":N,\"device\":\"A/D\",
     \"state\":\"pending\"|\"sent\"|\"delivered\"|\"read\"|\"expired\",\"at_ms\":T|null}
          N device A/D: STATE [TIME]   (relay info, after the message's history line: one line
                                       per recipient device, the peer's and your other devices)
    {\"event\":\"setting\",\"name\":\"read-receipts\",\"value\":\"on\"|\"off\"}
        read-receipts: on | off       (relay settings)
    {\"event\":\"changed\",\"id\":ID,\"from\":F,\"peer\":P,\"change\":\"edit\"|\"delete\"|\"react\",
     \"text\":X|null}
        F edited ID8: X (edited) | F deleted ID8: message deleted | F reacted to ID8 with R
    {\"event\":\"synced\",\"received\":N,\"ticks\":M,\"pending\":K}
        synced: N new message(s), M tick change(s), K pending in the outbox
    {\"event\":\"pairing_code\",\"code\":C,\"expires_at_ms\":T}
        pairing code C (single use, until TIME): on the new device run …
    {\"event\":\"link_requested\",\"code\":C,\"name\":N,\"fingerprint\":F}
        a new device asks to join N with C; its fingerprint: F
    {\"event\":\"linked\",\"name\":N,\"account\":A,\"device\":D,\"region\":R}
        linked to N: account A, device D, region R
    {\"event\":\"device\",\"name\":N,\"device\":D,\"fingerprint\":F,\"current\":B,\"this_device\":B}
        N device D (this device | removed): F
    {\"event\":\"group\",\"id\":G,\"name\":N,\"version\":V,\"home_region\":R,\"member_count\":C}
        group G \"N\": C member(s) (version V, home region R)
    {\"event\":\"group_member\",\"group\":G,\"name\":N,\"account\":A,\"admin\":B}
          N (admin)            a member of the group on the line before
    {\"event\":\"group_left\",\"id\":G}
        left group G
    {\"event\":\"bootstrap_sent\",\"device\":D,\"bytes\":N}   (link, approve: history sent)
        history sent to device D as an encrypted snapshot of N bytes
    {\"event\":\"bootstrap_progress\",\"done_bytes\":N,\"total_bytes\":M}   (the new device's
     first sync; on a terminal a progress bar on stderr instead)
    {\"event\":\"bootstrapped\",\"from\":\"A/D\",\"chats\":C,\"messages\":N,\"bytes\":B}
        history loaded from device A/D: C chat(s), N message(s) (a snapshot of B bytes)
    {\"event\":\"bootstrap_skipped\",\"from\":\"A/D\",\"reason\":R}
        history bootstrap from device A/D not loaded (R); the history comes by sync
    {\"event\":\"blob\",\"ref\":REF,\"region\":R,\"size\":BYTES}      (relay blob put)
        REF                    the reference, relay-blob:2:…; it holds the blob's key
    {\"event\":\"blob_written\",\"path\":PATH,\"bytes\":N}            (relay blob get)
        wrote N bytes to PATH
    {\"event\":\"blob_resumed\",\"offset\":N}   (blob put or get, after a dropped connection)
        resuming from byte N   (on stderr)
  With --json, an error is one JSON object on stderr:
    {\"event\":\"error\",\"message\":M,\"code\":C,\"exit_code\":N}
  where C names the kind of error (unknown_peer, timed_out, not_registered, damaged_database,
  device_key, device_rolled_back, edge_unreachable, refused, usage, …).
  TIME is RFC 3339 UTC with milliseconds. Human output shows control characters of texts, names
  and server messages as escapes (a newline as \\n, ESC as \\x1b, a backslash as \\\\, a bidi
  override as \\u{202e}), so no message can move the cursor or rewrite the screen; JSON output
  keeps every text exact (controls as \\u escapes).

FILES
  DIR/relay.db    messages, outbox, drafts, contacts (SQLite); the device's Olm keys inside it are
                  encrypted under the device key
  DIR/history     the chats as relay-sync documents, shared with the account's other devices by
                  sync (a deletion for everyone compacts them: the text is in no saved byte);
                  DIR/history-peer-A-D the sync state with own device A/D
  DIR/device.key  the device key (mode 0600, made by `register`). Keep it out of backups of DIR,
                  or keep it elsewhere: --device-key PATH or RELAY_DEVICE_KEY_FILE=PATH, for
                  every command. Without it the device cannot be opened.
  DIR is kept at mode 0700; a command that finds it or the key open to other users closes it
  and says so. A damaged relay.db is reported as such and left untouched. When the locator does
  not answer, the last edge that worked is used.

EXIT CODES
  0 success (also `send` without --wait leaving the message pending: the outbox retries it on
  the next command, and `listen` ending at its timeout or on Ctrl-C); 1 failure (not registered,
  damaged database, missing or wrong device key, unknown peer, unreachable locator and edge,
  refused); 2 bad flags; 3 `send --wait` timed out; 130 `send --wait` interrupted.";

/// The `relay` command line.
#[derive(Debug, Parser)]
#[command(name = "relay", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
pub struct Cli {
    /// The data directory of this device (created by `register`; also from $RELAY_DATA).
    #[arg(long, global = true, env = "RELAY_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Print one JSON object per line instead of human-readable lines.
    #[arg(long, global = true)]
    pub json: bool,
    /// The edge locator's DNS address (remembered by `register`; given later, it overrides).
    #[arg(long, global = true, value_name = "ADDR")]
    pub locator: Option<SocketAddr>,
    /// The local IP to send from; the locator picks the edge by it (remembered by `register`).
    #[arg(long, global = true, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// The deployment's CA certificate, PEM (copied into the data directory by `register`;
    /// without it, `register` trusts the system's root certificates).
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// The file holding the key that encrypts this device's secrets (default: device.key in the
    /// data directory; `register` creates it). Keep it apart from backups of the data directory.
    #[arg(
        long,
        global = true,
        env = "RELAY_DEVICE_KEY_FILE",
        value_name = "PATH"
    )]
    pub device_key: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account named NAME with this device as its first device.
    ///
    /// Needs --locator and --bind, and --ca unless the edges' certificates are trusted by the
    /// system; they are remembered for later commands. The account's home region is the region
    /// of the edge the locator names for --bind. A registration that fails leaves nothing
    /// behind, unless the account may have been created (no answer came): then the keys are
    /// kept and registering again in the same directory finishes it.
    Register {
        /// The account name: 1 to 64 characters of a-z, 0-9, '_', '-', '.'.
        name: String,
        /// A registration token issued by an operator (`relayd admin token`; optional on a devnet).
        #[arg(long, default_value = "")]
        token: String,
    },
    /// Send TEXT to PEER and print the message id with its tick.
    ///
    /// Prints `ID → PEER: pending` once the message is stored, before anything goes on the
    /// network (for a PEER not known yet, as a draft until the directory resolves the name),
    /// then `ID → PEER: sent ✓` once every destination region stored it. If that does not
    /// happen within 20 s (edge unreachable, directory unavailable, retries failing), the
    /// message stays stored, a `still pending` line says why, and the exit code is 0: the next
    /// relay command retries it. With --wait (implied by --until or --timeout) it
    /// stays connected, prints each tick of this message as it moves (and any message received
    /// meanwhile), and exits once the tick reaches --until, or with exit code 3 after --timeout.
    Send {
        /// The account to send to.
        peer: String,
        /// The text; `-` reads it from standard input (one trailing newline is dropped; at
        /// most 32 KiB of UTF-8).
        text: String,
        /// Wait for a tick (see --until) instead of exiting after ✓.
        #[arg(long)]
        wait: bool,
        /// The tick to wait for (default read).
        #[arg(long, value_enum, value_name = "TICK")]
        until: Option<Until>,
        /// How long to wait, in seconds (default 60).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// Send TEXT to group GROUP (a member's) and print the message id with its tick.
    ///
    /// The text is encrypted once with this device's Megolm session for the group; member
    /// devices that do not hold the session's key get it first, each over Olm. The first
    /// message to a group asks the directory for its members and claims their devices' keys.
    /// Prints `ID → group GROUP: pending`, then `sent ✓` once every region homing a member
    /// stored it; with --wait (implied by --until or --timeout), follows it until --until
    /// (`delivered`: every member device it went to has it; `read`: every member read it) or
    /// exits 3 after --timeout.
    SendGroup {
        /// The group id (`relay groups` lists yours).
        group: u64,
        /// The text; `-` reads it from standard input (at most 32 KiB of UTF-8).
        text: String,
        /// Wait for a tick (see --until) instead of exiting after ✓.
        #[arg(long)]
        wait: bool,
        /// The tick to wait for (default delivered; read: every member it went to read it).
        #[arg(long, value_enum, value_name = "TICK")]
        until: Option<Until>,
        /// How long to wait, in seconds (default 60).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// Send the file at PATH to PEER, and print the message id with its tick.
    ///
    /// The file is sealed on this device under a fresh key in 64 KiB chunks, uploaded to your
    /// home region (a progress bar on a terminal; resumed from what the region committed after
    /// a dropped connection), then sent in an end-to-end encrypted message that carries the
    /// blob's id, key, size and hash, the file's name and type, and --caption. The region
    /// stores only ciphertext and never sees the key; the blob expires after 30 days. PEER
    /// fetches it with `relay download ID`. --wait, --until and --timeout work as for `send`.
    SendFile {
        /// The account to send to.
        peer: String,
        /// The file (up to 256 MiB).
        path: PathBuf,
        /// A caption shown with the file (at most 32 KiB of UTF-8).
        #[arg(long, default_value = "")]
        caption: String,
        /// The media type to announce (default: guessed from the extension, else
        /// application/octet-stream).
        #[arg(long = "type", value_name = "MEDIA_TYPE")]
        media_type: Option<String>,
        /// Wait for a tick (see --until) instead of exiting after ✓.
        #[arg(long)]
        wait: bool,
        /// The tick to wait for (default read).
        #[arg(long, value_enum, value_name = "TICK")]
        until: Option<Until>,
        /// How long to wait, in seconds (default 60).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// Send the file at PATH to group GROUP, as `send-file` sends one to a peer.
    ///
    /// Uploaded once; the message carrying its key is encrypted once with this device's
    /// Megolm session for the group, as `send-group` does for a text.
    SendGroupFile {
        /// The group id (`relay groups` lists yours).
        group: u64,
        /// The file (up to 256 MiB).
        path: PathBuf,
        /// A caption shown with the file (at most 32 KiB of UTF-8).
        #[arg(long, default_value = "")]
        caption: String,
        /// The media type to announce (default: guessed from the extension).
        #[arg(long = "type", value_name = "MEDIA_TYPE")]
        media_type: Option<String>,
        /// Wait for a tick (see --until) instead of exiting after ✓.
        #[arg(long)]
        wait: bool,
        /// The tick to wait for (default delivered).
        #[arg(long, value_enum, value_name = "TICK")]
        until: Option<Until>,
        /// How long to wait, in seconds (default 60).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// Download the file attached to message MSG, check it and write it to OUT.
    ///
    /// MSG is the message's id or its first hex digits (at least 6), as `relay history`,
    /// `relay group history` and incoming messages show it (`· relay download ID`). The
    /// ciphertext's size and SHA-256 are checked before anything is decrypted, and every
    /// 64 KiB chunk is authenticated; a dropped connection resumes where it stopped. OUT
    /// defaults to the file's name (directories removed) in the current directory; an
    /// existing file is kept unless --force.
    Download {
        /// The message's id or a prefix of it.
        message: String,
        /// Where to write the file.
        out: Option<PathBuf>,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Send what waits in the outbox, then fetch, print and acknowledge everything queued.
    ///
    /// Acknowledging makes the server send a delivered receipt (✓✓) to each sender. Ends with a
    /// `synced:` summary line.
    Sync,
    /// Mark every unread message from PEER read and send PEER an end-to-end encrypted receipt.
    ///
    /// Only messages already fetched (by sync, listen or send --wait) count. Your other devices
    /// learn it too; with `relay settings read-receipts off` PEER is told nothing.
    Read {
        /// The account whose messages were read.
        peer: String,
    },
    /// Stay connected and print messages and tick changes as they arrive.
    ///
    /// Prints `listening as NAME` once connected and authenticated. Reconnects with jittered
    /// backoff if the connection drops. Ends on Ctrl-C or after --timeout (exit code 0).
    Listen {
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// Print the chat with PEER in order: each message's id (its first 8 hex digits), time,
    /// direction, text and tick, "(edited)", "message deleted" and reactions.
    ///
    /// Shows the whole history the account's devices hold, also what this device only knows
    /// from another own device (a device linked after the fact).
    History {
        /// The other account of the chat.
        peer: String,
    },
    /// Replace the text of your message MSG in the chat with PEER, for everyone.
    ///
    /// MSG is the message's id as `relay history` shows it (8 hex digits, or at least 6 if
    /// they name one message). The peer's devices and your other devices show the new text
    /// with "(edited)".
    Edit {
        /// The other account of the chat.
        peer: String,
        /// The message's id (or a prefix of it).
        message: String,
        /// The new text (`-` reads it from standard input).
        text: String,
    },
    /// Delete your message MSG in the chat with PEER for everyone: its text leaves every
    /// device's saved state (they show "message deleted").
    Delete {
        /// For everyone (the only kind of deletion there is; required, to say so).
        #[arg(long)]
        everyone: bool,
        /// The other account of the chat.
        peer: String,
        /// The message's id (or a prefix of it), as `relay history` shows it.
        message: String,
    },
    /// React to message MSG (yours or PEER's) in the chat with PEER with one emoji or a short
    /// word; an empty REACTION ("") takes your reaction back.
    React {
        /// The other account of the chat.
        peer: String,
        /// The message's id (or a prefix of it), as `relay history` shows it.
        message: String,
        /// The reaction.
        reaction: String,
    },
    /// Link a new device to this account: show a pairing code, wait for the new device to ask
    /// with it (`relay --data DIR link-accept CODE` there), approve it and list the devices.
    ///
    /// The code is single use and expires after 10 minutes. Compare the fingerprint printed
    /// here with the one the new device prints. Any device of the account may link another.
    Link {
        /// Stop waiting for the new device after this many seconds (default: until the code
        /// expires).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        /// Send the new device no history snapshot: it gets the history by sync alone.
        #[arg(long)]
        no_bootstrap: bool,
    },
    /// Make this new data directory a device of the account that showed CODE (`relay link`).
    ///
    /// Creates the device's keys, proves it holds them, and waits until a device of the
    /// account approves it (`relay link` does so by itself, or `relay approve`). Needs
    /// --locator and --bind like `register`.
    LinkAccept {
        /// The pairing code, like 1-K7QD-M2XA.
        code: String,
    },
    /// Approve the new device waiting with CODE (or the only one waiting).
    Approve {
        /// The pairing code it used.
        code: Option<String>,
        /// Send the new device no history snapshot: it gets the history by sync alone.
        #[arg(long)]
        no_bootstrap: bool,
    },
    /// List this account's devices, or the devices of PEER this device knows (with their
    /// fingerprints, and the ones removed).
    Devices {
        /// A contact.
        peer: Option<String>,
    },
    /// Remove device N of this account: it receives nothing more.
    RemoveDevice {
        /// The device number (see `relay devices`).
        device: u32,
    },
    /// Upload or download an end-to-end encrypted blob (a file), for developers and tests.
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Create and manage groups (membership: who is in, who is an admin, the name).
    ///
    /// The directory keeps a group's members, never its messages. Groups are named by their
    /// id (`relay groups` lists yours). Group messages come in a later version.
    #[command(subcommand)]
    Group(GroupCommand),
    /// List the groups this account is a member of.
    Groups,
    /// Show message MSG (of any chat) and, for one you sent, where each recipient device
    /// stands: every device of the peer and your other devices, each pending, sent, delivered,
    /// read or expired, and since when.
    ///
    /// MSG is the message's id as `relay history` shows it (8 hex digits, or at least 6 if they
    /// name one message). The tick aggregates the devices: delivered once every current device
    /// of the peer has it, read once any of them read it. Local only: run `relay sync` first
    /// for the latest receipts.
    Info {
        /// The message's id (or a prefix of it).
        message: String,
    },
    /// Watch PEER's presence: print whether PEER is online or when last seen, as far as PEER's
    /// privacy setting shows it to you (`hidden` when it does not).
    ///
    /// Stays connected while it watches: without --follow it exits after the first answer;
    /// with --follow SECONDS it keeps printing PEER's comings and goings and typing ("bob is
    /// typing…", "bob stopped typing") for that long, or until Ctrl-C. Nothing of it is stored.
    Presence {
        /// The account to watch.
        peer: String,
        /// Keep watching for this many seconds.
        #[arg(long, value_name = "SECONDS")]
        follow: Option<f64>,
    },
    /// Tell PEER that you are typing (PEER sees "typing…" for 6 s unless you say it again), or
    /// with --stop that you stopped.
    ///
    /// A typing indicator is never stored; one said less than 2.5 s ago is not sent again, and
    /// the edge refuses a flood (more than 8 at once, then one a second).
    Typing {
        /// The account you type to.
        peer: String,
        /// Say that you stopped typing.
        #[arg(long)]
        stop: bool,
    },
    /// Show this device's settings, or change one: `relay settings read-receipts off`,
    /// `relay settings presence contacts`.
    Settings {
        /// The setting to change.
        #[command(subcommand)]
        change: Option<SettingCommand>,
    },
    /// Block PEER: their messages stop at your home region, for every device of yours.
    ///
    /// PEER is not told: their messages are stored and answered as usual (they see ✓, never
    /// ✓✓), and none is queued for your devices while the block holds. Prints the accounts
    /// blocked now. `relay unblock PEER` lifts it; messages sent meanwhile are not delivered.
    Block {
        /// The account to block.
        peer: String,
    },
    /// Unblock PEER (see `relay block`).
    Unblock {
        /// The account to unblock.
        peer: String,
    },
    /// List the accounts you have blocked.
    Blocked,
    /// Show or change how this device is woken while it has no connection.
    ///
    /// With a registration, your home region sends a content-free push (no text, no sender, no
    /// count: the same bytes for every message) to the device's push service whenever
    /// something is queued for it and no edge holds its connection; the app then connects and
    /// fetches as usual. Without a subcommand, prints the registration and what the region
    /// offers (its providers, and for WebPush the VAPID key a browser subscribes with).
    Push {
        /// The change.
        #[command(subcommand)]
        change: Option<PushCommand>,
    },
}

/// `relay push` changes.
#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Register a browser's WebPush subscription (its PushSubscription's endpoint and keys,
    /// subscribed with the region's VAPID key as applicationServerKey).
    Webpush {
        /// The subscription's endpoint (https).
        #[arg(long)]
        endpoint: String,
        /// `keys.p256dh` (base64url).
        #[arg(long, allow_hyphen_values = true)]
        p256dh: String,
        /// `keys.auth` (base64url; it may start with `-`).
        #[arg(long, allow_hyphen_values = true)]
        auth: String,
    },
    /// Register an APNs device token (hex).
    Apns {
        /// The device token.
        token: String,
    },
    /// Register an FCM registration token.
    Fcm {
        /// The registration token (it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        token: String,
    },
    /// Remove this device's registration: it is no longer woken.
    Off,
}

/// `relay settings` changes.
#[derive(Debug, Subcommand)]
pub enum SettingCommand {
    /// Send read receipts to peers and see theirs (on, the default), or neither (off).
    ///
    /// Off: `relay read` still marks messages read here and on your other devices, but the
    /// peer is told nothing, and the peers' read receipts are not shown to you (ticks stop at
    /// delivered). A read receipt that arrives while off is dropped: it stays unseen when you
    /// turn read receipts on again.
    ReadReceipts {
        /// `on` or `off`.
        state: Switch,
    },
    /// Who may see whether you are online and when you were last seen: everyone (the
    /// default), contacts (the accounts you have 1:1 chats with now) or nobody. Kept by your
    /// home region, which tells everyone watching you at once; your own devices always see it.
    Presence {
        /// `everyone`, `contacts` or `nobody`.
        visibility: Visibility,
    },
}

/// Who may see your presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Visibility {
    /// Every account.
    Everyone,
    /// The accounts you have 1:1 chats with now (set it again to include newer chats).
    Contacts,
    /// Nobody (your own devices still see it).
    Nobody,
}

/// A setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Turned on.
    On,
    /// Turned off.
    Off,
}

/// `relay group` commands. Members are account names; GROUP is a group id.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group named NAME with you (its first admin) and MEMBERS.
    Create {
        /// The group's name (1 to 128 bytes).
        name: String,
        /// The other first members.
        members: Vec<String>,
    },
    /// Add MEMBERS to GROUP (admins only).
    Add {
        /// The group id.
        group: u64,
        /// The accounts to add.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove MEMBER from GROUP (admins only; naming yourself leaves).
    Remove {
        /// The group id.
        group: u64,
        /// The account to remove.
        member: String,
    },
    /// Leave GROUP. If you are its last admin, the member with the lowest account id becomes
    /// one.
    Leave {
        /// The group id.
        group: u64,
    },
    /// Rename GROUP (admins only).
    Rename {
        /// The group id.
        group: u64,
        /// The new name.
        name: String,
    },
    /// Make MEMBER an admin of GROUP, or with --off a plain member (admins only; anyone may
    /// step down, except the last admin).
    Admin {
        /// The group id.
        group: u64,
        /// The member.
        member: String,
        /// Make the member a plain member instead.
        #[arg(long)]
        off: bool,
    },
    /// Show GROUP with its members (members only).
    Info {
        /// The group id.
        group: u64,
    },
    /// Tell GROUP's members that you are typing in its chat (each member's connected devices
    /// show "typing…" for 6 s unless you say it again), or with --stop that you stopped. Like
    /// `relay typing`: never stored, not sent again within 2.5 s, refused past 8 at once then
    /// 1 a second; a region passes it on only if you are a member.
    Typing {
        /// The group id.
        group: u64,
        /// Say that you stopped typing.
        #[arg(long)]
        stop: bool,
    },
    /// Mark every unread message of GROUP read, and send each sender a read receipt (to the
    /// sender alone, end-to-end encrypted; with read receipts off, only your other devices
    /// learn it). A sender's tick shows read once every member it went to read it.
    Read {
        /// The group id.
        group: u64,
    },
    /// Print GROUP's messages on this device, oldest first (local only: `relay sync` first
    /// fetches what is queued).
    History {
        /// The group id.
        group: u64,
        /// At most this many of the latest messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `relay blob` commands.
#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Seal the file at PATH under a fresh key, upload it to this account's home region
    /// (resuming after a dropped connection) and print its reference.
    ///
    /// The reference (`relay-blob:2:…`) holds the key: whoever has it can download and open the
    /// blob, so share it only inside an end-to-end encrypted message. Blobs expire after 30
    /// days.
    Put {
        /// The file to upload.
        path: PathBuf,
    },
    /// Download the blob REF names, check it, open it and write it to OUT.
    Get {
        /// The reference `relay blob put` printed.
        reference: String,
        /// Where to write the opened file (replaced if it exists).
        out: PathBuf,
    },
}

/// A tick to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Until {
    /// Stored by every destination region (✓).
    Sent,
    /// Acknowledged by every current device of the peer (✓✓).
    Delivered,
    /// Read by the peer.
    Read,
}

impl From<Until> for Tick {
    fn from(until: Until) -> Self {
        match until {
            Until::Sent => Tick::Sent,
            Until::Delivered => Tick::Delivered,
            Until::Read => Tick::Read,
        }
    }
}

/// Runs the `relay` command line and returns its exit code.
pub fn main() -> ExitCode {
    // Before parsing succeeds, `--json` is looked for by hand, so a usage error is JSON too.
    let json = std::env::args().skip(1).any(|arg| arg == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) if json => {
            let message = error.kind().as_str().map_or_else(
                || error.to_string().trim().to_owned(),
                |kind| format!("{kind}: {}", error.to_string().trim()),
            );
            print_error(&message, "usage", EXIT_USAGE, true);
            return ExitCode::from(EXIT_USAGE);
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            print_error(
                &format!("cannot start the async runtime: {error}"),
                "runtime",
                EXIT_FAILURE,
                cli.json,
            );
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let client = error.downcast_ref::<ClientError>();
            let (code, exit) = match client {
                Some(error @ ClientError::TimedOut(_)) => (error.code(), EXIT_TIMEOUT),
                Some(error @ ClientError::Interrupted) => (error.code(), EXIT_INTERRUPTED),
                Some(error) => (error.code(), EXIT_FAILURE),
                None if error.downcast_ref::<UsageError>().is_some() => ("usage", EXIT_USAGE),
                None => ("failed", EXIT_FAILURE),
            };
            print_error(&format!("{error:#}"), code, exit, json);
            ExitCode::from(exit)
        }
    }
}

/// Prints an error on stderr: `error: …` (escaped like any peer text: the message may quote
/// an edge or a region), or one JSON object with `--json`.
fn print_error(message: &str, code: &str, exit_code: u8, json: bool) {
    if json {
        let line = serde_json::json!({
            "event": "error",
            "message": message,
            "code": code,
            "exit_code": exit_code,
        });
        match terminal::json_line(&line) {
            Ok(line) => eprintln!("{line}"),
            Err(_) => eprintln!("{{\"event\":\"error\",\"code\":\"{code}\"}}"),
        }
    } else {
        eprintln!("error: {}", terminal::escape(message));
    }
}

/// The history bootstrap's download as a progress bar on stderr, when it is a terminal
/// (elsewhere the `bootstrapped` line says how it ended).
fn show_bootstrap_progress(bar: &mut Option<ProgressBar>, event: &Event) {
    let Event::BootstrapProgress {
        done_bytes,
        total_bytes,
    } = event
    else {
        return;
    };
    if !std::io::stderr().is_terminal() {
        return;
    }
    let bar = bar.get_or_insert_with(|| {
        let bar = ProgressBar::new(*total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("loading the history");
        bar
    });
    bar.set_length(*total_bytes);
    bar.set_position(*done_bytes);
}

/// A progress bar for a blob transfer: on a terminal only (never with --json).
fn transfer_bar(json: bool) -> ProgressBar {
    let bar = if json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// What a transfer's progress does to `bar`; a resumption is a line (`blob_resumed` with
/// --json).
fn transfer_progress(bar: &ProgressBar, json: bool) -> impl FnMut(BlobProgress) + '_ {
    move |report: BlobProgress| {
        bar.set_length(report.total_bytes);
        bar.set_position(report.done_bytes);
        if let Some(offset) = report.resumed_from {
            if json {
                let line = serde_json::json!({"event": "blob_resumed", "offset": offset});
                if let Ok(line) = terminal::json_line(&line) {
                    println!("{line}");
                }
            } else if bar.is_hidden() {
                eprintln!("resuming from byte {offset}");
            } else {
                bar.println(format!("resuming from byte {offset}"));
            }
        }
    }
}

/// `relay send-file` and `relay send-group-file`: the upload with a progress bar, then the
/// message as `send` sends one.
#[allow(clippy::too_many_arguments)]
async fn send_file(
    data: &Path,
    overrides: Overrides,
    to: flows::FileTo<'_>,
    path: &Path,
    caption: &str,
    media_type: Option<String>,
    wait: Option<Wait>,
    json: bool,
) -> anyhow::Result<()> {
    let (device, mut events) = open(data, overrides, Mode::Live)?;
    let bar = transfer_bar(json);
    bar.set_message("uploading");
    let mut progress = transfer_progress(&bar, json);
    let mut description = FileDescription::of_path(path);
    description.media_type = media_type.unwrap_or_default();
    let file = flows::FileToSend {
        source: BlobSource::Path(path),
        description,
        caption,
    };
    let mut print = |event: Event| {
        bar.suspend(|| print_event(&event, json));
    };
    let sent = flows::send_file(
        &device,
        &mut events,
        to,
        file,
        &mut progress,
        wait,
        ctrl_c(),
        &mut print,
    )
    .await;
    bar.finish_and_clear();
    let closed = device.close().await;
    sent?;
    closed?;
    Ok(())
}

/// `relay block`, `unblock` and `blocked`: the change, then the list.
async fn blocking(
    data: &Path,
    overrides: Overrides,
    change: Option<(bool, String)>,
    json: bool,
) -> anyhow::Result<()> {
    let (device, _events) = open(data, overrides, Mode::OnDemand)?;
    let done = match &change {
        Some((true, peer)) => device.block(peer).await,
        Some((false, peer)) => device.unblock(peer).await,
        None => device.blocked().await,
    };
    let closed = device.close().await;
    let blocked = done?;
    closed?;
    if json {
        let line = serde_json::json!({"event": "blocked", "accounts": blocked});
        println!("{}", terminal::json_line(&line)?);
    } else if blocked.is_empty() {
        println!("no one is blocked");
    } else {
        println!("blocked: {}", terminal::escape(&blocked.join(", ")));
    }
    Ok(())
}

/// `relay push`: the registration, changed if asked, printed.
async fn push(device: &Device, change: Option<PushCommand>, json: bool) -> anyhow::Result<()> {
    let setting = match change {
        None => device.push_state().await?,
        Some(PushCommand::Off) => device.unregister_push().await?,
        Some(PushCommand::Webpush {
            endpoint,
            p256dh,
            auth,
        }) => {
            device
                .register_push(PushRegistration::WebPush {
                    endpoint,
                    p256dh,
                    auth,
                })
                .await?
        }
        Some(PushCommand::Apns { token }) => {
            device.register_push(PushRegistration::Apns(token)).await?
        }
        Some(PushCommand::Fcm { token }) => {
            device.register_push(PushRegistration::Fcm(token)).await?
        }
    };
    if json {
        let mut line = serde_json::to_value(&setting)?;
        line["event"] = "push".into();
        println!("{}", terminal::json_line(&line)?);
        return Ok(());
    }
    match &setting.registered {
        Some(kind) => println!("push: {kind} registered"),
        None => println!("push: not registered (this device is not woken)"),
    }
    if setting.providers.is_empty() {
        println!("your region sends no pushes");
    } else {
        println!(
            "your region pushes through: {}",
            setting.providers.join(", ")
        );
    }
    if let Some(key) = &setting.vapid_public_key {
        println!("WebPush applicationServerKey: {}", terminal::escape(key));
    }
    Ok(())
}

/// `relay download`: the attachment's file, checked, written where asked.
async fn download(
    device: &Device,
    message: &str,
    out: Option<PathBuf>,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    let attachment = device.attachment(message).await?;
    let out = out.unwrap_or_else(|| PathBuf::from(&attachment.file_name));
    if !force && out.exists() {
        return Err(UsageError(format!(
            "{} exists; name another OUT or pass --force",
            out.display()
        ))
        .into());
    }
    let bar = transfer_bar(json);
    bar.set_message("downloading");
    let mut progress = transfer_progress(&bar, json);
    // Written as it arrives beside OUT, and renamed to OUT once it checks: a failed or
    // interrupted download leaves OUT as it was.
    let existing = if force {
        IfExists::Replace
    } else {
        IfExists::Keep
    };
    let downloaded = device
        .download_file_to(message, &out, existing, &mut progress)
        .await;
    bar.finish_and_clear();
    let attachment = downloaded.with_context(|| format!("downloading into {}", out.display()))?;
    if json {
        let line = serde_json::json!({
            "event": "file_written",
            "path": out.display().to_string(),
            "bytes": attachment.file_bytes,
            "name": attachment.file_name,
            "media_type": attachment.media_type,
        });
        println!("{}", terminal::json_line(&line)?);
    } else {
        println!(
            "wrote {} ({}, {} bytes) to {}",
            terminal::escape(&attachment.file_name),
            terminal::escape(&attachment.media_type),
            attachment.file_bytes,
            terminal::escape(&out.display().to_string())
        );
    }
    Ok(())
}

/// `relay blob put` and `relay blob get`, with a progress bar on a terminal.
async fn blob(device: &Device, command: BlobCommand, json: bool) -> anyhow::Result<()> {
    let bar = transfer_bar(json);
    let mut progress = transfer_progress(&bar, json);
    match command {
        BlobCommand::Put { path } => {
            bar.set_message("uploading");
            let reference = device
                .upload_blob(BlobSource::Path(&path), &mut progress)
                .await;
            bar.finish_and_clear();
            let reference = reference?;
            let text = reference.to_text();
            if json {
                let line = serde_json::json!({
                    "event": "blob",
                    "ref": text,
                    "region": reference.region,
                    "size": reference.size,
                });
                println!("{}", terminal::json_line(&line)?);
            } else {
                println!("{text}");
            }
        }
        BlobCommand::Get { reference, out } => {
            let reference = BlobRef::from_text(&reference).map_err(ClientError::from)?;
            bar.set_message("downloading");
            // Written as it arrives, renamed to OUT once it checks; `blob get` names its OUT
            // explicitly and replaces a file there, as it always did.
            let written = device
                .download_blob_to(&reference, &out, IfExists::Replace, &mut progress)
                .await;
            bar.finish_and_clear();
            let written = written.with_context(|| format!("downloading into {}", out.display()))?;
            if json {
                let line = serde_json::json!({
                    "event": "blob_written",
                    "path": out.display().to_string(),
                    "bytes": written,
                });
                println!("{}", terminal::json_line(&line)?);
            } else {
                println!(
                    "wrote {written} bytes to {}",
                    terminal::escape(&out.display().to_string())
                );
            }
        }
    }
    Ok(())
}

/// A usage mistake found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data = cli
        .data
        .clone()
        .ok_or_else(|| UsageError("--data DIR is required (or set RELAY_DATA)".into()))?;
    let json = cli.json;
    let overrides = Overrides {
        locator: cli.locator,
        bind_ip: cli.bind,
        ca_path: cli.ca.clone(),
        device_key: cli.device_key.clone(),
    };
    let mut bootstrap_bar = None;
    let mut print = move |event: Event| {
        if !json && let Event::BootstrapProgress { .. } = event {
            show_bootstrap_progress(&mut bootstrap_bar, &event);
            return;
        }
        if let (Event::Bootstrapped { .. } | Event::BootstrapSkipped { .. }, Some(bar)) =
            (&event, bootstrap_bar.take())
        {
            bar.finish_and_clear();
        }
        print_event(&event, json)
    };
    match cli.command {
        Command::Register { name, token } => {
            register(&data, &name, overrides, &token, &mut print).await?;
        }
        Command::Send {
            peer,
            text,
            wait,
            until,
            timeout,
        } => {
            let (wait, text, mode) = send_arguments(wait, until, timeout, Until::Read, text)?;
            let (device, mut events) = open(&data, overrides, mode)?;
            let sent = flows::send(
                &device,
                &mut events,
                &peer,
                &text,
                wait,
                ctrl_c(),
                &mut print,
            )
            .await;
            let closed = device.close().await;
            sent?;
            closed?;
        }
        Command::Sync => {
            let (device, mut events) = open(&data, overrides, Mode::OnDemand)?;
            let synced = flows::sync(&device, &mut events, &mut print).await;
            let closed = device.close().await;
            synced?;
            closed?;
        }
        Command::Read { peer } => {
            let (device, mut events) = open(&data, overrides, Mode::OnDemand)?;
            let read = flows::read(&device, &mut events, &peer, &mut print).await;
            let closed = device.close().await;
            read?;
            closed?;
        }
        Command::Presence { peer, follow } => {
            let follow = follow.map(positive_seconds).transpose()?;
            let (device, mut events) = open(&data, overrides, Mode::Live)?;
            let watched =
                flows::presence(&device, &mut events, &peer, follow, ctrl_c(), &mut print).await;
            let closed = device.close().await;
            watched?;
            closed?;
        }
        Command::Typing { peer, stop } => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let sent = flows::typing(&device, &peer, !stop, &mut print).await;
            let closed = device.close().await;
            sent?;
            closed?;
        }
        Command::Listen { timeout } => {
            let timeout = timeout.map(positive_seconds).transpose()?;
            let (device, mut events) = open(&data, overrides, Mode::Live)?;
            let listened = flows::listen(&device, &mut events, timeout, ctrl_c(), &mut print).await;
            let closed = device.close().await;
            listened?;
            closed?;
        }
        Command::Link {
            timeout,
            no_bootstrap,
        } => {
            let timeout = match timeout {
                Some(seconds) => positive_seconds(seconds)?,
                None => Duration::from_millis(relay_client::limits::LINK_WAIT_MS_DEFAULT),
            };
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let linked =
                flows::link(&device, timeout, link_history(no_bootstrap), &mut print).await;
            let closed = device.close().await;
            linked?;
            closed?;
        }
        Command::LinkAccept { code } => {
            link_accept(&data, &code, overrides, &mut print).await?;
        }
        Command::Approve { code, no_bootstrap } => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let history = link_history(no_bootstrap);
            let approved = flows::approve(&device, code.as_deref(), history, &mut print).await;
            let closed = device.close().await;
            approved?;
            closed?;
        }
        Command::Devices { peer } => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let listed = flows::devices(&device, peer.as_deref(), &mut print).await;
            let closed = device.close().await;
            listed?;
            closed?;
        }
        Command::RemoveDevice { device: number } => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let removed = flows::remove_device(&device, number, &mut print).await;
            let closed = device.close().await;
            removed?;
            closed?;
        }
        Command::Edit {
            peer,
            message,
            text,
        } => {
            let text = if text == "-" {
                read_text(std::io::stdin().lock())?
            } else {
                text
            };
            change(
                &data,
                overrides,
                &peer,
                &message,
                Change::Edit(text),
                &mut print,
            )
            .await?;
        }
        Command::Delete {
            everyone,
            peer,
            message,
        } => {
            if !everyone {
                return Err(UsageError(
                    "a message is deleted for everyone or not at all: say --everyone".into(),
                )
                .into());
            }
            change(
                &data,
                overrides,
                &peer,
                &message,
                Change::Delete,
                &mut print,
            )
            .await?;
        }
        Command::React {
            peer,
            message,
            reaction,
        } => {
            change(
                &data,
                overrides,
                &peer,
                &message,
                Change::React(reaction),
                &mut print,
            )
            .await?;
        }
        Command::SendGroup {
            group,
            text,
            wait,
            until,
            timeout,
        } => {
            let (wait, text, mode) = send_arguments(wait, until, timeout, Until::Delivered, text)?;
            let (device, mut events) = open(&data, overrides, mode)?;
            let sent = flows::send_group(
                &device,
                &mut events,
                group,
                &text,
                wait,
                ctrl_c(),
                &mut print,
            )
            .await;
            let closed = device.close().await;
            sent?;
            closed?;
        }
        Command::SendFile {
            peer,
            path,
            caption,
            media_type,
            wait,
            until,
            timeout,
        } => {
            let (wait, caption, _) = send_arguments(wait, until, timeout, Until::Read, caption)?;
            let to = flows::FileTo::Peer(&peer);
            send_file(
                &data, overrides, to, &path, &caption, media_type, wait, json,
            )
            .await?;
        }
        Command::SendGroupFile {
            group,
            path,
            caption,
            media_type,
            wait,
            until,
            timeout,
        } => {
            let (wait, caption, _) =
                send_arguments(wait, until, timeout, Until::Delivered, caption)?;
            let to = flows::FileTo::Group(group);
            send_file(
                &data, overrides, to, &path, &caption, media_type, wait, json,
            )
            .await?;
        }
        Command::Download {
            message,
            out,
            force,
        } => {
            let (device, _events) = open(&data, overrides, Mode::Live)?;
            let done = download(&device, &message, out, force, json).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::Group(GroupCommand::Typing { group, stop }) => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let sent = flows::group_typing(&device, group, !stop, &mut print).await;
            let closed = device.close().await;
            sent?;
            closed?;
        }
        Command::Group(GroupCommand::Read { group }) => {
            let (device, mut events) = open(&data, overrides, Mode::OnDemand)?;
            let done = flows::read_group(&device, &mut events, group, &mut print).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::Group(GroupCommand::History { group, limit }) => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let done = flows::group_history(&device, group, limit, &mut print).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::Group(command) => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let done = group(&device, &command, &mut print).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::Groups => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let done = flows::group(&device, GroupRequest::List, &mut print).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::Blob(command) => {
            let (device, _events) = open(&data, overrides, Mode::Live)?;
            let done = blob(&device, command, json).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::Info { message } => {
            let (device, mut events) = open(&data, overrides, Mode::OnDemand)?;
            while let Some(event) = events.try_next() {
                print(event);
            }
            let info = flows::info(&device, &message, &mut print).await;
            let closed = device.close().await;
            info?;
            closed?;
        }
        Command::Block { peer } => blocking(&data, overrides, Some((true, peer)), json).await?,
        Command::Unblock { peer } => blocking(&data, overrides, Some((false, peer)), json).await?,
        Command::Blocked => blocking(&data, overrides, None, json).await?,
        Command::Push { change } => {
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let done = push(&device, change, json).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::Settings { change } => {
            let (read_receipts, presence) = match change {
                None => (None, None),
                Some(SettingCommand::ReadReceipts { state }) => (Some(state == Switch::On), None),
                Some(SettingCommand::Presence { visibility }) => (
                    None,
                    Some(match visibility {
                        Visibility::Everyone => PresenceVisibility::Everyone,
                        Visibility::Contacts => PresenceVisibility::Contacts,
                        Visibility::Nobody => PresenceVisibility::Nobody,
                    }),
                ),
            };
            let (device, _events) = open(&data, overrides, Mode::OnDemand)?;
            let done = flows::settings(&device, read_receipts, presence, &mut print).await;
            let closed = device.close().await;
            done?;
            closed?;
        }
        Command::History { peer } => {
            let (device, mut events) = open(&data, overrides, Mode::OnDemand)?;
            while let Some(event) = events.try_next() {
                print(event);
            }
            let history = flows::history(&device, &peer, &mut print).await;
            let closed = device.close().await;
            history?;
            closed?;
        }
    }
    Ok(())
}

/// What `send` and `send-group` make of their arguments: whether and for what tick to wait
/// (`default` unless --until says), the text (`-`: standard input), and the device's mode.
fn send_arguments(
    wait: bool,
    until: Option<Until>,
    timeout: Option<f64>,
    default: Until,
    text: String,
) -> anyhow::Result<(Option<Wait>, String, Mode)> {
    let wait = if wait || until.is_some() || timeout.is_some() {
        Some(Wait {
            until: Tick::from(until.unwrap_or(default)),
            timeout: positive_seconds(timeout.unwrap_or(60.0))?,
        })
    } else {
        None
    };
    let text = if text == "-" {
        read_text(std::io::stdin().lock())?
    } else {
        text
    };
    let mode = if wait.is_some() {
        Mode::Live
    } else {
        Mode::OnDemand
    };
    Ok((wait, text, mode))
}

/// `relay edit`, `delete --everyone` and `react`.
async fn change(
    data: &Path,
    overrides: Overrides,
    peer: &str,
    message: &str,
    change: Change,
    print: &mut dyn FnMut(Event),
) -> anyhow::Result<()> {
    let (device, mut events) = open(data, overrides, Mode::OnDemand)?;
    let changed = flows::change(&device, &mut events, peer, message, change, print).await;
    let closed = device.close().await;
    changed?;
    closed?;
    Ok(())
}

/// The first 8 hex digits of a message id: how `history` shows it and how `edit`, `delete` and
/// `react` take it.
fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// How `link` and `approve` give the new device the history.
fn link_history(no_bootstrap: bool) -> LinkHistory {
    if no_bootstrap {
        LinkHistory::SyncOnly
    } else {
        LinkHistory::Snapshot
    }
}

/// Seconds given on the command line as a positive duration.
fn positive_seconds(seconds: f64) -> Result<Duration, UsageError> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or_else(|| {
            UsageError(format!(
                "--timeout {seconds}: expected a positive number of seconds"
            ))
        })
}

/// The text of `relay send PEER -`: standard input, UTF-8, at most [`TEXT_BYTES_MAX`] bytes,
/// without one trailing newline (what `echo` and here-documents add).
pub fn read_text(input: impl Read) -> Result<String, ClientError> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(TEXT_BYTES_MAX).unwrap_or(u64::MAX) + 2;
    input.take(limit).read_to_end(&mut bytes).map_err(|error| {
        ClientError::Invalid(format!("cannot read the text from standard input: {error}"))
    })?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() > TEXT_BYTES_MAX {
        return Err(ClientError::Invalid(format!(
            "the text on standard input is longer than {TEXT_BYTES_MAX} bytes; nothing was sent"
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        ClientError::Invalid("the text on standard input is not UTF-8; nothing was sent".into())
    })
}

/// Completes on Ctrl-C (never, if the handler cannot be installed).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs one `relay group` command.
async fn group(
    device: &Device,
    command: &GroupCommand,
    print: &mut dyn FnMut(Event),
) -> relay_client::Result<()> {
    let members: Vec<&str> = match command {
        GroupCommand::Create { members, .. } | GroupCommand::Add { members, .. } => {
            members.iter().map(String::as_str).collect()
        }
        _ => Vec::new(),
    };
    let request = match command {
        GroupCommand::Create { name, .. } => GroupRequest::Create {
            name,
            members: &members,
        },
        GroupCommand::Add { group, .. } => GroupRequest::Add {
            group: *group,
            members: &members,
        },
        GroupCommand::Remove { group, member } => GroupRequest::Remove {
            group: *group,
            member,
        },
        GroupCommand::Leave { group } => GroupRequest::Leave { group: *group },
        GroupCommand::Rename { group, name } => GroupRequest::Rename {
            group: *group,
            name,
        },
        GroupCommand::Admin { group, member, off } => GroupRequest::Admin {
            group: *group,
            member,
            admin: !off,
        },
        GroupCommand::Info { group } => GroupRequest::Info { group: *group },
        GroupCommand::History { .. } | GroupCommand::Read { .. } | GroupCommand::Typing { .. } => {
            return Err(relay_client::ClientError::Invalid(
                "group history, read and typing are not directory requests".into(),
            ));
        }
    };
    flows::group(device, request, print).await
}

fn open(
    data: &Path,
    overrides: Overrides,
    mode: Mode,
) -> anyhow::Result<(Device, relay_client::Events)> {
    Device::open(
        data,
        OpenOptions {
            overrides,
            mode,
            ..OpenOptions::default()
        },
    )
    .with_context(|| format!("data directory {}", data.display()))
}

/// Prints one event: notes to stderr, everything else as one stdout line. Nothing a peer or a
/// server wrote reaches the terminal unescaped (see [`terminal`]).
fn print_event(event: &Event, json: bool) {
    if let Event::Note { message } = event {
        eprintln!("note: {}", terminal::escape(message));
        return;
    }
    let line = if json {
        match terminal::json_line(event) {
            Ok(line) => line,
            Err(error) => {
                eprintln!("error: cannot encode an event as JSON: {error}");
                return;
            }
        }
    } else {
        human_line(event)
    };
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (say, `| head -1`) must not panic the process; the command still finishes.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// The human-readable line of an event (see the OUTPUT section of `relay --help`), with every
/// control character of its texts and names shown escaped ([`terminal::escape`]).
pub fn human_line(event: &Event) -> String {
    // The templates hold no control characters or backslashes, so escaping the whole line
    // escapes exactly what the event's fields hold.
    terminal::escape(&unescaped_line(event))
}

/// A message's text with its file, if it has one: `📎 NAME (TYPE, SIZE) — CAPTION · relay
/// download ID`.
fn with_file(text: &str, file: Option<&FileInfo>, id: &str) -> String {
    let Some(file) = file else {
        return text.to_owned();
    };
    let caption = if text.is_empty() {
        String::new()
    } else {
        format!(" — {text}")
    };
    format!(
        "📎 {} ({}, {}){caption} · relay download {}",
        file.name,
        file.media_type,
        indicatif::HumanBytes(file.bytes),
        short_id(id)
    )
}

fn unescaped_line(event: &Event) -> String {
    match event {
        Event::Registered {
            name,
            account,
            device,
            region,
        } => {
            format!("registered {name}: account {account}, device {device}, region {region}")
        }
        Event::Listening { name } => format!("listening as {name}"),
        Event::Tick { id, peer, tick } => format!("{id} → {peer}: {}", tick.label()),
        Event::Message {
            id,
            from,
            peer,
            direction,
            time_ms,
            text,
            file,
            ..
        } => {
            let text = with_file(text, file.as_ref(), id);
            match direction {
                Direction::In => format!("[{}] {from}: {text}", format_time_ms(*time_ms)),
                Direction::Out => {
                    format!("[{}] {from} → {peer}: {text}", format_time_ms(*time_ms))
                }
            }
        }
        Event::Undecryptable {
            id,
            from,
            time_ms,
            reason,
            ..
        } => {
            format!(
                "[{}] {from}: ⚠ undecryptable message {id} ({reason})",
                format_time_ms(*time_ms)
            )
        }
        Event::Expired { id, peer, device } => {
            format!("{id} → {peer}: not delivered to device {device} (expired)")
        }
        Event::Failed { id, peer, reason } => format!("{id} → {peer}: failed ({reason})"),
        Event::GroupMessage {
            group,
            id,
            from,
            time_ms,
            text,
            file,
            undecryptable,
            tick,
            ..
        } => {
            let when = if *time_ms == 0 {
                "pending".to_owned()
            } else {
                format_time_ms(*time_ms)
            };
            let body = match undecryptable {
                Some(reason) => format!("⚠ undecryptable ({reason})"),
                None => with_file(text, file.as_ref(), id),
            };
            let tick = tick
                .map(|tick| format!("  {}", tick.label()))
                .unwrap_or_default();
            format!("[{when}] group {group} · {from}: {body}{tick}")
        }
        Event::GroupTick { group, id, tick } => {
            format!("{id} → group {group}: {}", tick.label())
        }
        Event::GroupFailed { group, id, reason } => {
            format!("{id} → group {group}: failed ({reason})")
        }
        Event::StillPending { id, peer, reason } => {
            format!(
                "{id} → {peer}: still pending ({reason}); the outbox retries it on the next relay command"
            )
        }
        Event::MarkedRead { peer, count } => format!("marked {count} message(s) from {peer} read"),
        Event::History {
            id,
            direction,
            from,
            peer,
            time_ms,
            text,
            file,
            tick,
            read,
            undecryptable,
            failed,
            edited,
            deleted,
            reactions,
            ..
        } => {
            let mut body = match (text, undecryptable, deleted) {
                (_, _, true) => "message deleted".to_owned(),
                (Some(text), _, false) => with_file(text, file.as_ref(), id),
                (None, reason, false) => format!(
                    "⚠ undecryptable ({})",
                    reason.as_deref().unwrap_or("unknown")
                ),
            };
            if *edited && !*deleted {
                body.push_str(" (edited)");
            }
            if !reactions.is_empty() {
                let shown: Vec<String> = reactions
                    .iter()
                    .map(|reaction| format!("{} {}", reaction.reaction, reaction.from))
                    .collect();
                body.push_str(&format!(" [{}]", shown.join(", ")));
            }
            let time = format_time_ms(*time_ms);
            let id = short_id(id);
            match direction {
                Direction::In => {
                    let unread = if *read == Some(false) && text.is_some() {
                        " (unread)"
                    } else {
                        ""
                    };
                    format!("{id} [{time}] ← {from}: {body}{unread}")
                }
                Direction::Out => {
                    let tick = tick.map_or("", Tick::label);
                    match failed {
                        Some(reason) => {
                            format!("{id} [{time}] → {peer}: {body} ({tick}, failed: {reason})")
                        }
                        None => format!("{id} [{time}] → {peer}: {body} ({tick})"),
                    }
                }
            }
        }
        Event::Changed {
            id,
            from,
            change,
            text,
            ..
        } => match (change, text) {
            (ChangeKind::Edit, text) => format!(
                "{from} edited {}: {} (edited)",
                short_id(id),
                text.as_deref().unwrap_or_default()
            ),
            (ChangeKind::Delete, _) => format!("{from} deleted {}: message deleted", short_id(id)),
            (ChangeKind::React, Some(reaction)) if !reaction.is_empty() => {
                format!("{from} reacted to {} with {reaction}", short_id(id))
            }
            (ChangeKind::React, _) => format!("{from} took back a reaction to {}", short_id(id)),
        },
        Event::Synced {
            received,
            ticks,
            pending,
        } => {
            format!(
                "synced: {received} new message(s), {ticks} tick change(s), {pending} pending in the outbox"
            )
        }
        Event::Note { message } => format!("note: {message}"),
        Event::BootstrapSent { device, bytes } => {
            format!("history sent to device {device} as an encrypted snapshot of {bytes} bytes")
        }
        Event::BootstrapProgress {
            done_bytes,
            total_bytes,
        } => format!("loading the history: {done_bytes}/{total_bytes} bytes"),
        Event::Bootstrapped {
            from,
            chats,
            messages,
            bytes,
        } => format!(
            "history loaded from device {from}: {chats} chat(s), {messages} message(s) (a snapshot of {bytes} bytes)"
        ),
        Event::BootstrapSkipped { from, reason } => {
            format!(
                "history bootstrap from device {from} not loaded ({reason}); the history comes by sync"
            )
        }
        Event::Connected { edge } => format!("connected to the edge at {edge}"),
        Event::Disconnected { reason, .. } => format!("disconnected ({reason})"),
        Event::RolledBack { reason } => format!("this device was refused as rolled back: {reason}"),
        Event::PairingCode {
            code,
            expires_at_ms,
        } => format!(
            "pairing code {code} (single use, until {}): on the new device run `relay --data DIR link-accept {code}`",
            format_time_ms(*expires_at_ms)
        ),
        Event::LinkRequested {
            code,
            name,
            fingerprint,
        } => {
            format!("a new device asks to join {name} with {code}; its fingerprint: {fingerprint}")
        }
        Event::Linked {
            name,
            account,
            device,
            region,
        } => format!("linked to {name}: account {account}, device {device}, region {region}"),
        Event::Group {
            id,
            name,
            version,
            home_region,
            member_count,
        } => format!(
            "group {id} \"{name}\": {member_count} member(s) (version {version}, home region {home_region})"
        ),
        Event::Receipt {
            name,
            device,
            state,
            at_ms,
            ..
        } => match at_ms {
            Some(at_ms) => format!(
                "  {name} device {device}: {} [{}]",
                state.name(),
                format_time_ms(*at_ms)
            ),
            None => format!("  {name} device {device}: {}", state.name()),
        },
        Event::Setting { name, value } => format!("{name}: {value}"),
        Event::Presence {
            peer,
            state,
            last_seen_ms,
            ..
        } => match (state.as_str(), last_seen_ms) {
            ("online", _) => format!("{peer} is online"),
            ("offline", Some(at_ms)) => {
                format!("{peer} was last seen {}", format_time_ms(*at_ms))
            }
            ("offline", None) => format!("{peer} is offline"),
            ("hidden", _) => format!("{peer}'s presence is hidden from you"),
            (other, _) => format!("{peer}: presence {other}"),
        },
        Event::Typing {
            peer,
            device,
            group,
            typing,
            ..
        } => {
            let place = group.map_or(String::new(), |group| format!(" in group {group}"));
            if *typing {
                format!("{peer} is typing{place}… (device {device})")
            } else {
                format!("{peer} stopped typing{place} (device {device})")
            }
        }
        Event::TypingSent {
            peer,
            group,
            typing,
            repeated,
        } => {
            let what = if *typing { "typing" } else { "stopped typing" };
            let to = group.map_or_else(|| peer.clone(), |group| format!("group {group}"));
            if *repeated {
                format!("{what} → {to} (said just now; not sent again)")
            } else {
                format!("{what} → {to}")
            }
        }
        Event::GroupMember { name, admin, .. } => {
            format!("  {name}{}", if *admin { " (admin)" } else { "" })
        }
        Event::GroupLeft { id } => format!("left group {id}"),
        Event::Device {
            name,
            device,
            fingerprint,
            current,
            this_device,
        } => {
            let fingerprint = if fingerprint.is_empty() {
                "fingerprint not known yet"
            } else {
                fingerprint.as_str()
            };
            let mark = match (this_device, current) {
                (true, _) => " (this device)",
                (false, false) => " (removed)",
                (false, true) => "",
            };
            format!("{name} device {device}{mark}: {fingerprint}")
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use relay_client::store::RecipientState;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "relay",
            "--data",
            "d",
            "send",
            "bob",
            "hi",
            "--until",
            "delivered",
            "--json",
        ])
        .expect("parse");
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Send {
                until: Some(Until::Delivered),
                wait: false,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["relay", "send", "bob"]).is_err());
        // Base64url keys and tokens may start with '-' (one random auth secret in 64 does).
        let cli = Cli::try_parse_from([
            "relay",
            "push",
            "webpush",
            "--endpoint",
            "https://push.example/1",
            "--p256dh",
            "-BN5n4W0v",
            "--auth",
            "-bG7Q_5pEBT02a6NYIhzRQ",
        ])
        .expect("a key starting with '-' parses");
        assert!(matches!(
            cli.command,
            Command::Push {
                change: Some(PushCommand::Webpush { ref auth, .. })
            } if auth == "-bG7Q_5pEBT02a6NYIhzRQ"
        ));
        assert!(
            Cli::try_parse_from(["relay", "push", "fcm", "-dQw4:APA91b"]).is_ok(),
            "an FCM token starting with '-'"
        );
        assert!(
            Cli::try_parse_from([
                "relay", "--data", "d", "send", "bob", "x", "--until", "soon"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from([
            "relay",
            "--data",
            "d",
            "register",
            "alice",
            "--locator",
            "127.0.0.1:53",
            "--bind",
            "127.0.1.1",
            "--ca",
            "ca.pem",
        ])
        .expect("parse");
        assert_eq!(cli.locator, Some("127.0.0.1:53".parse().expect("addr")));
    }

    #[test]
    fn human_lines_are_stable() {
        let tick = Event::Tick {
            id: "ab".into(),
            peer: "bob".into(),
            tick: Tick::Delivered,
        };
        assert_eq!(human_line(&tick), "ab → bob: delivered ✓✓");
        let message = Event::Message {
            id: "ab".into(),
            from: "bob".into(),
            peer: "bob".into(),
            direction: Direction::In,
            sender_device: "2/1".into(),
            chat_seq: 1,
            time_ms: 0,
            sent_at_ms: 0,
            text: "two\nlines".into(),
            file: None,
        };
        assert_eq!(
            human_line(&message),
            "[1970-01-01T00:00:00.000Z] bob: two\\nlines"
        );
        let history = Event::History {
            id: "ab".into(),
            direction: Direction::Out,
            from: "alice".into(),
            peer: "bob".into(),
            time_ms: 0,
            text: Some("hi".into()),
            file: None,
            tick: Some(Tick::Sent),
            read: None,
            undecryptable: None,
            failed: None,
            chat_seq: Some(3),
            edited: false,
            deleted: false,
            reactions: Vec::new(),
        };
        assert_eq!(
            human_line(&history),
            "ab [1970-01-01T00:00:00.000Z] → bob: hi (sent ✓)"
        );
        let changed = Event::History {
            id: "0123456789abcdef".into(),
            direction: Direction::In,
            from: "bob".into(),
            peer: "bob".into(),
            time_ms: 0,
            text: Some("hello again".into()),
            file: None,
            tick: None,
            read: Some(true),
            undecryptable: None,
            failed: None,
            chat_seq: Some(4),
            edited: true,
            deleted: false,
            reactions: vec![relay_client::events::Reaction {
                from: "alice".into(),
                reaction: "👍".into(),
            }],
        };
        assert_eq!(
            human_line(&changed),
            "01234567 [1970-01-01T00:00:00.000Z] ← bob: hello again (edited) [👍 alice]"
        );
        let deleted = Event::History {
            id: "0123456789abcdef".into(),
            direction: Direction::In,
            from: "bob".into(),
            peer: "bob".into(),
            time_ms: 0,
            text: None,
            file: None,
            tick: None,
            read: Some(true),
            undecryptable: None,
            failed: None,
            chat_seq: Some(4),
            edited: false,
            deleted: true,
            reactions: Vec::new(),
        };
        assert_eq!(
            human_line(&deleted),
            "01234567 [1970-01-01T00:00:00.000Z] ← bob: message deleted"
        );
        let edit = Event::Changed {
            id: "0123456789abcdef".into(),
            from: "bob".into(),
            peer: "bob".into(),
            change: ChangeKind::Edit,
            text: Some("hello again".into()),
        };
        assert_eq!(
            human_line(&edit),
            "bob edited 01234567: hello again (edited)"
        );
        let receipt = |state, at_ms| Event::Receipt {
            id: "ab".into(),
            name: "bob".into(),
            device: "2/1".into(),
            state,
            at_ms,
        };
        assert_eq!(
            human_line(&receipt(RecipientState::Read, Some(0))),
            "  bob device 2/1: read [1970-01-01T00:00:00.000Z]"
        );
        assert_eq!(
            human_line(&receipt(RecipientState::Pending, None)),
            "  bob device 2/1: pending"
        );
        let setting = Event::Setting {
            name: "read-receipts".into(),
            value: "off".into(),
        };
        assert_eq!(human_line(&setting), "read-receipts: off");
        assert_eq!(
            relay_client::terminal::json_line(&receipt(RecipientState::Delivered, Some(7)))
                .expect("json"),
            r#"{"event":"receipt","id":"ab","name":"bob","device":"2/1","state":"delivered","at_ms":7}"#
        );
    }

    #[test]
    fn peer_texts_and_names_cannot_drive_the_terminal() {
        let hostile = "\x1b[2J\x1b]0;pwned\x07hi\r";
        let message = Event::Message {
            id: "ab".into(),
            from: "m\u{202e}allory".into(),
            peer: "bob".into(),
            direction: Direction::In,
            sender_device: "2/1".into(),
            chat_seq: 1,
            time_ms: 0,
            sent_at_ms: 0,
            text: hostile.into(),
            file: None,
        };
        assert_eq!(
            human_line(&message),
            "[1970-01-01T00:00:00.000Z] m\\u{202e}allory: \\x1b[2J\\x1b]0;pwned\\x07hi\\r"
        );
        let history = Event::History {
            id: "ab".into(),
            direction: Direction::In,
            from: "mallory".into(),
            peer: "mallory".into(),
            time_ms: 0,
            text: Some(hostile.into()),
            file: None,
            tick: None,
            read: Some(true),
            undecryptable: None,
            failed: None,
            chat_seq: Some(1),
            edited: false,
            deleted: false,
            reactions: Vec::new(),
        };
        assert!(human_line(&history).ends_with("← mallory: \\x1b[2J\\x1b]0;pwned\\x07hi\\r"));
        let reacted = Event::Changed {
            id: "ab".into(),
            from: "mallory".into(),
            peer: "mallory".into(),
            change: ChangeKind::React,
            text: Some("\u{1b}[2J".into()),
        };
        assert_eq!(human_line(&reacted), "mallory reacted to ab with \\x1b[2J");
        let failed = Event::Failed {
            id: "ab".into(),
            peer: "bob".into(),
            reason: "the edge says \x1b[31mno".into(),
        };
        assert_eq!(
            human_line(&failed),
            "ab → bob: failed (the edge says \\x1b[31mno)"
        );
        let json = terminal::json_line(&message).expect("json");
        assert!(
            !json.contains('\x1b') && !json.contains('\u{202e}'),
            "{json}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("parses");
        assert_eq!(parsed["text"], hostile, "JSON keeps the text exact");
        assert_eq!(parsed["from"], "m\u{202e}allory");
    }
}
