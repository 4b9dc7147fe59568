//! `Authorization: Bearer <public token>`: a token minted at `POST /v1/public-tokens`. Its scopes,
//! not the grants table, decide what it may be exchanged for.

use std::sync::Arc;

use actix_web::http::header::HeaderMap;

use super::{bearer_token, unverified_issuer, AuthError, Gate, Identity, Method, Outcome, Rights};
use crate::public_tokens::PublicTokens;

pub struct PublicTokenAuthenticator {
    tokens: Arc<PublicTokens>,
}

impl PublicTokenAuthenticator {
    pub fn new(tokens: Arc<PublicTokens>) -> Self {
        Self { tokens }
    }

    pub fn authenticate(&self, headers: &HeaderMap, gate: &dyn Gate) -> Outcome {
        let Some(token) = bearer_token(headers) else {
            return Outcome::NotMine;
        };
        if unverified_issuer(token).as_deref() != Some(self.tokens.issuer.as_str()) {
            return Outcome::NotMine;
        }
        if !gate.admit() {
            return Outcome::Rejected(AuthError::Throttled);
        }
        match self.tokens.verify(token) {
            Some(claims) => {
                let mut identity = Identity::new(claims.sub, Method::PublicToken);
                identity.rights = Rights::Carried(claims.scopes.rights());
                Outcome::Authenticated(identity)
            }
            None => Outcome::Rejected(AuthError::Invalid),
        }
    }
}
