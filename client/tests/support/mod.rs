//! What the SDK's deployment tests share: a device's overrides for a testbed region, people
//! registered in their regions, and a live device opened on a data directory.

use std::path::Path;

use relay_client::{Device, Events, Mode, OpenOptions, Overrides};
use relay_devnet::testbed::Testbed;

/// The overrides that make a device of `region` use `testbed`'s locator, address and CA.
pub fn overrides(testbed: &Testbed, region: u32) -> Overrides {
    Overrides {
        locator: Some(testbed.locator()),
        bind_ip: Some(testbed.client_bind(region)),
        ca_path: Some(testbed.ca().to_path_buf()),
        device_key: None,
    }
}

/// Registers each `(name, region)` of `people` in `root/name`, homed in that region.
pub async fn register_all(testbed: &Testbed, root: &Path, people: &[(&str, u32)]) {
    for &(name, region) in people {
        relay_client::register(
            &root.join(name),
            name,
            overrides(testbed, region),
            "",
            &mut |_| {},
        )
        .await
        .unwrap_or_else(|error| panic!("{name} registers: {error}"));
    }
}

/// The device registered in `dir`, opened live (connected while open).
pub async fn live(dir: &Path) -> (Device, Events) {
    Device::open(
        dir,
        OpenOptions {
            mode: Mode::Live,
            ..OpenOptions::default()
        },
    )
    .expect("opens")
}
