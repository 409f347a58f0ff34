//! The blob store through real `relayd devnet` processes: alice (region 1) uploads 20 MB blobs
//! with the client library, straight to region 1's media endpoint. Her edge killed mid-upload
//! does not touch the upload (its bytes never pass through the edge); region 1 killed
//! mid-upload, after it committed some of it, makes the upload resume from the region's
//! committed offset once the region is back, under a new pass, instead of starting over. bob
//! (region 2, another account, given the reference as a message would carry it) downloads it
//! from region 1's media endpoint and gets the same bytes, into memory and into a file
//! (replaced only by a download that checks); region 1's blob folder holds only ciphertext.
//! (`media.rs` takes the route through the edges, on a devnet without media endpoints.)

mod support;

use std::path::{Path, PathBuf};

use relay_client::blob::BlobCryptoError;
use relay_client::error::ClientError;
use relay_client::{
    BlobProgress, BlobRef, BlobSource, Device, Environment, IfExists, Mode, OpenOptions, Overrides,
    register_in,
};
use relay_proto::limits::BLOB_COMMIT_UNIT_BYTES;
use support::{Devnet, send_signal};

/// The blob of issue 14's journey: 20 MB.
const BLOB_BYTES: usize = 20 * 1000 * 1000;
/// Units region 1 must have committed before the edge is killed, so a resumption from 0 would
/// show.
const UNITS_BEFORE_KILL: usize = 3;

/// Bytes no file holds by chance: a xorshift stream.
fn plaintext(length: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// Every file under `folder`, with its bytes.
fn files_under(folder: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files
}

async fn open_device(devnet: &Devnet, root: &Path, name: &str, region: u32) -> Device {
    let data = root.join(name);
    let overrides = Overrides {
        locator: Some(devnet.ready.locator),
        bind_ip: Some(devnet.region(region).client_bind),
        ca_path: Some(devnet.ready.ca.clone()),
        ..Overrides::default()
    };
    register_in(
        &Environment::default(),
        &data,
        name,
        overrides,
        "",
        &mut |_| {},
    )
    .await
    .unwrap_or_else(|error| panic!("{name} registers: {error}"));
    let options = OpenOptions {
        mode: Mode::Live,
        ..OpenOptions::default()
    };
    let (device, _events) = Device::open(&data, options).expect("the device opens");
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_blob_bypasses_the_edge_resumes_after_its_region_dies_and_reaches_another_account()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let alice = open_device(&devnet, dir.path(), "alice", 1).await;
    let bob = open_device(&devnet, dir.path(), "bob", 2).await;
    let blob_folder = devnet.data.join("region-1").join("blobs");
    let plain = plaintext(BLOB_BYTES);

    // The edge dies mid-upload: the stream to the media endpoint goes on.
    let edge_pid = devnet.region(1).edge_pid;
    let mut edge_killed = false;
    let mut edge_resumed = Vec::new();
    let mut progress = |report: BlobProgress| {
        if let Some(offset) = report.resumed_from {
            edge_resumed.push(offset);
        }
        if !edge_killed
            && files_under(&blob_folder).len() >= UNITS_BEFORE_KILL
            && report.done_bytes < report.total_bytes
        {
            send_signal(edge_pid, "KILL");
            edge_killed = true;
        }
    };
    let first = alice
        .upload_blob(BlobSource::Bytes(&plain[..BLOB_BYTES / 2]), &mut progress)
        .await
        .expect("the upload does not need the edge's stream");
    assert!(edge_killed, "the edge was killed mid-upload");
    // Its stream did not break with the edge (it goes to the region directly): every byte
    // was committed by the first stream, and nothing resumed. Only the finish, a request
    // through the edge, may have waited for the edge to come back.
    assert_eq!(
        edge_resumed,
        Vec::<u64>::new(),
        "the upload resumed: its bytes went through the edge"
    );
    let units_before = files_under(&blob_folder).len();
    assert_eq!(
        units_before as u64,
        first.size.div_ceil(BLOB_COMMIT_UNIT_BYTES),
        "the first blob's units"
    );

    // The region dies mid-upload: the upload resumes from what it committed, once it is back.
    let region_pid = devnet.region(1).service_pid;
    let mut killed_after_units = None;
    let mut resumed_from = Vec::new();
    let mut reports = Vec::new();
    let mut progress = |report: BlobProgress| {
        reports.push(report);
        if let Some(offset) = report.resumed_from {
            resumed_from.push(offset);
        }
        if killed_after_units.is_none() {
            // Kill the region once it holds a few committed units of this upload.
            let units = files_under(&blob_folder).len() - units_before;
            if units >= UNITS_BEFORE_KILL && report.done_bytes < report.total_bytes {
                send_signal(region_pid, "KILL");
                killed_after_units = Some(units);
            }
        }
    };
    let reference = alice
        .upload_blob(BlobSource::Bytes(&plain), &mut progress)
        .await
        .expect("the upload survives the region's death");
    let units = killed_after_units.expect("the region was killed mid-upload");
    eprintln!("edge killed with {units} units committed; resumed from {resumed_from:?}");
    let first_resume = *resumed_from.first().expect("the upload resumed");
    assert!(
        first_resume >= UNITS_BEFORE_KILL as u64 * BLOB_COMMIT_UNIT_BYTES,
        "the upload resumed from byte {first_resume}, not from the {units} units committed"
    );
    assert_eq!(first_resume % BLOB_COMMIT_UNIT_BYTES, 0);
    assert_eq!(
        reports.last().map(|report| report.done_bytes),
        Some(reference.size)
    );

    // Bob gets the reference as a message would carry it, and downloads from region 1's media
    // endpoint (located through his own edge).
    let text = reference.to_text();
    let received = BlobRef::from_text(&text).expect("the reference parses");
    assert_eq!(received.region, 1);
    let mut downloaded_bytes = 0;
    let downloaded = bob
        .download_blob(&received, &mut |report| {
            downloaded_bytes = report.done_bytes
        })
        .await
        .expect("bob downloads");
    assert_eq!(downloaded_bytes, reference.size);
    assert!(downloaded == plain, "the download differs from the upload");

    // Into a file, never held whole: written beside it as it arrives, and renamed into place
    // only once it checks. A download that does not check leaves the file there as it was and
    // nothing beside it.
    let folder = dir.path().join("bob-files");
    std::fs::create_dir(&folder).expect("bob's folder");
    let out = folder.join("copy.bin");
    std::fs::write(&out, b"an older file").expect("an older file");
    let mut tampered = received.clone();
    tampered.digest[0] ^= 1;
    let refused = bob
        .download_blob_to(&tampered, &out, IfExists::Replace, &mut |_| {})
        .await;
    assert!(
        matches!(refused, Err(ClientError::Blob(BlobCryptoError::WrongHash))),
        "a blob whose hash is not the reference's is refused: {refused:?}"
    );
    assert_eq!(
        std::fs::read(&out).expect("the older file"),
        b"an older file"
    );
    let listed = |folder: &Path| -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)
            .expect("list")
            .map(|entry| entry.expect("entry").path())
            .collect();
        paths.sort();
        paths
    };
    assert_eq!(listed(&folder), vec![out.clone()], "nothing left beside it");
    // A file that is to be kept is kept, before a byte moves.
    let kept = bob
        .download_blob_to(&received, &out, IfExists::Keep, &mut |_| {})
        .await;
    assert!(
        matches!(&kept, Err(ClientError::Invalid(said)) if said.contains("exists")),
        "{kept:?}"
    );
    assert_eq!(
        std::fs::read(&out).expect("the older file"),
        b"an older file"
    );
    assert_eq!(listed(&folder), vec![out.clone()], "nothing left beside it");
    let written = bob
        .download_blob_to(&received, &out, IfExists::Replace, &mut |_| {})
        .await
        .expect("bob downloads into a file");
    assert_eq!(written, BLOB_BYTES as u64);
    assert!(
        std::fs::read(&out).expect("the file") == plain,
        "the file differs from the upload"
    );
    assert_eq!(listed(&folder), vec![out.clone()], "nothing left beside it");
    // Kept (no file was there): a new name is written as usual.
    let fresh = folder.join("fresh.bin");
    let written = bob
        .download_blob_to(&received, &fresh, IfExists::Keep, &mut |_| {})
        .await
        .expect("bob downloads into a new file");
    assert_eq!(written, BLOB_BYTES as u64);
    assert!(std::fs::read(&fresh).expect("the new file") == plain);

    // The region holds the ciphertext only: its size, and no window of the plaintext.
    let files = files_under(&blob_folder);
    let stored: usize = files.iter().map(|(_, bytes)| bytes.len()).sum();
    assert_eq!(stored as u64, first.size + reference.size);
    assert!(
        reference.size > BLOB_BYTES as u64,
        "sealing adds the chunk tags"
    );
    for offset in [0, 1_000_003, BLOB_BYTES / 2, BLOB_BYTES - 64] {
        let window = &plain[offset..offset + 32];
        for (path, bytes) in &files {
            assert!(
                !bytes
                    .windows(32)
                    .any(|candidate| candidate[0] == window[0] && candidate == window),
                "{} holds plaintext from byte {offset}",
                path.display()
            );
        }
    }
    alice.close().await.expect("alice closes");
    bob.close().await.expect("bob closes");
}
