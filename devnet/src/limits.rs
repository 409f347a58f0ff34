//! Every bound of the devnet in one place, with units in the names.

/// Most regions a devnet runs (region k uses 127.0.k.0/24).
pub const DEVNET_REGIONS_MAX: u32 = 16;
/// How long a child may take to print its "listening on" line, in ms.
pub const CHILD_START_TIMEOUT_MS: u64 = 30_000;
/// How long a child may take to exit after SIGTERM before it is killed, in ms.
pub const CHILD_STOP_TIMEOUT_MS: u64 = 5_000;
/// Pause before restarting a child that died, in ms.
pub const CHILD_RESTART_DELAY_MS: u64 = 200;
/// Lines of a child's log quoted when it exits before listening.
pub const CHILD_LOG_TAIL_LINES: usize = 6;
/// Events of a running devnet waiting to be handed to its caller.
pub const EVENTS_BUFFERED_MAX: usize = 256;
/// How long `relayd devnet` (followed as a child process) may take to print `ready`, in ms.
pub const DEVNET_READY_TIMEOUT_MS: u64 = 120_000;
/// How long a devnet process may take to stop after SIGTERM before it is killed, in ms.
pub const DEVNET_STOP_TIMEOUT_MS: u64 = 30_000;

// Region k's addresses are 127.0.k.x.
const _: () = assert!(DEVNET_REGIONS_MAX <= 254);
// A devnet is ready only once every child started.
const _: () = assert!(DEVNET_READY_TIMEOUT_MS > CHILD_START_TIMEOUT_MS);
// A devnet stopping waits for its children to stop.
const _: () = assert!(DEVNET_STOP_TIMEOUT_MS > CHILD_STOP_TIMEOUT_MS);
