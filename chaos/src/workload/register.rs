//! Registering a client's account through its edge, retrying while the deployment starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use relay_client::{ClientError, Environment, Event, Overrides, register_in};

use super::{ClientSetup, REGISTRATION_ATTEMPTS_MAX, REGISTRATION_RETRY_MS};
use crate::history::{What, client_name};

/// Registers the client's account through its edge, retrying while the deployment starts.
pub(super) async fn register(
    setup: &ClientSetup,
    environment: &Environment,
    edge: SocketAddr,
) -> turmoil::Result {
    let me = setup.plan.client;
    let overrides = Overrides {
        // Never asked: the dialer's edges are fixed.
        locator: Some(edge),
        bind_ip: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ca_path: Some(setup.ca_path.clone()),
        device_key: None,
    };
    let (account, region) = register_retrying(
        environment,
        &setup.data_dir,
        me,
        overrides,
        REGISTRATION_ATTEMPTS_MAX,
        Duration::from_millis(REGISTRATION_RETRY_MS),
    )
    .await
    .map_err(|error| format!("{} cannot register: {error}", client_name(me)))?;
    let mut shared = setup.shared.borrow_mut();
    shared.record(What::Registered {
        client: me,
        account,
        region,
    });
    shared.progress.accounts.insert(me, account);
    Ok(())
}

/// Registers client `me` (named `c<me>`) in `data_dir`, retrying up to `attempts` times while
/// the error is one a retry can fix; returns its account id and home region.
pub async fn register_retrying(
    environment: &Environment,
    data_dir: &Path,
    me: u32,
    overrides: Overrides,
    attempts: u32,
    pause: Duration,
) -> Result<(u64, u32), ClientError> {
    let mut attempt = 1;
    loop {
        let mut registration = None;
        let mut sink = |event: Event| {
            if let Event::Registered {
                account, region, ..
            } = event
            {
                registration = Some((account, region));
            }
        };
        let registered = register_in(
            environment,
            data_dir,
            &client_name(me),
            overrides.clone(),
            "",
            &mut sink,
        )
        .await;
        match registered {
            Ok(_) => return Ok(registration.unwrap_or_default()),
            Err(error)
                if attempt < attempts && (error.is_retryable() || error.needs_reconnect()) =>
            {
                attempt += 1;
                tokio::time::sleep(pause).await;
            }
            Err(error) => return Err(error),
        }
    }
}
