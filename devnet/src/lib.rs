//! Relay's devnet as a library: the whole topology (regions, their edges, the edge locator) as
//! separate `relayd` processes on loopback, with its own certificate authority.
//!
//! - [`launcher`] runs a devnet in this process ([`run`]): it starts and supervises the
//!   children and reports what happens as [`DevnetEvent`]s; `relayd devnet` is this plus
//!   printing.
//! - [`events`] is the one type those events have: `relayd devnet --json` prints each as a JSON
//!   line, and everything that follows a devnet reads the lines back through it.
//! - [`process`] follows a devnet run as a child process (`relayd devnet --json`), tracking
//!   each child's pid and signalling only the devnet's own children: what `relayd chaos`, the
//!   drills and the tests use.
//! - [`pki`] issues the devnet's CA and the certificates of its regions and edges.
//! - [`testbed`] runs the same topology inside the current process (regions, edges and the
//!   locator as tasks, real stores in a temporary folder), for tests and doc tests.

mod error;
pub mod events;
pub mod launcher;
pub mod limits;
pub mod pki;
pub mod process;
pub mod testbed;

pub use error::DevnetError;
pub use events::{DevnetEvent, Ready, RegionReady};
pub use launcher::{DOWN_SUFFIX, DevnetOptions, FENCED_EXIT_CODE, region_ip, run};
pub use process::{DevnetProcess, DevnetSettings, DevnetState};
