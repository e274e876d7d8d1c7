//! `--tls`: a throwaway CA generated at start signs a certificate for 127.0.0.1,
//! localhost and the `--tls-san` names. Clients trust the CA (written by `--tls-ca-out`), which works with strict
//! verifiers that refuse a self-signed leaf as its own anchor.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsMaterial {
    pub server_config: Arc<ServerConfig>,
    /// PEM of the CA that signed the serving certificate.
    pub ca_pem: String,
}

pub fn generate(extra_sans: &[String]) -> Result<TlsMaterial, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("TLS setup: {what}: {e}");

    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA params", &e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "acs-emulator local CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", &e))?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA certificate", &e))?;
    let issuer = Issuer::new(ca_params, ca_key);

    // rcgen makes an IP address SAN of every name that parses as one.
    let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    sans.extend(extra_sans.iter().cloned());
    let mut leaf_params = CertificateParams::new(sans).map_err(|e| err("leaf params", &e))?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "acs-emulator");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(|e| err("leaf key", &e))?;
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| err("leaf certificate", &e))?;

    let chain = vec![
        CertificateDer::from(leaf_cert.der().to_vec()),
        CertificateDer::from(ca_cert.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server_config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| err("protocol versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| err("server certificate", &e))?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        server_config: Arc::new(server_config),
        ca_pem: ca_cert.pem(),
    })
}
