//! Identity and settings: the registered device (`identity`, one row) and the deployment
//! settings with a few values of the device's own state (`settings`, key → value): the last
//! edge that worked, the envelope counter (`device_seq`), when the fallback key was made, and
//! whether the relay refused this device because its state went back. New values of the
//! device's own state go here as new keys, which needs no schema change.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use relay_proto::{AccountId, DeviceAddress, DeviceId};
use rusqlite::{OptionalExtension, params};

use super::{Store, Writer, to_i64, to_u32, to_u64};
use crate::error::{ClientError, Result};
use crate::fallback::FallbackTimes;

/// Settings keys of the device's own state (see the module doc).
pub(super) const NEXT_DEVICE_SEQ_KEY: &str = "next_device_seq";
const FALLBACK_MADE_AT_KEY: &str = "fallback_key_made_at_ms";
const FALLBACK_PREVIOUS_KEPT_KEY: &str = "fallback_key_previous_kept";
const ROLLED_BACK_KEY: &str = "rolled_back";
/// The settings key that says which roots to trust when no CA path is set.
const TRUST_KEY: &str = "trust";
/// [`TRUST_KEY`]'s value for the system's root certificates.
const TRUST_SYSTEM: &str = "system";
/// The settings key of the last edge a connection reached.
const LAST_EDGE_SETTING: &str = "last_edge";
/// The settings key of the read receipts switch (`on` or `off`; absent means on).
const READ_RECEIPTS_KEY: &str = "read_receipts";

/// The device this data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account.
    pub account: AccountId,
    /// This device's number.
    pub device: DeviceId,
    /// The account's name.
    pub name: String,
    /// The home region.
    pub region: u32,
    /// The home region's epoch when registered.
    pub epoch: u64,
}

impl Identity {
    /// This device's address.
    pub fn address(&self) -> DeviceAddress {
        DeviceAddress {
            account: self.account,
            device: self.device,
        }
    }
}

/// Where to find the deployment, remembered from registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The edge locator's DNS address.
    pub locator: SocketAddr,
    /// The local address sockets bind to (it decides the client's region).
    pub bind_ip: IpAddr,
    /// The deployment's CA certificate (a copy inside the data directory); `None` trusts the
    /// system's root certificates.
    pub ca_path: Option<PathBuf>,
}

impl Store {
    /// The registered identity, if any.
    pub fn identity(&self) -> Result<Option<Identity>> {
        self.connection
            .query_row(
                "SELECT account, device, name, region, epoch FROM identity WHERE singleton = 1",
                [],
                |row| {
                    Ok(Identity {
                        account: AccountId(to_u64(row.get(0)?)),
                        device: DeviceId(to_u32(row.get(1)?)),
                        name: row.get(2)?,
                        region: to_u32(row.get(3)?),
                        epoch: to_u64(row.get(4)?),
                    })
                },
            )
            .optional()
            .map_err(Into::into)
    }

    /// The remembered deployment settings, if all are set (the CA as a path, or the system's
    /// roots as `trust = system`).
    pub fn settings(&self) -> Result<Option<Settings>> {
        let locator = self.setting("locator")?;
        let bind_ip = self.setting("bind_ip")?;
        let ca_path = match (
            self.setting("ca_path")?,
            self.setting(TRUST_KEY)?.as_deref(),
        ) {
            (Some(path), _) => Some(PathBuf::from(path)),
            (None, Some(TRUST_SYSTEM)) => None,
            (None, _) => return Ok(None),
        };
        let (Some(locator), Some(bind_ip)) = (locator, bind_ip) else {
            return Ok(None);
        };
        Ok(Some(Settings {
            locator: locator
                .parse()
                .map_err(|_| ClientError::Corrupt(format!("locator {locator}")))?,
            bind_ip: bind_ip
                .parse()
                .map_err(|_| ClientError::Corrupt(format!("bind ip {bind_ip}")))?,
            ca_path,
        }))
    }

    /// The `device_seq` the next envelope of this device will get (from 1).
    pub fn next_device_seq(&self) -> Result<u64> {
        next_device_seq(self.setting(NEXT_DEVICE_SEQ_KEY)?)
    }

    /// Why the relay refused this device as rolled back, if it did (then the data directory
    /// can no longer send or receive).
    pub fn rolled_back(&self) -> Result<Option<String>> {
        self.setting(ROLLED_BACK_KEY)
    }

    /// The edge the last connection reached, tried when the locator does not answer. A value
    /// that does not parse is ignored: it is only a hint.
    pub fn last_edge(&self) -> Result<Option<SocketAddr>> {
        Ok(self
            .setting(LAST_EDGE_SETTING)?
            .and_then(|edge| edge.parse().ok()))
    }

    /// Whether this device sends read receipts to peers and shows theirs (the
    /// `read_receipts` setting; on unless turned off).
    pub fn read_receipts(&self) -> Result<bool> {
        read_receipts_value(self.setting(READ_RECEIPTS_KEY)?.as_deref())
    }

    pub(super) fn setting(&self, key: &str) -> Result<Option<String>> {
        self.connection
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(Into::into)
    }
}

impl Writer<'_> {
    /// Saves the registered identity.
    pub fn set_identity(&self, identity: &Identity) -> Result<()> {
        self.execute(
            "INSERT OR REPLACE INTO identity (singleton, account, device, name, region, epoch)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![
                to_i64(identity.account.0),
                identity.device.0,
                identity.name,
                identity.region,
                to_i64(identity.epoch)
            ],
        )?;
        Ok(())
    }

    /// Saves the deployment settings.
    pub fn set_settings(&self, settings: &Settings) -> Result<()> {
        self.set_setting("locator", &settings.locator.to_string())?;
        self.set_setting("bind_ip", &settings.bind_ip.to_string())?;
        match &settings.ca_path {
            Some(path) => {
                let path = path
                    .to_str()
                    .ok_or_else(|| ClientError::Invalid("the CA path is not valid UTF-8".into()))?;
                self.set_setting("ca_path", path)?;
                self.clear_setting(TRUST_KEY)
            }
            None => {
                self.clear_setting("ca_path")?;
                self.set_setting(TRUST_KEY, TRUST_SYSTEM)
            }
        }
    }

    /// Whether this device sends read receipts to peers and shows theirs (read inside the
    /// transaction).
    pub fn read_receipts(&self) -> Result<bool> {
        read_receipts_value(self.setting(READ_RECEIPTS_KEY)?.as_deref())
    }

    /// Turns read receipts on or off (see [`Store::read_receipts`]).
    pub fn set_read_receipts(&self, on: bool) -> Result<()> {
        self.set_setting(READ_RECEIPTS_KEY, if on { "on" } else { "off" })
    }

    /// Remembers the edge a connection reached.
    pub fn set_last_edge(&self, edge: SocketAddr) -> Result<()> {
        self.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            [LAST_EDGE_SETTING, &edge.to_string()],
        )?;
        Ok(())
    }

    /// Takes the next `device_seq` (from 1) for an envelope and advances the counter: the number
    /// is durable with the envelope before the envelope can leave, so the counter is always
    /// above every number the region has seen from this device.
    pub fn take_device_seq(&self) -> Result<u64> {
        let seq = next_device_seq(self.setting(NEXT_DEVICE_SEQ_KEY)?)?;
        self.set_setting(NEXT_DEVICE_SEQ_KEY, &(seq + 1).to_string())?;
        Ok(seq)
    }

    /// When the fallback key was made and whether the previous one is kept.
    pub fn fallback_times(&self) -> Result<FallbackTimes> {
        let made_at_ms =
            match self.setting(FALLBACK_MADE_AT_KEY)? {
                Some(value) => Some(value.parse().map_err(|_| {
                    ClientError::Corrupt(format!("{FALLBACK_MADE_AT_KEY} {value:?}"))
                })?),
                None => None,
            };
        let previous_kept = match self.setting(FALLBACK_PREVIOUS_KEPT_KEY)?.as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(value) => {
                return Err(ClientError::Corrupt(format!(
                    "{FALLBACK_PREVIOUS_KEPT_KEY} {value:?}"
                )));
            }
        };
        Ok(FallbackTimes {
            made_at_ms,
            previous_kept,
        })
    }

    /// Saves the fallback key times (with the Olm account they describe).
    pub fn set_fallback_times(&self, times: &FallbackTimes) -> Result<()> {
        match times.made_at_ms {
            Some(made_at_ms) => self.set_setting(FALLBACK_MADE_AT_KEY, &made_at_ms.to_string())?,
            None => self.clear_setting(FALLBACK_MADE_AT_KEY)?,
        }
        let kept = if times.previous_kept { "1" } else { "0" };
        self.set_setting(FALLBACK_PREVIOUS_KEPT_KEY, kept)
    }

    /// Records that the relay refused this device because its state went back.
    pub fn set_rolled_back(&self, reason: &str) -> Result<()> {
        self.set_setting(ROLLED_BACK_KEY, reason)
    }

    pub(super) fn setting(&self, key: &str) -> Result<Option<String>> {
        self.transaction
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(Into::into)
    }

    pub(super) fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        Ok(())
    }

    fn clear_setting(&self, key: &str) -> Result<()> {
        self.transaction
            .execute("DELETE FROM settings WHERE key = ?1", [key])?;
        Ok(())
    }
}

fn next_device_seq(stored: Option<String>) -> Result<u64> {
    match stored {
        None => Ok(1),
        Some(value) => value
            .parse::<u64>()
            .ok()
            .filter(|&next| next >= 1)
            .ok_or_else(|| ClientError::Corrupt(format!("{NEXT_DEVICE_SEQ_KEY} {value:?}"))),
    }
}

fn read_receipts_value(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(ClientError::Corrupt(format!(
            "read_receipts setting {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::testing::open;

    #[test]
    fn the_device_counters_and_the_rolled_back_mark_persist() {
        let (dir, mut store) = open();
        assert_eq!(store.next_device_seq().expect("read"), 1);
        assert_eq!(store.rolled_back().expect("read"), None);
        let taken = store
            .write(|w| Ok([w.take_device_seq()?, w.take_device_seq()?]))
            .expect("take");
        assert_eq!(taken, [1, 2]);
        // A transaction that fails takes nothing: the number is durable only with what used it.
        let failed: Result<u64> = store.write(|w| {
            w.take_device_seq()?;
            Err(ClientError::Invalid(
                "the envelope could not be built".into(),
            ))
        });
        assert!(failed.is_err());
        assert_eq!(store.next_device_seq().expect("read"), 3);

        let times = FallbackTimes {
            made_at_ms: Some(1_234),
            previous_kept: true,
        };
        store
            .write(|w| {
                assert_eq!(w.fallback_times()?, FallbackTimes::default());
                w.set_fallback_times(&times)?;
                w.set_rolled_back("device 1/1 is behind")
            })
            .expect("write");
        drop(store);
        let mut store = Store::open(&dir.path().join("relay.db")).expect("reopen");
        assert_eq!(store.next_device_seq().expect("read"), 3);
        assert_eq!(
            store.rolled_back().expect("read").as_deref(),
            Some("device 1/1 is behind")
        );
        assert_eq!(store.write(|w| w.fallback_times()).expect("read"), times);
        // A damaged value is a typed error, not a panic or a silent reset.
        store
            .write(|w| w.set_setting(NEXT_DEVICE_SEQ_KEY, "seven"))
            .expect("write");
        assert!(matches!(
            store.next_device_seq(),
            Err(ClientError::Corrupt(_))
        ));
    }
}
