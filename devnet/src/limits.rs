//! Every bound of the devnet in one place, with units in the names.

/// Most regions a devnet runs (region k uses 127.0.k.0/24).
pub const DEVNET_REGIONS_MAX: u32 = 16;
/// How long a child may take to print its "listening on" line, in ms.
pub const CHILD_START_TIMEOUT_MS: u64 = 30_000;
/// How long a child may take to exit after SIGTERM before it is killed, in ms.
pub const CHILD_STOP_TIMEOUT_MS: u64 = 5_000;
/// Pause before restarting a child that died, in ms; it doubles after each failed restart.
pub const CHILD_RESTART_DELAY_MS: u64 = 200;
/// Longest pause between two restarts of a child that keeps failing to start (a region that
/// refuses its store fails the same way until an operator acts), in ms.
pub const CHILD_RESTART_DELAY_MS_MAX: u64 = 10_000;
/// Bytes of a child's log read back to find why it exited before listening.
pub const CHILD_LOG_TAIL_BYTES_MAX: u64 = 64 * 1024;
/// Lines of a child's log quoted when it exits before listening.
pub const CHILD_LOG_TAIL_LINES: usize = 6;
/// Events of a running devnet waiting to be handed to its caller.
pub const EVENTS_BUFFERED_MAX: usize = 256;
/// How long `relayd devnet` (followed as a child process) may take to print `ready`, in ms.
pub const DEVNET_READY_TIMEOUT_MS: u64 = 120_000;
/// How long a devnet process may take to stop after SIGTERM before it is killed, in ms.
pub const DEVNET_STOP_TIMEOUT_MS: u64 = 30_000;
/// How long a devnet's region waits for its standby (`--standbys`) to confirm a commit before
/// it refuses writes, in ms: five times a region's default, since a devnet shares its machine
/// with builds and test runs (under such load a region once refused to start, its standby
/// 2 s late with the first commit).
pub const DEVNET_STANDBY_ACK_TIMEOUT_MS: u64 = 10_000;

// Region k's addresses are 127.0.k.x.
const _: () = assert!(DEVNET_REGIONS_MAX <= 254);
// A region starting on an empty store waits for the directory writer's census; the devnet must
// wait longer for its "listening" line than that.
const _: () = assert!(
    CHILD_START_TIMEOUT_MS > home_region::limits::WRITER_CENSUS_WAIT_MS_MAX,
    "a region waiting for the directory writer would be killed as too slow to start"
);
const _: () = assert!(CHILD_RESTART_DELAY_MS < CHILD_RESTART_DELAY_MS_MAX);
// A devnet is ready only once every child started.
const _: () = assert!(DEVNET_READY_TIMEOUT_MS > CHILD_START_TIMEOUT_MS);
// A devnet stopping waits for its children to stop.
const _: () = assert!(DEVNET_STOP_TIMEOUT_MS > CHILD_STOP_TIMEOUT_MS);
