//! The devnet's own certificate authority and the certificates of its edges and regions.
//!
//! The CA's key stays in the data folder so a restarted devnet issues certificates for new
//! processes under the same CA, and clients' stored copies of `ca.pem` keep working.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, Issuer, KeyPair};

use crate::DevnetError;

type Result<T> = std::result::Result<T, DevnetError>;

fn pki_error(what: &str) -> impl Fn(rcgen::Error) -> DevnetError + '_ {
    move |error| DevnetError::Pki(format!("{what}: {error}"))
}

/// Paths of one process's certificate and key.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The devnet's PKI folder.
#[derive(Debug, Clone)]
pub struct Pki {
    folder: PathBuf,
}

/// The devnet CA's parameters (also its issuer identity when it is rebuilt from the saved key).
fn ca_params() -> CertificateParams {
    relay_net::pki::ca_params("Relay devnet CA")
}

impl Pki {
    /// Opens the PKI under `folder`, creating the CA on first use.
    pub fn open(folder: &Path) -> Result<Self> {
        std::fs::create_dir_all(folder)
            .map_err(|source| DevnetError::file("creating", folder, source))?;
        let pki = Self {
            folder: folder.to_owned(),
        };
        if !pki.ca_cert().exists() || !pki.ca_key().exists() {
            let key = KeyPair::generate().map_err(pki_error("generating the CA key"))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(pki_error("self-signing the CA"))?;
            write_private(&pki.ca_key(), &key.serialize_pem())?;
            let ca = pki.ca_cert();
            std::fs::write(&ca, cert.pem())
                .map_err(|source| DevnetError::file("writing", &ca, source))?;
        }
        Ok(pki)
    }

    /// The regions' VAPID key (WebPush), generated on first use: a devnet's regions wake
    /// devices that registered a WebPush endpoint.
    pub fn vapid_key(&self) -> Result<PathBuf> {
        let path = self.folder.join("vapid.pem");
        if !path.exists() {
            let key = relay_push::generate_vapid_key()
                .map_err(|error| DevnetError::Pki(format!("generating the VAPID key: {error}")))?;
            write_private(&path, &key.private_key_pem)?;
        }
        Ok(path)
    }

    /// The CA certificate every process and client trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.folder.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.folder.join("ca.key")
    }

    /// The certificate of edge `region`, issued on first use.
    pub fn edge(&self, region: u32) -> Result<CertPaths> {
        self.leaf(relay_net::pki::edge_params(region).map_err(pki_error("certificate names"))?)
    }

    /// The certificate of region `region`, issued on first use.
    pub fn region(&self, region: u32) -> Result<CertPaths> {
        self.leaf(relay_net::pki::region_params(region).map_err(pki_error("certificate names"))?)
    }

    fn leaf(&self, (stem, params): (String, CertificateParams)) -> Result<CertPaths> {
        let paths = CertPaths {
            cert: self.folder.join(format!("{stem}.pem")),
            key: self.folder.join(format!("{stem}.key")),
        };
        if paths.cert.exists() && paths.key.exists() {
            return Ok(paths);
        }
        let ca_key_path = self.ca_key();
        let ca_key_pem = std::fs::read_to_string(&ca_key_path)
            .map_err(|source| DevnetError::file("reading", &ca_key_path, source))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(pki_error("parsing the CA key"))?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate().map_err(pki_error("generating a key"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|error| DevnetError::Pki(format!("issuing {stem}: {error}")))?;
        write_private(&paths.key, &key.serialize_pem())?;
        std::fs::write(&paths.cert, cert.pem())
            .map_err(|source| DevnetError::file("writing", &paths.cert, source))?;
        Ok(paths)
    }
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| DevnetError::file("writing", path, source))?;
    file.write_all(contents.as_bytes())
        .map_err(|source| DevnetError::file("writing", path, source))?;
    Ok(())
}
