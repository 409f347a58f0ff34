//! A real full disk: the store's file lives on a small tmpfs that the store's own writes and a
//! filler file fill up. Commits then fail with `StoreError::Unavailable` and nothing is
//! acknowledged, reads go on, and once the filler is deleted commits succeed again in the same
//! process. Reopened afterwards, the file holds every acknowledged commit, and every failed one
//! whole or not at all.
//!
//! Mounting needs root (CI runs as root). Where it is not permitted the test says why and
//! passes only if the refusal is a permission error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fdb_layers::{Database, EmbeddedOptions, StoreError};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// Size of the tmpfs, in bytes (`size=` below says the same).
const FILESYSTEM_BYTES: usize = 8 * 1024 * 1024;
/// The mount's options.
const MOUNT_OPTIONS: &std::ffi::CStr = c"size=8m,mode=0700";
/// Bytes of the filler file: the store's writes fill the rest.
const FILLER_BYTES: usize = 5 * 1024 * 1024;
/// Bytes of each of the two values of a commit.
const VALUE_BYTES: usize = 90_000;
/// Most commits written while filling the disk: together far more than the filesystem holds.
const FILLING_COMMITS_MAX: usize = 2 * FILESYSTEM_BYTES / (2 * VALUE_BYTES);
/// Commits sent on the full disk after the first failure.
const COMMITS_ON_A_FULL_DISK: usize = 20;
/// Longest wait for commits to succeed once space is freed.
const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(30);

/// Unmounts the tmpfs when dropped, even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(error) = rustix::mount::unmount(&self.0, UnmountFlags::empty()) {
            // Something still has a file open there (a failing test's database): detach it,
            // so the mount goes away once that is closed.
            eprintln!("unmounting {}: {error}; detaching it", self.0.display());
            let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

/// Mounts a tmpfs of [`FILESYSTEM_BYTES`] at `target`; `None` where mounting is not
/// permitted (after checking that this is why it failed).
fn mount_tmpfs(target: &Path) -> Option<Mounted> {
    match rustix::mount::mount("tmpfs", target, "tmpfs", MountFlags::empty(), MOUNT_OPTIONS) {
        Ok(()) => Some(Mounted(target.to_path_buf())),
        Err(error) => {
            assert!(
                error == Errno::PERM || error == Errno::ACCESS,
                "mounting a tmpfs failed for another reason than permission: {error}"
            );
            eprintln!(
                "skipped: mounting a tmpfs is not permitted here ({error}); the test needs root"
            );
            None
        }
    }
}

/// The value both keys of commit `name` hold.
fn value_of(name: &str) -> Vec<u8> {
    let mut value = name.as_bytes().to_vec();
    value.resize(VALUE_BYTES, b'.');
    value
}

/// Commits `name/a` and `name/b` in one transaction.
async fn commit(database: &Database, name: &str) -> Result<(), StoreError> {
    let key = name.as_bytes().to_vec();
    let value = value_of(name);
    database
        .transact(|tx| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                tx.set(&[key.as_slice(), b"/a"].concat(), &value)?;
                tx.set(&[key.as_slice(), b"/b"].concat(), &value)
            }
        })
        .await
}

/// The values of `name/a` and `name/b`.
async fn read(database: &Database, name: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let key = name.as_bytes().to_vec();
    database
        .transact(|tx| {
            let key = key.clone();
            async move {
                Ok((
                    tx.get(&[key.as_slice(), b"/a"].concat()).await?,
                    tx.get(&[key.as_slice(), b"/b"].concat()).await?,
                ))
            }
        })
        .await
        .expect("reads work")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_fails_commits_until_space_is_freed() {
    let folder = tempfile::tempdir().expect("folder");
    let mount_point = folder.path().join("disk");
    std::fs::create_dir(&mount_point).expect("mount point");
    let Some(_mounted) = mount_tmpfs(&mount_point) else {
        return;
    };
    let path = mount_point.join("store.redb");
    let filler = mount_point.join("filler");
    std::fs::write(&filler, vec![0xf1; FILLER_BYTES]).expect("the filler fits");

    let database = Database::open(&path, EmbeddedOptions::default()).expect("open");
    let mut acknowledged = Vec::new();
    let mut failed = Vec::new();
    // The store's own writes fill the rest of the filesystem.
    let mut full = false;
    for index in 0..FILLING_COMMITS_MAX {
        let name = format!("filling/{index}");
        match commit(&database, &name).await {
            Ok(()) => acknowledged.push(name),
            Err(StoreError::Unavailable(message)) => {
                eprintln!("the filesystem is full after {index} commits: {message}");
                failed.push(name);
                full = true;
                break;
            }
            Err(error) => panic!("{name}: {error}"),
        }
    }
    assert!(
        full,
        "{FILLING_COMMITS_MAX} commits did not fill the filesystem"
    );
    assert!(!acknowledged.is_empty(), "the store had room at first");

    // The disk stays full: nothing more is acknowledged, and reads go on.
    for index in 0..COMMITS_ON_A_FULL_DISK {
        let name = format!("full/{index}");
        match commit(&database, &name).await {
            Err(StoreError::Unavailable(_)) => failed.push(name),
            other => panic!("{name} on a full disk: {other:?}"),
        }
    }
    let first = &acknowledged[0];
    let expected = Some(value_of(first));
    assert_eq!(read(&database, first).await, (expected.clone(), expected));

    // Space comes back: commits succeed again, in the same process.
    std::fs::remove_file(&filler).expect("delete the filler");
    let start = Instant::now();
    for index in 0.. {
        let name = format!("freed/{index}");
        match commit(&database, &name).await {
            Ok(()) => {
                eprintln!(
                    "commits succeed again {:.2} s after the filler was deleted",
                    start.elapsed().as_secs_f64()
                );
                acknowledged.push(name);
                break;
            }
            Err(StoreError::Unavailable(_)) => failed.push(name),
            Err(error) => panic!("{name}: {error}"),
        }
        assert!(
            start.elapsed() < RECOVERY_WAIT_MAX,
            "commits still fail {RECOVERY_WAIT_MAX:?} after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for index in 0..5 {
        let name = format!("after/{index}");
        commit(&database, &name)
            .await
            .expect("a commit after space was freed");
        acknowledged.push(name);
    }
    let stats = database.stats();
    assert!(stats.failed_group_commits > 0, "{stats:?}");
    drop(database);

    // Reopened: every acknowledged commit is there, every failed one whole or absent.
    let database = Database::open(&path, EmbeddedOptions::default()).expect("reopen");
    for name in &acknowledged {
        let expected = Some(value_of(name));
        assert_eq!(
            read(&database, name).await,
            (expected.clone(), expected),
            "{name}"
        );
    }
    let mut durable = 0;
    for name in &failed {
        let (a, b) = read(&database, name).await;
        assert_eq!(a, b, "{name} is whole or absent");
        durable += usize::from(a.is_some());
    }
    eprintln!(
        "{} acknowledged commits found after reopening; {durable} of {} failed ones are there",
        acknowledged.len(),
        failed.len()
    );
}
