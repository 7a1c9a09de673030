//! OAuth 2.0 as Kommo runs it: access tokens that expire (sim time), refresh tokens that work
//! exactly once, authorization codes that work exactly once.
//!
//! Kept free of HTTP types: [`OAuth::grant`] returns a status and a JSON body, and the API layer
//! sends them. Losing the newest refresh token must be fatal for a client, as in production, so a
//! used refresh token is never accepted again.

use std::collections::{HashMap, HashSet};

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::AuthConfig;
use crate::problem::problem_value;

/// Body of `POST /oauth2/access_token` (JSON or form-encoded).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenRequest {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub refresh_token: Option<String>,
    pub redirect_uri: Option<String>,
}

/// Result of a grant: HTTP status and JSON body.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: u16,
    pub body: Value,
    /// A revoked or unknown refresh token was presented.
    pub refresh_reuse: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefreshState {
    Live { expires_at: i64 },
    Used,
}

/// Why a bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Unknown,
    Expired,
}

/// Issued tokens and used codes.
#[derive(Debug, Default)]
pub struct OAuth {
    access: HashMap<String, i64>,
    refresh: HashMap<String, RefreshState>,
    used_codes: HashSet<String>,
}

fn token(rng: &mut impl Rng, prefix: &str) -> String {
    let body: String = rng
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

fn error(status: u16, detail: &str) -> Outcome {
    Outcome {
        status,
        body: problem_value(status, detail),
        refresh_reuse: false,
    }
}

fn missing(field: &str) -> Outcome {
    let mut body = problem_value(400, "Request validation failed");
    body["validation-errors"] = json!([{
        "request_id": "0",
        "errors": [{"code": "NotBlank", "path": field, "detail": "This value should not be blank."}]
    }]);
    Outcome {
        status: 400,
        body,
        refresh_reuse: false,
    }
}

impl OAuth {
    /// Checks an `Authorization` header value.
    pub fn check_bearer(
        &self,
        cfg: &AuthConfig,
        header: Option<&str>,
        now: i64,
    ) -> Result<(), AuthError> {
        let h = header.ok_or(AuthError::Missing)?.trim();
        let tok = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?
            .trim();
        if cfg.long_lived_token.as_deref() == Some(tok) {
            return Ok(());
        }
        match self.access.get(tok) {
            Some(&exp) if now < exp => Ok(()),
            Some(_) => Err(AuthError::Expired),
            None => Err(AuthError::Unknown),
        }
    }

    /// Runs the `authorization_code` or `refresh_token` grant.
    pub fn grant(
        &mut self,
        cfg: &AuthConfig,
        req: &TokenRequest,
        now: i64,
        rng: &mut impl Rng,
    ) -> Outcome {
        let Some(client_id) = req.client_id.as_deref() else {
            return missing("client_id");
        };
        let Some(secret) = req.client_secret.as_deref() else {
            return missing("client_secret");
        };
        let Some(grant_type) = req.grant_type.as_deref() else {
            return missing("grant_type");
        };
        let Some(redirect) = req.redirect_uri.as_deref() else {
            return missing("redirect_uri");
        };
        if client_id != cfg.client_id || secret != cfg.client_secret {
            return error(401, "Client authentication failed");
        }
        if redirect != cfg.redirect_uri {
            return error(401, "Redirect URI does not match the integration's");
        }
        match grant_type {
            "authorization_code" => {
                let Some(code) = req.code.as_deref() else {
                    return missing("code");
                };
                if !cfg.auth_codes.iter().any(|c| c == code) {
                    return error(400, "Authorization code has expired");
                }
                if !self.used_codes.insert(code.to_string()) {
                    return error(400, "Authorization code has been revoked");
                }
                self.issue(cfg, now, rng)
            }
            "refresh_token" => {
                let Some(rt) = req.refresh_token.as_deref() else {
                    return missing("refresh_token");
                };
                match self.refresh.get(rt).copied() {
                    Some(RefreshState::Live { expires_at }) if now < expires_at => {
                        self.refresh.insert(rt.to_string(), RefreshState::Used);
                        self.issue(cfg, now, rng)
                    }
                    Some(RefreshState::Live { .. }) => error(401, "Token has expired"),
                    _ => {
                        let mut o = error(401, "Token has been revoked");
                        o.refresh_reuse = true;
                        o
                    }
                }
            }
            other => {
                let mut o = error(400, "The authorization grant type is not supported");
                o.body["hint"] = json!(format!("unsupported grant_type {other:?}"));
                o
            }
        }
    }

    fn issue(&mut self, cfg: &AuthConfig, now: i64, rng: &mut impl Rng) -> Outcome {
        let ttl = cfg.access_token_ttl.as_secs() as i64;
        let access = token(rng, "sim-at-");
        let refresh = token(rng, "sim-rt-");
        self.access.insert(access.clone(), now + ttl);
        self.refresh.insert(
            refresh.clone(),
            RefreshState::Live {
                expires_at: now + cfg.refresh_token_ttl.as_secs() as i64,
            },
        );
        Outcome {
            status: 200,
            body: json!({
                "token_type": "Bearer",
                "expires_in": ttl,
                "access_token": access,
                "refresh_token": refresh,
                "server_time": now,
            }),
            refresh_reuse: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(grant: &str, code: Option<&str>, rt: Option<&str>) -> TokenRequest {
        TokenRequest {
            client_id: Some("sim-client".into()),
            client_secret: Some("sim-secret".into()),
            grant_type: Some(grant.into()),
            code: code.map(Into::into),
            refresh_token: rt.map(Into::into),
            redirect_uri: Some("https://example.com/oauth".into()),
        }
    }

    #[test]
    fn code_is_single_use_and_refresh_rotates() {
        let cfg = AuthConfig::default();
        let mut o = OAuth::default();
        let mut rng = rand::thread_rng();
        let first = o.grant(
            &cfg,
            &req("authorization_code", Some("sim-code"), None),
            100,
            &mut rng,
        );
        assert_eq!(first.status, 200);
        let again = o.grant(
            &cfg,
            &req("authorization_code", Some("sim-code"), None),
            100,
            &mut rng,
        );
        assert_eq!(again.status, 400);
        let rt = first.body["refresh_token"].as_str().unwrap().to_string();
        let at = first.body["access_token"].as_str().unwrap().to_string();
        let second = o.grant(&cfg, &req("refresh_token", None, Some(&rt)), 200, &mut rng);
        assert_eq!(second.status, 200);
        let reuse = o.grant(&cfg, &req("refresh_token", None, Some(&rt)), 200, &mut rng);
        assert_eq!(reuse.status, 401);
        assert!(reuse.refresh_reuse);
        assert_eq!(reuse.body["detail"], "Token has been revoked");
        let bearer = format!("Bearer {at}");
        assert_eq!(o.check_bearer(&cfg, Some(&bearer), 200), Ok(()));
        assert_eq!(
            o.check_bearer(&cfg, Some(&bearer), 100 + 86_400),
            Err(AuthError::Expired)
        );
        assert_eq!(
            o.check_bearer(&cfg, Some("Bearer sim-token"), i64::MAX),
            Ok(())
        );
    }
}
