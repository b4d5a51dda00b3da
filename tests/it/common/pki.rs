//! Certificates made for the tests (rcgen): a CA, a server certificate for localhost and
//! 127.0.0.1, client certificates (good, from another CA, expired).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    date_time_ymd,
};

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// sensor-1's certificate (CN = sensor-1), signed by the CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, and a sensor-1 certificate it signed.
    pub rogue_ca: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    /// sensor-1 by the right CA, but expired.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
}

pub fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    (p.self_signed(&key).expect("self-signed"), key)
}

pub fn leaf(
    cn: &str,
    sans: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    issuer: &(rcgen::Certificate, KeyPair),
    expired: bool,
) -> (String, String) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![purpose];
    if expired {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &issuer.0, &issuer.1).expect("sign");
    (cert.pem(), key.serialize_pem())
}

pub fn pki(dir: &Path) -> Pki {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    let root = ca("Brook test CA");
    let rogue = ca("Someone else's CA");
    let (sc, sk) = leaf(
        "localhost",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &root,
        false,
    );
    let (cc, ck) = leaf(
        "sensor-1",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &root,
        false,
    );
    let (rc, rk) = leaf(
        "sensor-1",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &rogue,
        false,
    );
    let (ec, ek) = leaf(
        "sensor-1",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &root,
        true,
    );
    Pki {
        ca: write("ca.pem", &root.0.pem()),
        server_cert: write("server.pem", &sc),
        server_key: write("server.key", &sk),
        client_cert: write("client.pem", &cc),
        client_key: write("client.key", &ck),
        rogue_ca: write("rogue-ca.pem", &rogue.0.pem()),
        rogue_cert: write("rogue.pem", &rc),
        rogue_key: write("rogue.key", &rk),
        expired_cert: write("expired.pem", &ec),
        expired_key: write("expired.key", &ek),
    }
}
