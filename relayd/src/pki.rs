//! The devnet's own certificate authority and the certificates of its edges and regions.
//!
//! The CA's key stays in the data folder so a restarted devnet issues certificates for new
//! processes under the same CA, and clients' stored copies of `ca.pem` keep working.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{CertificateParams, Issuer, KeyPair};

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
    relay_proto::pki::ca_params("Relay devnet CA")
}

impl Pki {
    /// Opens the PKI under `folder`, creating the CA on first use.
    pub fn open(folder: &Path) -> Result<Self> {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        let pki = Self {
            folder: folder.to_owned(),
        };
        if !pki.ca_cert().exists() || !pki.ca_key().exists() {
            let key = KeyPair::generate().context("generating the CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("self-signing the CA")?;
            write_private(&pki.ca_key(), &key.serialize_pem())?;
            std::fs::write(pki.ca_cert(), cert.pem()).context("writing ca.pem")?;
        }
        Ok(pki)
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
        self.leaf(relay_proto::pki::edge_params(region).context("certificate names")?)
    }

    /// The certificate of region `region`, issued on first use.
    pub fn region(&self, region: u32) -> Result<CertPaths> {
        self.leaf(relay_proto::pki::region_params(region).context("certificate names")?)
    }

    fn leaf(&self, (stem, params): (String, CertificateParams)) -> Result<CertPaths> {
        let paths = CertPaths {
            cert: self.folder.join(format!("{stem}.pem")),
            key: self.folder.join(format!("{stem}.key")),
        };
        if paths.cert.exists() && paths.key.exists() {
            return Ok(paths);
        }
        let ca_key_pem = std::fs::read_to_string(self.ca_key()).context("reading the CA key")?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing the CA key")?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("issuing {stem}"))?;
        write_private(&paths.key, &key.serialize_pem())?;
        std::fs::write(&paths.cert, cert.pem())
            .with_context(|| format!("writing {}", paths.cert.display()))?;
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
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
