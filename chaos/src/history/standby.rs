//! The standby check: at the end of a run with standbys, each standby's copy is its region's
//! store, pair for pair (every commit the region made reached it, and nothing else did).

use fdb_layers::MemoryDisk;

use super::{Invariant, Violation};

/// Differences shown in a violation at most.
const DIFFERENCES_SHOWN_MAX: usize = 3;

/// Whether the copy has caught up with the store (its version is the store's): only then can
/// they be compared.
pub fn standby_caught_up(store: &MemoryDisk, copy: &MemoryDisk) -> bool {
    copy.version() == store.version()
}

/// Checks that `copy`, region `region`'s standby's copy, holds exactly what `store`, the
/// region's own disk, holds, once the run has settled.
pub fn check_standby(region: u32, store: &MemoryDisk, copy: &MemoryDisk) -> Vec<Violation> {
    if !standby_caught_up(store, copy) {
        return vec![Violation {
            invariant: Invariant::Standby,
            detail: format!(
                "region {region}'s standby never caught up: its copy is at version {}, the \
                 region's store at {}",
                copy.version(),
                store.version()
            ),
        }];
    }
    let pairs = |disk: &MemoryDisk| {
        let mut pairs = Vec::new();
        disk.for_each_latest(|key, value| pairs.push((key.to_vec(), value.to_vec())));
        pairs
    };
    let (stored, copied) = (pairs(store), pairs(copy));
    if stored == copied {
        return Vec::new();
    }
    let mut differences = Vec::new();
    let (mut left, mut right) = (stored.iter().peekable(), copied.iter().peekable());
    loop {
        let difference = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some((key, _)), None) => {
                left.next();
                format!("{} only in the store", printable(key))
            }
            (None, Some((key, _))) => {
                right.next();
                format!("{} only in the copy", printable(key))
            }
            (Some((key, value)), Some((copied_key, copied_value))) => {
                if key < copied_key {
                    left.next();
                    format!("{} only in the store", printable(key))
                } else if copied_key < key {
                    right.next();
                    format!("{} only in the copy", printable(copied_key))
                } else {
                    left.next();
                    right.next();
                    if value == copied_value {
                        continue;
                    }
                    format!("{} differs", printable(key))
                }
            }
        };
        differences.push(difference);
    }
    let shown: Vec<&str> = differences
        .iter()
        .take(DIFFERENCES_SHOWN_MAX)
        .map(String::as_str)
        .collect();
    vec![Violation {
        invariant: Invariant::Standby,
        detail: format!(
            "region {region}'s standby is at the store's version {} but holds other pairs: {} \
             difference(s), {}",
            store.version(),
            differences.len(),
            shown.join("; ")
        ),
    }]
}

/// A key as text: printable bytes as they are, the rest escaped.
fn printable(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use fdb_layers::{Database, MemoryOptions};

    use super::*;

    async fn write(disk: &MemoryDisk, key: &'static [u8], value: &'static [u8]) {
        let database = Database::memory(MemoryOptions {
            disk: disk.clone(),
            ..MemoryOptions::default()
        })
        .expect("opens");
        database
            .transact(|transaction| async move { transaction.set(key, value) })
            .await
            .expect("commits");
        disk.crash();
    }

    #[tokio::test]
    async fn a_copy_behind_or_different_is_caught_and_an_equal_one_passes() {
        let (store, copy) = (MemoryDisk::new(), MemoryDisk::new());
        write(&store, b"a", b"1").await;
        let behind = check_standby(1, &store, &copy);
        assert!(behind[0].detail.contains("never caught up"), "{behind:?}");
        write(&copy, b"b", b"1").await;
        let different = check_standby(1, &store, &copy);
        assert_eq!(different.len(), 1);
        assert!(
            different[0].detail.contains("2 difference(s)")
                && different[0].detail.contains("a only in the store")
                && different[0].detail.contains("b only in the copy"),
            "{different:?}"
        );
        let (store, copy) = (MemoryDisk::new(), MemoryDisk::new());
        write(&store, b"a", b"1").await;
        write(&copy, b"a", b"1").await;
        assert!(check_standby(1, &store, &copy).is_empty());
    }
}
