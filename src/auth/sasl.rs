//! SASL mechanisms for the Kafka listener: PLAIN (RFC 4616) and SCRAM-SHA-512 (RFC 5802,
//! RFC 7677), both against the users file.
//!
//! A Mosquitto `$7$` line holds PBKDF2-HMAC-SHA512(password, salt, iterations), which is
//! exactly SCRAM-SHA-512's *SaltedPassword*: the server derives the stored and server keys from
//! it and never needs the password. Users whose line is an old `$6$` hash can log in with PLAIN
//! only. An unknown user goes through the same exchange with a made-up salt and fails at the
//! end, so the exchange does not tell which users exist. Channel binding is not offered
//! (`n,,` or `y,,` only).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};

use super::Malformed;

/// A mechanism the Kafka listener offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha512,
}

impl Mechanism {
    /// The names, as SaslHandshake lists them.
    pub const NAMES: [&'static str; 2] = ["PLAIN", "SCRAM-SHA-512"];

    pub fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "SCRAM-SHA-512" => Some(Mechanism::ScramSha512),
            _ => None,
        }
    }
}

/// Why a SASL step failed. The Kafka listener puts the message in its answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client's message does not parse.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// Unknown user or wrong proof (the two look the same to the client).
    #[error("bad user name or password")]
    BadLogin,
    /// The login rules said no (wrong password, backed off, login required).
    #[error("login as {user:?}: {refusal}")]
    Refused {
        user: String,
        refusal: super::Refusal,
    },
    #[error("no randomness from the operating system")]
    NoRandomness,
    /// An authentication message before a mechanism was chosen.
    #[error("SaslAuthenticate without a SaslHandshake naming a mechanism")]
    NoMechanism,
}

impl From<&str> for SaslError {
    fn from(s: &str) -> Self {
        SaslError::Malformed(s.into())
    }
}

/// What PLAIN carries: `[authzid] NUL user NUL password`. An authorization id other than
/// the user itself is refused.
pub fn parse_plain(bytes: &[u8]) -> Result<(String, Vec<u8>), Malformed> {
    let mut parts = bytes.splitn(3, |b| *b == 0);
    let (Some(authz), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("PLAIN: expected authzid NUL user NUL password".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "PLAIN: user name is not UTF-8")?;
    if !authz.is_empty() && authz != user.as_bytes() {
        return Err("PLAIN: acting as another user (authzid) is not supported".into());
    }
    if user.is_empty() {
        return Err("PLAIN: empty user name".into());
    }
    Ok((user.to_string(), password.to_vec()))
}

/// What the server knows of a user for SCRAM: the salt, the iteration count and the salted
/// password (PBKDF2-HMAC-SHA512).
#[derive(Clone)]
pub struct ScramSecret {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub salted: [u8; 64],
}

type HmacSha512 = Hmac<Sha512>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 64] {
    let mut m = match <HmacSha512 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// A SCRAM-SHA-512 exchange in progress on the server side.
pub struct Scram {
    user: String,
    /// `None`: an unknown user (or one without a `$7$` hash): the exchange fails at the end.
    secret: Option<ScramSecret>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// `saslname` decoding: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_name(s: &str) -> Result<String, Malformed> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i..i + 3).ok_or("SCRAM: bad escape in user name")?;
        out.push(match code {
            "=2C" => ',',
            "=3D" => '=',
            _ => return Err("SCRAM: bad escape in user name".into()),
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Random bytes from the OS.
pub fn random(n: usize) -> Result<Vec<u8>, SaslError> {
    use ring::rand::SecureRandom;
    let mut v = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut v)
        .map_err(|_| SaslError::NoRandomness)?;
    Ok(v)
}

impl Scram {
    /// Reads the client's first message: `gs2-header client-first-bare`, with the user name.
    pub fn user_of(client_first: &[u8]) -> Result<(String, String, String), Malformed> {
        let text = std::str::from_utf8(client_first).map_err(|_| "SCRAM: not UTF-8")?;
        let bare = match text.get(..3) {
            Some("n,,") | Some("y,,") => &text[3..],
            _ if text.starts_with("p=") => {
                return Err("SCRAM: channel binding is not supported".into());
            }
            _ => return Err("SCRAM: the first message must start with \"n,,\"".into()),
        };
        let mut user = None;
        let mut nonce = None;
        for attr in bare.split(',') {
            if let Some(v) = attr.strip_prefix("n=") {
                user = Some(decode_name(v)?);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v.to_string());
            } else if attr.starts_with("m=") {
                return Err("SCRAM: mandatory extensions are not supported".into());
            }
        }
        let user = user
            .filter(|u| !u.is_empty())
            .ok_or("SCRAM: no user name")?;
        let nonce = nonce
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or("SCRAM: no valid client nonce")?;
        Ok((user, nonce, bare.to_string()))
    }

    /// Starts the exchange for the client's first message and the user's secret (None:
    /// unknown); returns the state and the server's first message.
    pub fn start(
        client_first: &[u8],
        secret: Option<ScramSecret>,
    ) -> Result<(Scram, Vec<u8>), SaslError> {
        let (user, client_nonce, bare) = Scram::user_of(client_first)?;
        let server_nonce = B64.encode(random(18)?);
        let nonce = format!("{client_nonce}{server_nonce}");
        let (salt, iterations) = match &secret {
            Some(s) => (s.salt.clone(), s.iterations),
            // The same unknown name is always shown the same made-up salt.
            None => (
                Sha512::digest(format!("brook-scram-decoy:{user}").as_bytes())[..12].to_vec(),
                crate::auth::password::DEFAULT_ITERATIONS,
            ),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let out = server_first.clone().into_bytes();
        Ok((
            Scram {
                user,
                secret,
                client_first_bare: bare,
                server_first,
                nonce,
            },
            out,
        ))
    }

    /// The user name the client gave.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks the client's final message. `Ok(server_final)`: the proof was right.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, SaslError> {
        let text = std::str::from_utf8(client_final).map_err(|_| "SCRAM: not UTF-8")?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or("SCRAM: the final message has no proof")?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if !matches!(binding, Some("biws") | Some("eSws")) {
            return Err("SCRAM: channel binding is not supported".into());
        }
        // The nonce must end with the one the server sent (so it holds this exchange's server
        // part): librdkafka up to 2.0 sends the client's part twice in front of it, and Kafka's
        // own broker checks it so as well.
        if !nonce.is_some_and(|n| n.ends_with(self.nonce.as_str())) {
            return Err("SCRAM: the nonce does not match".into());
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| "SCRAM: the proof is not base64")?;
        let Some(secret) = self.secret else {
            return Err(SaslError::BadLogin);
        };
        if proof.len() != 64 {
            return Err(SaslError::BadLogin);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_key = hmac(&secret.salted, b"Client Key");
        let stored_key: [u8; 64] = Sha512::digest(client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut candidate = [0u8; 64];
        for (i, c) in candidate.iter_mut().enumerate() {
            *c = proof[i] ^ signature[i];
        }
        let got: [u8; 64] = Sha512::digest(candidate).into();
        if got
            .iter()
            .zip(stored_key.iter())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            != 0
        {
            return Err(SaslError::BadLogin);
        }
        let server_key = hmac(&secret.salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side, written from RFC 5802 for the test.
    fn client_proof(password: &[u8], salt: &[u8], i: u32, auth_message: &str) -> Vec<u8> {
        let mut salted = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, i, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 64] = Sha512::digest(client_key).into();
        let sig = hmac(&stored, auth_message.as_bytes());
        client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect()
    }

    fn secret(password: &[u8]) -> ScramSecret {
        let salt = b"saltsaltsalt".to_vec();
        let mut salted = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, 4096, &mut salted);
        ScramSecret {
            salt,
            iterations: 4096,
            salted,
        }
    }

    fn exchange(password: &[u8], stored: Option<ScramSecret>) -> Result<Vec<u8>, SaslError> {
        let first = b"n,,n=alice,r=abcdefgh";
        let (scram, server_first) = Scram::start(first, stored)?;
        let sf = String::from_utf8(server_first).expect("utf8");
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iters = 0;
        for a in sf.split(',') {
            if let Some(v) = a.strip_prefix("r=") {
                nonce = v;
            } else if let Some(v) = a.strip_prefix("s=") {
                salt = B64.decode(v).expect("b64");
            } else if let Some(v) = a.strip_prefix("i=") {
                iters = v.parse().expect("i");
            }
        }
        assert!(nonce.starts_with("abcdefgh") && nonce.len() > 8);
        let without = format!("c=biws,r={nonce}");
        let am = format!("n=alice,r=abcdefgh,{sf},{without}");
        let proof = client_proof(password, &salt, iters, &am);
        scram.finish(format!("{without},p={}", B64.encode(proof)).as_bytes())
    }

    #[test]
    fn the_right_password_passes_and_the_server_proves_itself() {
        let s = secret(b"wonderland");
        let server_final = exchange(b"wonderland", Some(s.clone())).expect("login");
        let v = String::from_utf8(server_final).expect("utf8");
        assert!(v.starts_with("v="), "{v}");
        assert!(exchange(b"wrong", Some(s)).is_err());
        assert!(exchange(b"wonderland", None).is_err(), "unknown user");
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(Scram::start(b"p=tls-unique,,n=a,r=x", None).is_err());
        assert!(Scram::start(b"n,,n=,r=x", None).is_err());
        assert!(Scram::start(b"n,,n=a", None).is_err());
        assert!(Scram::start(b"n,,n=a=zz,r=x", None).is_err());
        assert_eq!(Scram::user_of(b"n,,n=a=2Cb=3D,r=x").expect("ok").0, "a,b=");
        let (s, _) = Scram::start(b"n,,n=a,r=x", Some(secret(b"p"))).expect("start");
        assert!(s.finish(b"c=biws,r=other,p=AAAA").is_err());
        let (s, _) = Scram::start(b"n,,n=a,r=x", Some(secret(b"p"))).expect("start");
        assert!(
            s.finish(b"c=biws,r=x,p=AAAA").is_err(),
            "the server's part missing"
        );
        assert_eq!(
            parse_plain(b"\0bob\0pw").expect("plain"),
            ("bob".into(), b"pw".to_vec())
        );
        assert!(parse_plain(b"eve\0bob\0pw").is_err());
        assert!(parse_plain(b"bob").is_err());
    }
}
