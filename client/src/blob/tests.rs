//! The blob crypto's tests: both formats through sealing, opening, tampering and the text
//! form.

use super::*;

const FORMATS: [BlobFormat; 2] = [BlobFormat::V1, BlobFormat::V2];

fn reference(sealed: &SealedBlob) -> BlobRef {
    BlobRef {
        format: sealed.format,
        region: 1,
        id: [3; BLOB_ID_BYTES],
        key: sealed.key,
        size: sealed.ciphertext.len() as u64,
        digest: sealed.digest,
    }
}

fn plaintext(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i * 31 % 251) as u8).collect()
}

fn seal_in(format: BlobFormat, plaintext: &[u8]) -> SealedBlob {
    let mut key = [0u8; BLOB_KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    seal_with_key(format, plaintext, key)
}

#[test]
fn the_plaintext_size_comes_back_from_every_sealed_size() {
    let chunk = BLOB_PLAINTEXT_CHUNK_BYTES as u64;
    for plaintext in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 20_000_000] {
        assert_eq!(plaintext_size(sealed_size(plaintext)), Some(plaintext));
    }
    // Sizes no plaintext seals to: shorter than one tag, or a chunk's tag without room.
    for sealed in [
        0,
        1,
        BLOB_TAG_BYTES as u64 - 1,
        chunk + BLOB_TAG_BYTES as u64 + 1,
    ] {
        assert_eq!(plaintext_size(sealed), None, "{sealed}");
    }
}

/// Each format seals to fixed bytes under a fixed key: a change to either (an algorithm,
/// a nonce, the associated data) would leave every blob already sent unreadable.
#[test]
fn each_format_seals_to_its_known_bytes() {
    let plain = plaintext(BLOB_PLAINTEXT_CHUNK_BYTES + 5);
    let key = [0x42; BLOB_KEY_BYTES];
    let digests: Vec<String> = FORMATS
        .iter()
        .map(|format| hex(&seal_with_key(*format, &plain, key).digest))
        .collect();
    assert_eq!(
        digests,
        [
            // The bytes the client sealed before format 2 existed (checked against that build).
            "e192c05d7f3caa5f5565b479a11baef210a526ef1aaf65a877834a8a7e7541ea".to_owned(),
            "c92faf4be69e8ae9ec2dc77f52194b20a257311939fbf396c944c6872e5c1a85".to_owned(),
        ]
    );
    assert_eq!(
        seal(&plain).format,
        BlobFormat::V2,
        "new blobs take format 2"
    );
}

#[test]
fn blobs_of_every_shape_round_trip() {
    let chunk = BLOB_PLAINTEXT_CHUNK_BYTES;
    for format in FORMATS {
        for length in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 17] {
            let plain = plaintext(length);
            let sealed = seal_in(format, &plain);
            assert_eq!(sealed.ciphertext.len() as u64, sealed_size(length as u64));
            assert_eq!(
                open(&reference(&sealed), &sealed.ciphertext).expect("opens"),
                plain,
                "{format:?}, {length} bytes"
            );
        }
    }
}

#[test]
fn an_upload_takes_the_format_whose_digest_its_region_checks() {
    let sha256 = i32::from(BlobDigest::Sha256);
    let blake3 = i32::from(BlobDigest::Blake3);
    // A region that knows BLAKE3 echoes it; one from before answers SHA-256 (the field's
    // absence), and the upload is sealed in format 1 for it.
    assert_eq!(BlobFormat::for_region(blake3), Some(BlobFormat::V2));
    assert_eq!(BlobFormat::for_region(sha256), Some(BlobFormat::V1));
    assert_eq!(BlobFormat::for_region(sha256), Some(BlobFormat::V1));
    assert_eq!(BlobFormat::for_region(9), None);
    let plain = plaintext(BLOB_PLAINTEXT_CHUNK_BYTES + 3);
    let sealer = Sealer::new(plain.len() as u64);
    assert_eq!(sealer.format(), BlobFormat::CURRENT);
    let mut renewed = sealer.renewed_in(BlobFormat::V1);
    assert_eq!(renewed.format(), BlobFormat::V1);
    assert_eq!(renewed.chunks(), sealer.chunks());
    assert_ne!(renewed.key(), sealer.key(), "a fresh key");
    let mut ciphertext = Vec::new();
    for index in 0..renewed.chunks() {
        let range = renewed.chunk_plaintext(index);
        let chunk = &plain[range.start as usize..range.end as usize];
        ciphertext.extend(renewed.seal_chunk(index, chunk).expect("sealed"));
    }
    let reference = BlobRef {
        format: BlobFormat::V1,
        region: 1,
        id: [1; BLOB_ID_BYTES],
        key: renewed.key(),
        size: ciphertext.len() as u64,
        digest: renewed.digest().expect("digested"),
    };
    assert_eq!(open(&reference, &ciphertext), Ok(plain));
}

#[test]
fn a_blob_opens_only_in_its_own_format() {
    let plain = plaintext(2 * BLOB_PLAINTEXT_CHUNK_BYTES);
    let key = [5; BLOB_KEY_BYTES];
    let v1 = seal_with_key(BlobFormat::V1, &plain, key);
    let v2 = seal_with_key(BlobFormat::V2, &plain, key);
    assert_ne!(v1.ciphertext, v2.ciphertext);
    assert_eq!(
        open_chunks(BlobFormat::V2, &key, &v1.ciphertext),
        Err(BlobCryptoError::BadChunk { index: 0 })
    );
    assert_eq!(
        open_chunks(BlobFormat::V1, &key, &v2.ciphertext),
        Err(BlobCryptoError::BadChunk { index: 0 })
    );
    // A reference that names the wrong format fails on the digest first.
    let mut wrong = reference(&v2);
    wrong.format = BlobFormat::V1;
    assert_eq!(
        open(&wrong, &v2.ciphertext),
        Err(BlobCryptoError::WrongHash)
    );
}

#[test]
fn a_sealer_seals_any_chunk_again_to_the_same_bytes_and_hashes_each_once_in_order() {
    for format in FORMATS {
        let plain = plaintext(3 * BLOB_PLAINTEXT_CHUNK_BYTES + 100);
        let key = [7; BLOB_KEY_BYTES];
        let whole = seal_with_key(format, &plain, key);
        let mut sealer = Sealer::with_key(format, key, plain.len() as u64);
        assert_eq!(sealer.format(), format);
        assert_eq!(sealer.chunks(), 4);
        assert_eq!(sealer.sealed_bytes(), whole.ciphertext.len() as u64);
        let chunk = |sealer: &Sealer, index: u64| {
            let range = sealer.chunk_plaintext(index);
            plain[range.start as usize..range.end as usize].to_vec()
        };
        let sealed_chunk = BLOB_PLAINTEXT_CHUNK_BYTES + BLOB_TAG_BYTES;
        // Out of order: sealed all the same, but hashed only from chunk 0 on, in order.
        let third = sealer.seal_chunk(2, &chunk(&sealer, 2)).expect("sealed");
        assert_eq!(third, whole.ciphertext[2 * sealed_chunk..3 * sealed_chunk]);
        assert_eq!(sealer.hashed_chunks(), 0);
        let mut ciphertext = Vec::new();
        for index in 0..4 {
            ciphertext.extend(
                sealer
                    .seal_chunk(index, &chunk(&sealer, index))
                    .expect("sealed"),
            );
        }
        assert_eq!(ciphertext, whole.ciphertext);
        assert_eq!(sealer.digest(), Some(whole.digest));
        // Sealed again (a resumed upload): the same bytes, the digest unchanged.
        let again = sealer.seal_chunk(1, &chunk(&sealer, 1)).expect("sealed");
        assert_eq!(again, whole.ciphertext[sealed_chunk..2 * sealed_chunk]);
        assert_eq!(sealer.digest(), Some(whole.digest));
        // A chunk past the end, or of the wrong length, is refused.
        assert!(sealer.seal_chunk(4, &[]).is_err());
        assert!(sealer.seal_chunk(3, &[0; 99]).is_err());
        // Where a ciphertext offset falls.
        assert_eq!(sealer.chunk_at(0), (0, 0));
        assert_eq!(sealer.chunk_at(sealed_chunk as u64 + 5), (1, 5));
        // An empty blob is one empty chunk.
        let mut empty = Sealer::with_key(format, key, 0);
        assert_eq!(empty.digest(), None);
        empty.seal_chunk(0, &[]).expect("sealed");
        assert_eq!(empty.digest(), Some(seal_with_key(format, &[], key).digest));
    }
}

#[test]
fn an_opener_opens_bytes_as_they_arrive_in_pieces_of_any_size() {
    for format in FORMATS {
        for length in [
            0,
            10,
            BLOB_PLAINTEXT_CHUNK_BYTES,
            2 * BLOB_PLAINTEXT_CHUNK_BYTES + 7,
        ] {
            let plain = plaintext(length);
            let sealed = seal_in(format, &plain);
            let reference = reference(&sealed);
            for piece in [1, 1_000, 65_552, 100_000] {
                let mut opener = Opener::new(&reference);
                for bytes in sealed.ciphertext.chunks(piece) {
                    opener.feed(bytes).expect("fed");
                }
                assert_eq!(opener.received(), sealed.ciphertext.len() as u64);
                assert_eq!(
                    opener.finish().expect("opens"),
                    plain,
                    "{format:?}: {length} in {piece}s"
                );
            }
        }
        let plain = plaintext(3 * BLOB_PLAINTEXT_CHUNK_BYTES);
        let sealed = seal_in(format, &plain);
        let reference = reference(&sealed);
        // Short of the size: not finished. Past it: refused at once.
        let mut opener = Opener::new(&reference);
        opener.feed(&sealed.ciphertext[..100]).expect("fed");
        assert!(matches!(
            opener.finish(),
            Err(BlobCryptoError::WrongSize { .. })
        ));
        let mut opener = Opener::new(&reference);
        opener.feed(&sealed.ciphertext).expect("fed");
        assert!(matches!(
            opener.feed(&[0]),
            Err(BlobCryptoError::WrongSize { .. })
        ));
        // A damaged chunk: the digest is what is reported, as by `open`.
        let mut damaged = sealed.ciphertext.clone();
        damaged[5] ^= 1;
        let mut opener = Opener::new(&reference);
        opener.feed(&damaged).expect("fed");
        assert_eq!(opener.finish(), Err(BlobCryptoError::WrongHash));
    }
}

#[test]
fn plaintext_taken_as_it_is_opened_is_the_blob_and_stops_before_a_bad_chunk() {
    let sealed_chunk = BLOB_PLAINTEXT_CHUNK_BYTES + BLOB_TAG_BYTES;
    for format in FORMATS {
        let plain = plaintext(3 * BLOB_PLAINTEXT_CHUNK_BYTES + 11);
        let sealed = seal_in(format, &plain);
        let reference = reference(&sealed);
        let mut opener = Opener::new(&reference);
        let mut taken = Vec::new();
        let mut most_held = 0;
        let piece = 10_000;
        for bytes in sealed.ciphertext.chunks(piece) {
            opener.feed(bytes).expect("fed");
            let opened = opener.take_opened();
            // What one piece completed, at most a chunk more: nothing accumulates.
            most_held = most_held.max(opened.len());
            taken.extend_from_slice(&opened);
        }
        assert!(
            most_held <= piece + BLOB_PLAINTEXT_CHUNK_BYTES,
            "{most_held}"
        );
        assert!(opener.finish().expect("checks").is_empty(), "all was taken");
        assert_eq!(taken, plain);

        // A damaged third chunk: the two before it are taken, nothing after, and the blob
        // does not check.
        let mut damaged = sealed.ciphertext.clone();
        damaged[2 * sealed_chunk + 3] ^= 1;
        let mut opener = Opener::with_key(format, sealed.key, damaged.len() as u64, None);
        let mut taken = Vec::new();
        for bytes in damaged.chunks(sealed_chunk) {
            opener.feed(bytes).expect("fed");
            taken.extend_from_slice(&opener.take_opened());
        }
        assert_eq!(taken, plain[..2 * BLOB_PLAINTEXT_CHUNK_BYTES]);
        assert_eq!(opener.finish(), Err(BlobCryptoError::BadChunk { index: 2 }));
    }
}

#[test]
fn each_chunk_verifies_on_its_own_and_keys_are_fresh() {
    let plain = plaintext(3 * BLOB_PLAINTEXT_CHUNK_BYTES);
    let one = seal(&plain);
    let two = seal(&plain);
    assert_ne!(one.key, two.key);
    assert_ne!(one.ciphertext, two.ciphertext, "a fresh key each time");
    for format in FORMATS {
        let one = seal_in(format, &plain);
        let two = seal_in(format, &plain);
        // Flip one byte of the second chunk: that chunk, and no other, fails.
        let mut damaged = one.ciphertext.clone();
        damaged[BLOB_PLAINTEXT_CHUNK_BYTES + BLOB_TAG_BYTES + 5] ^= 1;
        assert_eq!(
            open_chunks(format, &one.key, &damaged),
            Err(BlobCryptoError::BadChunk { index: 1 })
        );
        // The reference's digest catches it before any chunk is opened.
        let mut with_ref = reference(&one);
        assert_eq!(open(&with_ref, &damaged), Err(BlobCryptoError::WrongHash));
        // Another key opens nothing.
        with_ref.key = two.key;
        assert_eq!(
            open(&with_ref, &one.ciphertext),
            Err(BlobCryptoError::BadChunk { index: 0 })
        );
    }
}

#[test]
fn truncation_reordering_and_extension_are_refused() {
    for format in FORMATS {
        let plain = plaintext(3 * BLOB_PLAINTEXT_CHUNK_BYTES);
        let sealed = seal_with_key(format, &plain, [9; BLOB_KEY_BYTES]);
        let sealed_chunk = BLOB_PLAINTEXT_CHUNK_BYTES + BLOB_TAG_BYTES;
        // Dropping the last chunk: the new last chunk was not sealed as last.
        let truncated = &sealed.ciphertext[..2 * sealed_chunk];
        assert_eq!(
            open_chunks(format, &sealed.key, truncated),
            Err(BlobCryptoError::BadChunk { index: 1 })
        );
        // Swapping the first two chunks.
        let mut swapped = sealed.ciphertext[sealed_chunk..2 * sealed_chunk].to_vec();
        swapped.extend_from_slice(&sealed.ciphertext[..sealed_chunk]);
        swapped.extend_from_slice(&sealed.ciphertext[2 * sealed_chunk..]);
        assert_eq!(
            open_chunks(format, &sealed.key, &swapped),
            Err(BlobCryptoError::BadChunk { index: 0 })
        );
        // Appending a copy of the last chunk.
        let mut extended = sealed.ciphertext.clone();
        extended.extend_from_slice(&sealed.ciphertext[2 * sealed_chunk..]);
        assert!(open_chunks(format, &sealed.key, &extended).is_err());
        // A wrong size is told before anything else.
        assert_eq!(
            open(&reference(&sealed), truncated),
            Err(BlobCryptoError::WrongSize {
                expected: sealed.ciphertext.len() as u64,
                found: truncated.len() as u64
            })
        );
    }
}

#[test]
fn references_survive_text_and_bad_text_is_refused() {
    for (format, prefix) in [
        (BlobFormat::V1, "relay-blob:1:"),
        (BlobFormat::V2, "relay-blob:2:"),
    ] {
        let reference = reference(&seal_in(format, b"hello"));
        let text = reference.to_text();
        assert!(text.starts_with(prefix), "{text}");
        assert_eq!(BlobRef::from_text(&text), Ok(reference.clone()));
        assert!(!format!("{reference:?}").contains(&hex(&reference.key)));
    }
    let text = reference(&seal(b"hello")).to_text();
    let encoded = text.trim_start_matches("relay-blob:2:");
    assert_eq!(
        BlobRef::from_text(&format!("relay-blob:3:{encoded}")),
        Err(BlobCryptoError::UnknownFormat(3))
    );
    assert_eq!(
        BlobRef::from_text(&format!("relay-blob:0:{encoded}")),
        Err(BlobCryptoError::UnknownFormat(0))
    );
    for bad in [
        "relay-blob:1:",
        "relay-blob:1:!!!",
        "relay-blob:2:AAAA",
        &format!("relay-blob:{encoded}"),
        &format!("relay-blob:x:{encoded}"),
        "hello",
        &text[..text.len() - 4],
    ] {
        assert!(BlobRef::from_text(bad).is_err(), "{bad:?} parsed");
    }
}
