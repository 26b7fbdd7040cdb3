//! Bearer-token authentication, checked on every gRPC call before it reaches Flight SQL.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// The environment variable `salient serve` reads its token from when no file is given.
pub const TOKEN_ENV: &str = "SALIENT_SERVE_TOKEN";

/// Who may call the server.
#[derive(Clone)]
pub enum Auth {
    /// Anyone who can connect: only allowed on a loopback address.
    None,
    /// Callers presenting `authorization: Bearer TOKEN`; only the token's SHA-256 is kept.
    Token(Arc<[u8; 32]>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Token(_) => f.write_str("Auth::Token(..)"),
        }
    }
}

impl Auth {
    /// A token (surrounding whitespace, such as a file's final newline, is not part of it).
    pub fn token(token: &str, origin: &str) -> Result<Self> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::Invalid(format!("{origin}: the token is empty")));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Invalid(format!(
                "{origin}: the token contains whitespace or control characters"
            )));
        }
        Ok(Auth::Token(Arc::new(
            Sha256::digest(token.as_bytes()).into(),
        )))
    }

    /// The token in `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("token file {}: {e}", path.display())))?;
        Self::token(&text, &format!("token file {}", path.display()))
    }

    /// Whether `header` (the `authorization` value) carries the token.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        match self {
            Auth::None => true,
            Auth::Token(expected) => {
                header
                    .and_then(|h| h.strip_prefix(b"Bearer "))
                    .is_some_and(|presented| {
                        let digest: [u8; 32] = Sha256::digest(presented).into();
                        bool::from(digest.ct_eq(expected.as_ref()))
                    })
            }
        }
    }
}

/// The tonic interceptor: a missing or wrong token gets `Unauthenticated`, with nothing about
/// what exists.
pub fn checker(
    auth: Auth,
) -> impl FnMut(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if auth.admits(header) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("a valid bearer token is required"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_admitted() {
        let auth = Auth::token("s3cret-token\n", "test").unwrap();
        assert!(auth.admits(Some(b"Bearer s3cret-token")));
        assert!(!auth.admits(Some(b"Bearer s3cret-tokem")));
        assert!(!auth.admits(Some(b"Bearer s3cret-token ")));
        assert!(!auth.admits(Some(b"bearer s3cret-token")));
        assert!(!auth.admits(Some(b"s3cret-token")));
        assert!(!auth.admits(None));
        assert!(Auth::None.admits(None));
    }

    #[test]
    fn empty_or_spaced_tokens_are_refused() {
        assert!(Auth::token(" \n", "t").is_err());
        assert!(Auth::token("two words", "t").is_err());
        let missing = Auth::from_file(Path::new("/no/such/token")).unwrap_err();
        assert!(missing.to_string().contains("/no/such/token"), "{missing}");
    }

    #[test]
    fn the_token_is_never_printed() {
        let auth = Auth::token("visible?", "t").unwrap();
        assert!(!format!("{auth:?}").contains("visible"));
    }
}
