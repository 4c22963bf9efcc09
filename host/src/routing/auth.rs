//! Route protection at the upgrade: origin checks, tokens, roles.
//!
//! The server calls [`Guard::check_origin`] and then [`Guard::authorize`] for
//! every routed upgrade request, before anything reaches a controller. A
//! token is read from the `Authorization: Bearer` header, else the
//! `access_token` query parameter (browsers cannot set headers on a
//! WebSocket), else the configured cookie; it is a JWT verified with
//! `jsonwebtoken` against the configured keys, where each key enables
//! exactly one algorithm, so `alg: none` and algorithm confusion have no
//! key to verify with. The route's roles (from `describe()`, or the config)
//! are granted when the principal holds any of them after the role
//! hierarchy is applied. A refusal is a [`Rejection`]: 401 with
//! `WWW-Authenticate: Bearer` for a missing or bad token, 403 for a valid
//! token without a granted role or a disallowed origin. No message or log
//! line carries the token itself.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use crate::config::{self, Config, ConfigError};
use crate::wire::handshake::{Rejection, Request};

/// The query parameter a browser client puts its token in.
pub const QUERY_PARAM: &str = "access_token";

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim.
    pub user: Option<String>,
    /// The roles of the token with the hierarchy applied, sorted.
    pub roles: Vec<String>,
    /// When the token stops being accepted (its `exp` plus the leeway).
    pub expires_at: Option<SystemTime>,
}

/// A client allowed to connect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Authorized {
    /// Who its valid token says it is; `None`: anonymous.
    pub principal: Option<Principal>,
    /// On a public route, why the token it sent was ignored (for the log);
    /// the client is anonymous then.
    pub ignored: Option<TokenError>,
}

impl Authorized {
    fn as_(principal: Principal) -> Self {
        Authorized {
            principal: Some(principal),
            ignored: None,
        }
    }
}

/// Why a token was not accepted. The text is safe to send to the client:
/// it never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in the request.
    #[error("this route requires a token")]
    Missing,
    /// Not a JWT, or a header naming an unknown algorithm (such as `none`).
    #[error("the token is malformed")]
    Malformed,
    /// A known algorithm for which no key is configured.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// The signature does not verify with the configured key.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// `aud` does not name the configured audience.
    #[error("the token's audience is not accepted")]
    Audience,
    /// A required claim is absent.
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    /// A claim has the wrong type.
    #[error("the token's `{0}` claim is malformed")]
    BadClaim(String),
}

/// Whether the payload of `token` (a JWT whose signature verified) has a
/// claim named `claim`, whatever its value.
fn has_claim(token: &str, claim: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Map<String, Value>>(&json).ok())
        .is_some_and(|claims| claims.contains_key(claim))
}

/// One accepted algorithm with its key and checks.
struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// The origin, token and role checks, built once from the config.
pub struct Guard {
    verifiers: Vec<Verifier>,
    roles_claim: String,
    cookie: Option<String>,
    /// Each role with every role it includes, itself among them.
    hierarchy: BTreeMap<String, BTreeSet<String>>,
    leeway: Duration,
    allowed_origins: Vec<String>,
}

/// The HS256 secret from the file or from the environment variable it names.
fn hs256_secret(auth: &config::Auth) -> Result<Option<String>, ConfigError> {
    if let Some(var) = &auth.hs256_secret_env {
        let secret = std::env::var(var).map_err(|_| {
            ConfigError::invalid(format!(
                "`auth.hs256_secret_env` names the environment variable {var}, which is not set"
            ))
        })?;
        if secret.len() < 32 {
            return Err(ConfigError::invalid(format!(
                "the HS256 secret in {var} is {} bytes; use at least 32 random bytes",
                secret.len()
            )));
        }
        return Ok(Some(secret));
    }
    Ok(auth.hs256_secret.clone())
}

fn read_pem(file: &std::path::Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file).map_err(|err| {
        ConfigError::invalid(format!(
            "`auth.{key}`: cannot read {}: {err}",
            file.display()
        ))
    })
}

/// Every role reachable from each role of the hierarchy, cycles included.
fn expand_hierarchy(
    hierarchy: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    hierarchy
        .keys()
        .map(|role| {
            let mut reached = BTreeSet::from([role.clone()]);
            let mut todo = vec![role.clone()];
            while let Some(next) = todo.pop() {
                for included in hierarchy.get(&next).into_iter().flatten() {
                    if reached.insert(included.clone()) {
                        todo.push(included.clone());
                    }
                }
            }
            (role.clone(), reached)
        })
        .collect()
}

impl Guard {
    /// Reads the keys named by `config.auth` and prepares the checks.
    pub fn new(config: &Config) -> Result<Guard, ConfigError> {
        let auth = &config.auth;
        let mut keys = Vec::new();
        if let Some(secret) = hs256_secret(auth)? {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
        let public_keys: [(&Option<std::path::PathBuf>, &str, Algorithm, Parse, &str); 2] = [
            (
                &auth.rs256_public_key,
                "rs256_public_key",
                Algorithm::RS256,
                DecodingKey::from_rsa_pem,
                "an RSA",
            ),
            (
                &auth.es256_public_key,
                "es256_public_key",
                Algorithm::ES256,
                DecodingKey::from_ec_pem,
                "a P-256",
            ),
        ];
        for (file, setting, algorithm, parse, kind) in public_keys {
            let Some(file) = file else { continue };
            let key = parse(&read_pem(file, setting)?).map_err(|err| {
                ConfigError::invalid(format!(
                    "`auth.{setting}`: {} is not {kind} public key in PEM: {err}",
                    file.display()
                ))
            })?;
            keys.push((algorithm, key));
        }
        let verifiers = keys
            .into_iter()
            .map(|(algorithm, key)| {
                let mut validation = Validation::new(algorithm);
                validation.leeway = auth.leeway_s;
                validation.validate_nbf = true;
                validation.validate_aud = auth.audience.is_some();
                let mut required = vec!["exp"];
                if let Some(issuer) = &auth.issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                if let Some(audience) = &auth.audience {
                    validation.set_audience(&[audience]);
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                Verifier {
                    algorithm,
                    key,
                    validation,
                }
            })
            .collect();
        Ok(Guard {
            verifiers,
            roles_claim: auth.roles_claim.clone(),
            cookie: auth.cookie.clone(),
            hierarchy: expand_hierarchy(&auth.role_hierarchy),
            leeway: Duration::from_secs(auth.leeway_s),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether any key is configured, so tokens can be accepted at all.
    pub fn accepts_tokens(&self) -> bool {
        !self.verifiers.is_empty()
    }

    /// Refuses (403) a browser whose `Origin` is not allowed. Requests
    /// without an `Origin` header do not come from a browser page and pass.
    pub fn check_origin(&self, request: &Request) -> Result<(), Rejection> {
        let Some(origin) = request.header("Origin") else {
            return Ok(());
        };
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.allowed_origins.is_empty() || self.allowed_origins.contains(&origin) {
            Ok(())
        } else {
            Err(Rejection::new(403, "this origin is not allowed to connect"))
        }
    }

    /// The token of a request: the `Authorization: Bearer` header, else the
    /// `access_token` query parameter (taken out of `query`, so the
    /// controller never sees it), else the configured cookie.
    pub fn take_token(
        &self,
        request: &Request,
        query: &mut Vec<(String, String)>,
    ) -> Option<String> {
        let from_query = query
            .iter()
            .position(|(name, _)| name == QUERY_PARAM)
            .map(|at| query.remove(at).1);
        // Every copy leaves the query, whichever one is used.
        query.retain(|(name, _)| name != QUERY_PARAM);
        let from_header = request.header("Authorization").and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        let from_cookie = || {
            let name = self.cookie.as_deref()?;
            request
                .headers("Cookie")
                .flat_map(|value| value.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.trim_matches('"').to_owned())
        };
        from_header
            .or(from_query)
            .or_else(from_cookie)
            .filter(|token| !token.is_empty())
    }

    /// Verifies a token and reads its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let verifier = self
            .verifiers
            .iter()
            .find(|v| v.algorithm == header.alg)
            .ok_or(TokenError::Algorithm)?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &verifier.key,
            &verifier.validation,
        )
        .map_err(|err| match err.into_kind() {
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
            // jsonwebtoken reports a claim it cannot read as a number (an
            // `exp` given as a string) as missing; the signature has been
            // checked by then, so the payload can be read to tell the two apart.
            ErrorKind::MissingRequiredClaim(claim) if has_claim(token, &claim) => {
                TokenError::BadClaim(claim)
            }
            ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim),
            ErrorKind::InvalidClaimFormat(claim) => TokenError::BadClaim(claim),
            _ => TokenError::Malformed,
        })?;
        let claims = data.claims;
        let user = match claims.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(sub)) => Some(sub.clone()),
            Some(_) => return Err(TokenError::BadClaim("sub".into())),
        };
        let roles: Vec<String> = match claims.get(&self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(roles)) => roles.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(roles)) => roles
                .iter()
                .map(|role| role.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| TokenError::BadClaim(self.roles_claim.clone()))?,
            Some(_) => return Err(TokenError::BadClaim(self.roles_claim.clone())),
        };
        // `exp` may be a float; a time beyond what the clock can hold
        // counts as never.
        let expires_at = claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64)))
            .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
            .and_then(|at| at.checked_add(self.leeway));
        Ok(Principal {
            user,
            roles: self.reachable(roles),
            expires_at,
        })
    }

    /// `roles` with every role they include through the hierarchy.
    fn reachable(&self, roles: Vec<String>) -> Vec<String> {
        let mut all = BTreeSet::new();
        for role in roles {
            match self.hierarchy.get(&role) {
                Some(included) => all.extend(included.iter().cloned()),
                None => {
                    all.insert(role);
                }
            }
        }
        all.into_iter().collect()
    }

    /// Decides whether a client may connect to a route requiring any of
    /// `required` (none: public): 401 without a valid token, 403 without
    /// a required role.
    pub fn authorize(
        &self,
        token: Option<&str>,
        required: &[String],
    ) -> Result<Authorized, Rejection> {
        let verified = match token {
            None => Err(TokenError::Missing),
            Some(token) => self.verify(token),
        };
        if required.is_empty() {
            return Ok(match verified {
                Ok(principal) => Authorized::as_(principal),
                Err(TokenError::Missing) => Authorized::default(),
                Err(err) => Authorized {
                    principal: None,
                    ignored: Some(err),
                },
            });
        }
        let principal = verified.map_err(|err| {
            let challenge = match err {
                TokenError::Missing => r#"Bearer realm="switchyard""#.to_owned(),
                _ => format!(
                    r#"Bearer realm="switchyard", error="invalid_token", error_description="{err}""#
                ),
            };
            Rejection::new(401, err.to_string()).with_header("WWW-Authenticate", &challenge)
        })?;
        if required.iter().any(|role| principal.roles.contains(role)) {
            Ok(Authorized::as_(principal))
        } else {
            Err(Rejection::new(
                403,
                format!(
                    "this route requires one of the roles {}",
                    required.join(", ")
                ),
            ))
        }
    }
}

/// Mints a development token signed with the configured HS256 secret, for
/// `switchyard token`.
pub fn mint(config: &Config, sub: &str, roles: &[String], ttl: Duration) -> anyhow::Result<String> {
    let secret = hs256_secret(&config.auth)?.context(
        "no HS256 secret is configured: set `auth.hs256_secret` (or `auth.hs256_secret_env`) in switchyard.toml",
    )?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert(config.auth.roles_claim.clone(), roles.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    if let Some(issuer) = &config.auth.issuer {
        claims.insert("iss".into(), issuer.clone().into());
    }
    if let Some(audience) = &config.auth.audience {
        claims.insert("aud".into(), audience.clone().into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing the token")
}

/// Parses a duration such as `90s`, `30m`, `1h` or `7d`.
pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a duration like 90s, 30m, 1h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("`{text}`: unknown unit `{unit}`; use s, m, h or d"),
    };
    Ok(Duration::from_secs(number * seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn guard(extra: &str) -> (Config, Guard) {
        let config =
            Config::from_toml(&format!("[auth]\nhs256_secret = \"{SECRET}\"\n{extra}")).unwrap();
        let guard = Guard::new(&config).unwrap();
        (config, guard)
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn hierarchy_is_transitive_and_survives_cycles() {
        let (_, guard) = guard(
            "[auth.role_hierarchy]\nROLE_ADMIN = [\"ROLE_EDITOR\"]\nROLE_EDITOR = [\"ROLE_USER\", \"ROLE_ADMIN\"]\n",
        );
        assert_eq!(
            guard.reachable(vec!["ROLE_ADMIN".into()]),
            ["ROLE_ADMIN", "ROLE_EDITOR", "ROLE_USER"]
        );
        assert_eq!(guard.reachable(vec!["ROLE_OTHER".into()]), ["ROLE_OTHER"]);
    }

    #[test]
    fn roles_come_from_a_list_or_a_spaced_string() {
        let (_, guard) = guard("roles_claim = \"scope\"\n");
        let exp = now() + 60;
        let list = token(serde_json::json!({"sub": "a", "exp": exp, "scope": ["x", "y"]}));
        assert_eq!(guard.verify(&list).unwrap().roles, ["x", "y"]);
        let spaced = token(serde_json::json!({"sub": "a", "exp": exp, "scope": "y x"}));
        assert_eq!(guard.verify(&spaced).unwrap().roles, ["x", "y"]);
        let bad = token(serde_json::json!({"sub": "a", "exp": exp, "scope": 7}));
        assert_eq!(
            guard.verify(&bad).unwrap_err(),
            TokenError::BadClaim("scope".into())
        );
    }

    #[test]
    fn claims_are_checked() {
        let (_, guard) = guard("issuer = \"me\"\naudience = \"us\"\nleeway_s = 5\n");
        let ok = serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "me", "aud": "us"});
        assert!(guard.verify(&token(ok.clone())).is_ok());
        let with = |key: &str, value: serde_json::Value| {
            let mut claims = ok.clone();
            claims[key] = value;
            guard.verify(&token(claims)).unwrap_err()
        };
        assert_eq!(with("exp", (now() - 60).into()), TokenError::Expired);
        assert_eq!(with("nbf", (now() + 60).into()), TokenError::NotYetValid);
        assert_eq!(with("iss", "you".into()), TokenError::Issuer);
        assert_eq!(with("aud", "them".into()), TokenError::Audience);
        let mut no_exp = ok.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            guard.verify(&token(no_exp)).unwrap_err(),
            TokenError::MissingClaim("exp".into())
        );
        // Present but not a number is malformed, not missing.
        let text_exp = with("exp", (now() + 60).to_string().into());
        assert_eq!(text_exp, TokenError::BadClaim("exp".into()));
        assert_eq!(text_exp.to_string(), "the token's `exp` claim is malformed");
        // Within the leeway is still fine.
        assert!(
            guard
                .verify(&token({
                    let mut c = ok.clone();
                    c["exp"] = (now() - 2).into();
                    c
                }))
                .is_ok()
        );
    }

    #[test]
    fn float_and_huge_expiry_times_are_read() {
        let (_, guard) = guard("leeway_s = 0\n");
        let exp = (now() + 60) as f64 + 0.5;
        let principal = guard
            .verify(&token(serde_json::json!({"exp": exp})))
            .unwrap();
        let at = principal.expires_at.expect("a float exp is read");
        assert!(at > SystemTime::now());
        let never = guard
            .verify(&token(serde_json::json!({"exp": u64::MAX})))
            .unwrap();
        assert_eq!(never.expires_at, None);
    }

    #[test]
    fn authorize_answers_401_403_or_a_principal() {
        let (_, guard) = guard("[auth.role_hierarchy]\nROLE_ADMIN = [\"ROLE_USER\"]\n");
        let required = vec!["ROLE_USER".to_owned()];
        let missing = guard.authorize(None, &required).unwrap_err();
        assert_eq!(missing.status, 401);
        assert!(
            missing
                .headers
                .iter()
                .any(|(name, value)| *name == "WWW-Authenticate" && value.starts_with("Bearer"))
        );
        assert_eq!(
            guard
                .authorize(Some("garbage"), &required)
                .unwrap_err()
                .status,
            401
        );
        let admin =
            token(serde_json::json!({"sub": "root", "exp": now() + 60, "roles": ["ROLE_ADMIN"]}));
        let admitted = guard.authorize(Some(&admin), &required).unwrap();
        assert_eq!(admitted.principal.unwrap().user.as_deref(), Some("root"));
        let nobody =
            token(serde_json::json!({"sub": "x", "exp": now() + 60, "roles": ["ROLE_GUEST"]}));
        let forbidden = guard.authorize(Some(&nobody), &required).unwrap_err();
        assert_eq!(forbidden.status, 403);
        assert!(forbidden.body.contains("ROLE_USER"), "{}", forbidden.body);
        // Public routes: anonymous without a token, anonymous with a bad one.
        assert_eq!(guard.authorize(None, &[]).unwrap(), Authorized::default());
        assert_eq!(
            guard.authorize(Some("garbage"), &[]).unwrap(),
            Authorized {
                principal: None,
                ignored: Some(TokenError::Malformed)
            }
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let (config, guard) = guard("issuer = \"dev\"\n");
        let token = mint(
            &config,
            "alice",
            &["ROLE_ADMIN".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
        let principal = guard.verify(&token).unwrap();
        assert_eq!(principal.user.as_deref(), Some("alice"));
        assert_eq!(principal.roles, ["ROLE_ADMIN"]);
        let err = mint(&Config::default(), "a", &[], Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("auth.hs256_secret"), "{err}");
    }

    #[test]
    fn unreadable_or_wrong_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a key").unwrap();
        let mut config = Config::default();
        config.auth.rs256_public_key = Some(garbage);
        let err = Guard::new(&config).err().unwrap().to_string();
        assert!(
            err.contains("auth.rs256_public_key") && err.contains("not an RSA public key"),
            "{err}"
        );
        config.auth.rs256_public_key = None;
        config.auth.es256_public_key = Some(dir.path().join("missing.pem"));
        let err = Guard::new(&config).err().unwrap().to_string();
        assert!(
            err.contains("auth.es256_public_key") && err.contains("missing.pem"),
            "{err}"
        );
        config.auth.es256_public_key = None;
        config.auth.hs256_secret_env = Some("SWITCHYARD_TEST_UNSET_SECRET".into());
        let err = Guard::new(&config).err().unwrap().to_string();
        assert!(err.contains("SWITCHYARD_TEST_UNSET_SECRET"), "{err}");
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        assert!(
            parse_ttl("1y")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
        assert!(parse_ttl("soon").is_err());
    }
}
