//! Certificate parameters for a deployment's own CA and for its regions and edges (rcgen).
//!
//! The devnet launcher (files) and the simulator (memory) both issue from these, so the
//! certificates they make carry the same names and usages as each other and as the services
//! expect ([`crate::EDGE_SERVER_NAME`], [`crate::REGION_SERVER_NAME`],
//! [`crate::MEDIA_SERVER_NAME`]). Each caller
//! picks its key algorithm and where the keys live.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose,
};

use crate::{EDGE_SERVER_NAME, MEDIA_SERVER_NAME, REGION_SERVER_NAME};

/// The parameters of a CA named `common_name` (also the issuer's identity: rebuilding an
/// `rcgen::Issuer` from them and the saved CA key issues under the same CA).
pub fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The certificate of region `region`: its common name (`region-k`, also the devnet's file
/// stem) and parameters; it serves and dials internal links, and serves devices at the
/// region's media endpoint.
pub fn region_params(region: u32) -> Result<(String, CertificateParams), rcgen::Error> {
    leaf_params(
        format!("region-{region}"),
        &[REGION_SERVER_NAME, MEDIA_SERVER_NAME],
    )
}

/// The certificate of region `region`'s edge: its common name (`edge-k`) and parameters; it
/// serves devices and dials regions.
pub fn edge_params(region: u32) -> Result<(String, CertificateParams), rcgen::Error> {
    leaf_params(format!("edge-{region}"), &[EDGE_SERVER_NAME])
}

fn leaf_params(
    common_name: String,
    server_names: &[&str],
) -> Result<(String, CertificateParams), rcgen::Error> {
    let names = server_names
        .iter()
        .map(|name| (*name).to_owned())
        .collect::<Vec<_>>();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.as_str());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok((common_name, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_name_their_role_and_serve_both_sides() {
        let (name, params) = edge_params(2).expect("params");
        assert_eq!(name, "edge-2");
        assert_eq!(params.extended_key_usages.len(), 2);
        let (name, _) = region_params(7).expect("params");
        assert_eq!(name, "region-7");
        assert!(matches!(ca_params("ca").is_ca, IsCa::Ca(_)));
    }
}
