//! Who is calling: a signed JWT, from the HTTP `Authorization: Bearer` header or from the
//! `Authorization` field of a WebSocket's `connection_init` payload.
//!
//! A token is verified with one key from the configuration: an HS256 secret, or a public key
//! (RSA, EC or Ed25519, PEM) for tokens that an identity provider signs. Its `sub` is the
//! customer id of a buyer; its `role` claim is `buyer` (the default), `admin` or `service`;
//! `exp` is required. No token at all is an anonymous caller, who may read the catalog only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a caller may do (see the table in the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds tickets for themselves; sees only their own holds and orders.
    Buyer,
    /// Creates and changes events and ticket types; reads everything.
    Admin,
    /// The shop's backend (a payment webhook, say): reads and checks out any hold.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "buyer" => Some(Role::Buyer),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// The verified identity behind a request or a WebSocket connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// A verified token: its role, its `sub`, and its `exp` (seconds since the epoch), which
    /// a WebSocket opened with it must still respect later.
    Token {
        role: Role,
        subject: String,
        expires_at: u64,
    },
    /// A token was presented and refused: why, in words safe to show (never the token).
    Refused(&'static str),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    exp: u64,
}

/// How tokens are checked (and, with a secret, made: by `--dev` and the tests).
#[derive(Clone)]
pub struct Authenticator {
    decoding: Option<(DecodingKey, Validation)>,
    encoding: Option<EncodingKey>,
}

/// The key material from the configuration.
#[derive(Clone, Debug, Default)]
pub struct KeyConfig {
    pub secret: Option<String>,
    /// PEM text of a public key.
    pub public_key_pem: Option<String>,
    /// `RS256` unless given (for a public key).
    pub algorithm: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 asks.
pub const SECRET_LEN_MIN: usize = 32;

impl Authenticator {
    /// An authenticator that refuses every token: only anonymous calls work.
    pub fn none() -> Authenticator {
        Authenticator {
            decoding: None,
            encoding: None,
        }
    }

    /// HS256 with `secret`, which can also mint tokens.
    pub fn hs256(secret: &[u8]) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        Authenticator {
            decoding: Some((DecodingKey::from_secret(secret), validation)),
            encoding: Some(EncodingKey::from_secret(secret)),
        }
    }

    pub fn from_config(config: &KeyConfig) -> anyhow::Result<Authenticator> {
        let mut authenticator = match (&config.secret, &config.public_key_pem) {
            (Some(_), Some(_)) => anyhow::bail!("give a JWT secret or a public key, not both"),
            (None, None) => return Ok(Authenticator::none()),
            (Some(secret), None) => {
                anyhow::ensure!(
                    secret.len() >= SECRET_LEN_MIN,
                    "the JWT secret must be at least {SECRET_LEN_MIN} bytes"
                );
                Authenticator::hs256(secret.as_bytes())
            }
            (None, Some(pem)) => {
                let name = config.algorithm.as_deref().unwrap_or("RS256");
                let algorithm: Algorithm = name
                    .parse()
                    .with_context(|| format!("unknown JWT algorithm {name}"))?;
                let pem = pem.as_bytes();
                let key = match algorithm {
                    Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                    _ => anyhow::bail!("{name} needs a secret, not a public key"),
                }
                .context("cannot read the JWT public key")?;
                let mut validation = Validation::new(algorithm);
                validation.leeway = LEEWAY_SECS;
                Authenticator {
                    decoding: Some((key, validation)),
                    encoding: None,
                }
            }
        };
        if let Some((_, validation)) = &mut authenticator.decoding {
            if let Some(issuer) = &config.issuer {
                validation.set_issuer(&[issuer]);
            }
            match &config.audience {
                Some(audience) => validation.set_audience(&[audience]),
                None => validation.validate_aud = false,
            }
        }
        Ok(authenticator)
    }

    /// The caller of an `Authorization` value (`Bearer <token>`); `None` is anonymous.
    pub fn caller(&self, authorization: Option<&str>) -> Caller {
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Caller::Anonymous;
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Caller::Refused("the Authorization value must be `Bearer <token>`");
        };
        let Some((key, validation)) = &self.decoding else {
            return Caller::Refused("this server accepts no tokens (no JWT key is configured)");
        };
        match jsonwebtoken::decode::<Claims>(token.trim(), key, validation) {
            Ok(data) => {
                let claims = data.claims;
                let role = match claims.role.as_deref() {
                    None => Role::Buyer,
                    Some(text) => match Role::parse(text) {
                        Some(role) => role,
                        None => return Caller::Refused("the token's role is unknown"),
                    },
                };
                if claims.sub.is_empty() {
                    return Caller::Refused("the token has no subject");
                }
                Caller::Token {
                    role,
                    subject: claims.sub,
                    expires_at: claims.exp,
                }
            }
            Err(error) => Caller::Refused(match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "the token's signature is invalid"
                }
                _ => "the token is invalid",
            }),
        }
    }

    /// A token for `subject` in `role`, valid for `ttl`; `None` without a secret.
    pub fn mint(&self, role: Role, subject: &str, ttl: Duration) -> Option<String> {
        let key = self.encoding.as_ref()?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            role: Some(role.as_str().to_owned()),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).ok()
    }
}

/// Whether a token's `exp` has passed (with the same leeway as verification).
pub fn expired(expires_at: u64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    now > expires_at.saturating_add(LEEWAY_SECS)
}

/// Clock skew allowed between the token's issuer and this server, in seconds.
const LEEWAY_SECS: u64 = 5;

/// A random secret for `--dev` without one: tokens then last as long as the process.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_in_the_past_beyond_the_leeway_has_passed() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(expired(0));
        assert!(expired(now - LEEWAY_SECS - 2));
        assert!(!expired(now - 1), "within the leeway");
        assert!(!expired(now + 60));
    }

    #[test]
    fn a_minted_token_verifies_with_its_role_subject_and_expiry() {
        let authenticator = Authenticator::hs256(b"0123456789abcdef0123456789abcdef");
        let token = authenticator
            .mint(Role::Service, "shop", Duration::from_secs(60))
            .unwrap();
        let Caller::Token {
            role,
            subject,
            expires_at,
        } = authenticator.caller(Some(&format!("Bearer {token}")))
        else {
            panic!("refused");
        };
        assert_eq!((role, subject.as_str()), (Role::Service, "shop"));
        assert!(!expired(expires_at));
        let other = Authenticator::hs256(b"another-secret-of-thirty-two-bytes!!");
        assert!(matches!(
            other.caller(Some(&format!("Bearer {token}"))),
            Caller::Refused(_)
        ));
    }
}
