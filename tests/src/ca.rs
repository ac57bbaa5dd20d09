//! A test certificate authority for CA validation of the server.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// A certificate authority for tests of CA validation: it issues server certificates the
/// way an organisation's CA would.
pub struct TestCa {
    /// The CA certificate, PEM: the file IT hands out for `rathaus enroll --ca`.
    pub pem: String,
    /// Signs the certificates this CA issues.
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// PEM of the intermediate certificates between this CA and its root (empty for a
    /// root): appended to every certificate it issues, as a server's bundle would be.
    chain: String,
}

impl TestCa {
    /// A new CA named `name`, with a fresh key.
    pub fn new(name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let params = ca_params(name)?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
            chain: String::new(),
        })
    }

    /// An intermediate CA named `name`, issued by this one. The certificates it issues
    /// come with the intermediate appended, so a client trusting only the root validates
    /// them.
    pub fn intermediate(&self, name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let params = ca_params(name)?;
        let pem = params.signed_by(&key, &self.issuer)?.pem();
        Ok(Self {
            chain: format!("{pem}{}", self.chain),
            pem,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns the path.
    pub fn write_pem(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem)?;
        Ok(path)
    }

    /// Issues a server certificate for `names` (DNS names and IP addresses), valid from
    /// yesterday for a year, and writes it and its private key as PEM into `dir`
    /// (`<stem>.crt`, `<stem>.key`). Returns the two paths.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_valid(
            names,
            dir,
            stem,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        )
    }

    /// Like [`TestCa::issue`], but the certificate expired yesterday.
    pub fn issue_expired(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_valid(
            names,
            dir,
            stem,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
    }

    fn issue_valid(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.chain))?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

/// Certificate parameters of a CA named `name` (root or intermediate).
fn ca_params(name: &str) -> Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}
