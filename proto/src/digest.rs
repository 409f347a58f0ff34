//! Blob digests: the hash an upload is checked against by the region and a download by the
//! device, under the kind the upload named ([`BlobDigest`]). One type for both sides, so the
//! two cannot hash differently.

use sha2::{Digest as _, Sha256};

use crate::limits::BLOB_DIGEST_BYTES;
use crate::wire::BlobDigest;

// BLAKE3's default output is the digest's length, as SHA-256's is.
const _: () = assert!(blake3::OUT_LEN == BLOB_DIGEST_BYTES);

/// A running digest of a blob's bytes.
#[derive(Clone)]
pub enum BlobHasher {
    /// SHA-256 (blob format 1).
    Sha256(Sha256),
    /// BLAKE3 (blob format 2). Boxed: its state is about 2 KB.
    Blake3(Box<blake3::Hasher>),
}

impl BlobHasher {
    /// A digest of nothing yet, of `kind`.
    pub fn new(kind: BlobDigest) -> Self {
        match kind {
            BlobDigest::Sha256 => BlobHasher::Sha256(Sha256::new()),
            BlobDigest::Blake3 => BlobHasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> BlobDigest {
        match self {
            BlobHasher::Sha256(_) => BlobDigest::Sha256,
            BlobHasher::Blake3(_) => BlobDigest::Blake3,
        }
    }

    /// Takes the next bytes. BLAKE3 hashes several of its 1 KiB chunks at once only within
    /// one call: give it large pieces (a sealed chunk, a committed unit), not packets.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            BlobHasher::Sha256(hasher) => hasher.update(bytes),
            BlobHasher::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
    }

    /// The digest of every byte taken so far.
    pub fn finalize(&self) -> [u8; BLOB_DIGEST_BYTES] {
        match self {
            BlobHasher::Sha256(hasher) => hasher.clone().finalize().into(),
            BlobHasher::Blake3(hasher) => *hasher.finalize().as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gives_its_published_digest_whatever_the_pieces() {
        // The empty input's digests, from FIPS 180-4's and BLAKE3's published test vectors.
        let empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let empty_blake3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
        let hex = |bytes: [u8; BLOB_DIGEST_BYTES]| {
            bytes
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        };
        assert_eq!(
            hex(BlobHasher::new(BlobDigest::Sha256).finalize()),
            empty_sha256
        );
        assert_eq!(
            hex(BlobHasher::new(BlobDigest::Blake3).finalize()),
            empty_blake3
        );
        let bytes: Vec<u8> = (0..100_000u32).map(|index| (index % 251) as u8).collect();
        for kind in [BlobDigest::Sha256, BlobDigest::Blake3] {
            let mut whole = BlobHasher::new(kind);
            whole.update(&bytes);
            let mut pieces = BlobHasher::new(kind);
            for piece in bytes.chunks(1_200) {
                pieces.update(piece);
            }
            assert_eq!(whole.kind(), kind);
            assert_eq!(whole.finalize(), pieces.finalize());
        }
        let mut sha256 = BlobHasher::new(BlobDigest::Sha256);
        let mut blake3 = BlobHasher::new(BlobDigest::Blake3);
        sha256.update(&bytes);
        blake3.update(&bytes);
        assert_ne!(sha256.finalize(), blake3.finalize());
    }
}
