//! Contacts (`contacts`: accounts known by name) and the devices of accounts (`devices`: their
//! identity keys, trusted on first use, and whether each is among its account's current
//! devices).

use relay_proto::{AccountId, DeviceAddress, DeviceId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Store, Writer, to_i64, to_u32, to_u64};
use crate::error::{ClientError, Result};

/// An account known by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The account.
    pub account: AccountId,
    /// Its name.
    pub name: String,
    /// Its home region.
    pub region: u32,
}

/// A device of some account, as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDevice {
    /// The device.
    pub address: DeviceAddress,
    /// Its Curve25519 identity key, trusted on first use.
    pub identity_key: Option<[u8; 32]>,
    /// Whether it is among its account's current devices.
    pub current: bool,
}

impl Store {
    /// A contact by name.
    pub fn contact_by_name(&self, name: &str) -> Result<Option<Contact>> {
        self.connection
            .query_row(
                "SELECT account, name, region FROM contacts WHERE name = ?1",
                [name],
                contact_row,
            )
            .optional()
            .map_err(Into::into)
    }

    /// A contact by account.
    pub fn contact_by_account(&self, account: AccountId) -> Result<Option<Contact>> {
        self.connection
            .query_row(
                "SELECT account, name, region FROM contacts WHERE account = ?1",
                [to_i64(account.0)],
                contact_row,
            )
            .optional()
            .map_err(Into::into)
    }

    /// The accounts of this device's 1:1 chats (a message in or out), at most `limit`, in
    /// account order: "contacts" for the presence privacy setting.
    pub fn chat_peers(&self, limit: usize) -> Result<Vec<AccountId>> {
        let mut statement = self
            .connection
            .prepare("SELECT DISTINCT peer FROM messages ORDER BY peer LIMIT ?1")?;
        let rows = statement.query_map([to_i64(limit as u64)], |row| row.get::<_, i64>(0))?;
        let mut peers = Vec::new();
        for row in rows {
            peers.push(AccountId(to_u64(row?)));
        }
        Ok(peers)
    }

    /// The devices of `account` this device knows of.
    pub fn known_devices(&self, account: AccountId) -> Result<Vec<KnownDevice>> {
        known_devices(&self.connection, account)
    }

    /// The trusted identity key of a device, if known.
    pub fn identity_key(&self, device: DeviceAddress) -> Result<Option<[u8; 32]>> {
        Ok(self
            .known_devices(device.account)?
            .into_iter()
            .find(|known| known.address == device)
            .and_then(|known| known.identity_key))
    }
}

impl Writer<'_> {
    /// Saves a contact (a name may move to another account only if the directory says so).
    pub fn upsert_contact(&self, contact: &Contact) -> Result<()> {
        self.execute(
            "DELETE FROM contacts WHERE name = ?1 AND account != ?2",
            params![contact.name, to_i64(contact.account.0)],
        )?;
        self.execute(
            "INSERT INTO contacts (account, name, region) VALUES (?1, ?2, ?3)
             ON CONFLICT (account) DO UPDATE SET name = excluded.name, region = excluded.region",
            params![to_i64(contact.account.0), contact.name, contact.region],
        )?;
        Ok(())
    }

    /// Records a device: trusts its identity key on first use and refuses a different one later.
    pub fn trust_device(
        &self,
        device: DeviceAddress,
        identity_key: &[u8; 32],
        current: bool,
    ) -> Result<()> {
        let known: Option<Option<Vec<u8>>> = self
            .transaction
            .query_row(
                "SELECT identity_key FROM devices WHERE account = ?1 AND device = ?2",
                params![to_i64(device.account.0), device.device.0],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(Some(known)) = &known
            && known.as_slice() != identity_key
        {
            return Err(ClientError::IdentityChanged(device));
        }
        self.execute(
            "INSERT INTO devices (account, device, identity_key, current) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (account, device) DO UPDATE SET identity_key = excluded.identity_key,
             current = MAX(current, excluded.current)",
            params![
                to_i64(device.account.0),
                device.device.0,
                identity_key.as_slice(),
                current
            ],
        )?;
        Ok(())
    }

    /// The devices of `account` this device knows of (read inside the transaction).
    pub fn known_devices(&self, account: AccountId) -> Result<Vec<KnownDevice>> {
        known_devices(self.transaction, account)
    }

    /// The trusted identity key of a device, if known (read inside the transaction).
    pub fn identity_key(&self, device: DeviceAddress) -> Result<Option<[u8; 32]>> {
        let key: Option<Option<Vec<u8>>> = self
            .transaction
            .query_row(
                "SELECT identity_key FROM devices WHERE account = ?1 AND device = ?2",
                params![to_i64(device.account.0), device.device.0],
                |row| row.get(0),
            )
            .optional()?;
        match key.flatten() {
            None => Ok(None),
            Some(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
                .map(Some)
                .map_err(|_| ClientError::Corrupt("identity key length".into())),
        }
    }

    /// Sets the current devices of `account` to exactly `devices` (others stay known, not current).
    pub fn set_current_devices(&self, account: AccountId, devices: &[DeviceId]) -> Result<()> {
        let account = to_i64(account.0);
        self.execute(
            "UPDATE devices SET current = 0 WHERE account = ?1",
            [account],
        )?;
        for device in devices {
            self.execute(
                "INSERT INTO devices (account, device, identity_key, current) VALUES (?1, ?2, NULL, 1)
                 ON CONFLICT (account, device) DO UPDATE SET current = 1",
                params![account, device.0],
            )?;
        }
        Ok(())
    }
}

fn contact_row(row: &Row<'_>) -> rusqlite::Result<Contact> {
    Ok(Contact {
        account: AccountId(to_u64(row.get(0)?)),
        name: row.get(1)?,
        region: to_u32(row.get(2)?),
    })
}

fn known_devices(connection: &Connection, account: AccountId) -> Result<Vec<KnownDevice>> {
    let mut statement = connection.prepare(
        "SELECT device, identity_key, current FROM devices WHERE account = ?1 ORDER BY device",
    )?;
    let rows = statement.query_map([to_i64(account.0)], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<Vec<u8>>>(1)?,
            row.get::<_, bool>(2)?,
        ))
    })?;
    let mut devices = Vec::new();
    for row in rows {
        let (device, identity_key, current) = row?;
        let identity_key = match identity_key {
            Some(bytes) => Some(
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| ClientError::Corrupt("identity key length".into()))?,
            ),
            None => None,
        };
        devices.push(KnownDevice {
            address: DeviceAddress {
                account,
                device: DeviceId(to_u32(device)),
            },
            identity_key,
            current,
        });
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{device, open};

    #[test]
    fn devices_are_trusted_on_first_use() {
        let (_dir, mut store) = open();
        let bob = device(2, 1);
        store
            .write(|w| w.trust_device(bob, &[1; 32], true))
            .expect("trust");
        store
            .write(|w| w.trust_device(bob, &[1; 32], true))
            .expect("same key again");
        assert!(matches!(
            store.write(|w| w.trust_device(bob, &[2; 32], true)),
            Err(ClientError::IdentityChanged(_))
        ));
        store
            .write(|w| w.set_current_devices(AccountId(2), &[DeviceId(2)]))
            .expect("current");
        let devices = store.known_devices(AccountId(2)).expect("devices");
        assert_eq!(devices.len(), 2);
        assert!(!devices[0].current && devices[0].identity_key == Some([1; 32]));
        assert!(devices[1].current && devices[1].identity_key.is_none());
        assert_eq!(store.identity_key(bob).expect("key"), Some([1; 32]));

        let contact = Contact {
            account: AccountId(2),
            name: "bob".into(),
            region: 1,
        };
        store
            .write(|w| w.upsert_contact(&contact))
            .expect("contact");
        assert_eq!(
            store.contact_by_name("bob").expect("read"),
            Some(contact.clone())
        );
        assert_eq!(
            store.contact_by_account(AccountId(2)).expect("read"),
            Some(contact)
        );
    }
}
