//! What the plugin keeps in its cookies: the [`Session`] of a logged-in user, and the
//! [`Login`] in flight between the redirect to the provider and the callback.
//!
//! Invariants: both travel only sealed ([`crate::seal`]), each with its own purpose, so one
//! never opens as the other; the serde names are one letter and empty fields are left out,
//! so a typical session fits one cookie with room to spare; each login has its own cookie,
//! named after its `state`, so logins started in parallel tabs do not overwrite each other.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;

use crate::cookie::{is_prefixed, PREFIXED_ID_CHARS};
use crate::pkce;
use crate::seal::{SealError, Sealer};

/// The sealing purpose of a [`Session`].
pub const SESSION_PURPOSE: &str = "session";

/// The sealing purpose of a [`Login`].
pub const LOGIN_PURPOSE: &str = "login";

/// A logged-in user, as the session cookie holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Session {
    /// The `sub` claim of the ID token.
    #[serde(rename = "s")]
    pub sub: String,
    /// The `email` claim, if asked for.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The groups claim, if asked for.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The other claims the configuration chose to keep.
    #[serde(rename = "c", default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// When the tokens expire and a refresh is due (unix seconds).
    #[serde(rename = "x")]
    pub expires_at: u64,
    /// When the session ends whatever the refreshes (unix seconds): its maximum lifetime.
    #[serde(rename = "z")]
    pub ends_at: u64,
    /// The refresh token, if the provider issued one.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The ID token, kept only when needed (as `id_token_hint` at logout): it is large.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// A random id of this session: the key of its single-flight refresh.
    #[serde(rename = "d")]
    pub sid: String,
}

impl Session {
    /// A new random session id.
    pub fn new_sid() -> String {
        pkce::random_token(16)
    }

    /// Seals the session for its cookie.
    pub fn seal(&self, s: &Sealer) -> String {
        // Serializing plain strings, numbers and JSON values cannot fail; an empty cookie
        // would not open, which fails closed.
        let json = serde_json::to_vec(self).unwrap_or_default();
        s.seal(SESSION_PURPOSE, &json)
    }

    /// Opens a session cookie; the flag says whether the current key opened it (if not, the
    /// caller should set the cookie again). A cookie that opens but does not hold a session
    /// is [`SealError::Malformed`].
    pub fn open(s: &Sealer, text: &str) -> Result<(Session, bool), SealError> {
        let opened = s.open(SESSION_PURPOSE, text)?;
        let session =
            serde_json::from_slice(&opened.plaintext).map_err(|_| SealError::Malformed)?;
        Ok((session, opened.with_current_key))
    }

    /// Whether the tokens have expired at `now` (unix seconds), so a refresh is due.
    pub fn refresh_due(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// Whether the session has reached its maximum lifetime at `now` (unix seconds).
    pub fn ended(&self, now: u64) -> bool {
        now >= self.ends_at
    }
}

/// A login in flight: what the callback needs to check the provider's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// The `state` sent to the provider, which must come back unchanged (CSRF protection).
    #[serde(rename = "s")]
    pub state: String,
    /// The `nonce` sent to the provider, which the ID token must carry (replay protection).
    #[serde(rename = "n")]
    pub nonce: String,
    /// The PKCE code verifier whose challenge was sent.
    #[serde(rename = "v")]
    pub verifier: String,
    /// Where to send the browser afterwards (already checked by
    /// [`crate::redirect::safe_target`]; at most 2048 bytes, so the cookie stays one chunk).
    #[serde(rename = "t")]
    pub target: String,
    /// When the login started (unix seconds), so a stale one can be refused.
    #[serde(rename = "c")]
    pub created: u64,
}

impl Login {
    /// A new login to `target`, started at `now`, with fresh random `state` and `nonce` and
    /// a new PKCE verifier.
    pub fn begin(target: String, now: u64) -> Login {
        Login {
            state: pkce::random_token(32),
            nonce: pkce::random_token(32),
            verifier: pkce::verifier(),
            target,
            created: now,
        }
    }

    /// Seals the login for its cookie.
    pub fn seal(&self, s: &Sealer) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        s.seal(LOGIN_PURPOSE, &json)
    }

    /// Opens a login cookie. A cookie that opens but does not hold a login is
    /// [`SealError::Malformed`].
    pub fn open(s: &Sealer, text: &str) -> Result<Login, SealError> {
        let opened = s.open(LOGIN_PURPOSE, text)?;
        serde_json::from_slice(&opened.plaintext).map_err(|_| SealError::Malformed)
    }

    /// Whether `state` (from the callback's query) is this login's, compared in constant
    /// time.
    pub fn matches_state(&self, state: &str) -> bool {
        bool::from(self.state.as_bytes().ct_eq(state.as_bytes()))
    }
}

/// The name of the cookie of the login with `state`: `{prefix}_{first 12 characters of
/// state}`. The state must be at least 12 characters of base64url (as [`Login::begin`]
/// makes it) for [`is_login_cookie`] to recognise the name. The cookie only finds the login:
/// the callback still checks the whole state against the one sealed inside.
pub fn login_cookie_name(prefix: &str, state: &str) -> String {
    let id: String = state.chars().take(PREFIXED_ID_CHARS).collect();
    format!("{prefix}_{id}")
}

/// Whether `name` is a login cookie made by [`login_cookie_name`] with `prefix`.
pub fn is_login_cookie(prefix: &str, name: &str) -> bool {
    is_prefixed(name, prefix)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn sealer() -> Sealer {
        Sealer::new(&[b"a session secret of at least thirty-two bytes"]).unwrap()
    }

    fn typical() -> Session {
        Session {
            sub: "248289761001-f3d2c1b0-a9e8-4d7c".into(),
            email: Some("jane.doe@example.com".into()),
            groups: vec!["engineering".into(), "admins".into()],
            claims: Map::new(),
            expires_at: 1_767_225_600,
            ends_at: 1_767_254_400,
            refresh_token: Some("8xLOxBtZp8-3jK2mN5qR7sT9vW1yZ3bC5dE7fG9h".into()),
            id_token: None,
            sid: Session::new_sid(),
        }
    }

    #[test]
    fn a_typical_session_seals_to_at_most_400_bytes() {
        let sealed = typical().seal(&sealer());
        assert!(sealed.len() <= 400, "{} bytes", sealed.len());
    }

    #[test]
    fn opens_the_session_it_sealed() {
        let s = sealer();
        let mut session = typical();
        session.claims.insert("tenant".into(), json!("acme"));
        session.id_token = Some("eyJ.eyJ.sig".into());
        let (back, current) = Session::open(&s, &session.seal(&s)).unwrap();
        assert_eq!(back, session);
        assert!(current);
    }

    #[test]
    fn leaves_empty_fields_out_of_the_sealed_form() {
        let session = Session {
            email: None,
            groups: vec![],
            refresh_token: None,
            ..typical()
        };
        let json = serde_json::to_value(&session).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["d", "s", "x", "z"]);
    }

    #[test]
    fn a_login_never_opens_as_a_session_nor_the_reverse() {
        let s = sealer();
        let login = Login::begin("/after".into(), 1000).seal(&s);
        assert_eq!(Session::open(&s, &login).unwrap_err(), SealError::Invalid);
        let session = typical().seal(&s);
        assert_eq!(Login::open(&s, &session).unwrap_err(), SealError::Invalid);
    }

    #[test]
    fn something_else_sealed_for_a_session_is_malformed() {
        let s = sealer();
        let sealed = s.seal(SESSION_PURPOSE, b"{\"not\":\"a session\"}");
        assert_eq!(
            Session::open(&s, &sealed).unwrap_err(),
            SealError::Malformed
        );
    }

    #[test]
    fn opens_the_login_it_sealed_and_checks_its_state() {
        let s = sealer();
        let login = Login::begin("/after".into(), 1000);
        assert_eq!(login.state.len(), 43);
        assert_eq!(login.verifier.len(), 43);
        assert_ne!(login.state, login.nonce);
        let back = Login::open(&s, &login.seal(&s)).unwrap();
        assert_eq!(back, login);
        assert!(back.matches_state(&login.state));
        assert!(!back.matches_state(&login.state[..42]));
        assert!(!back.matches_state(""));
    }

    #[test]
    fn a_login_with_the_longest_target_fits_one_cookie_chunk() {
        let target = format!("/{}", "a".repeat(2047));
        let sealed = Login::begin(target, 1000).seal(&sealer());
        assert!(sealed.len() <= crate::cookie::CHUNK, "{}", sealed.len());
    }

    #[test]
    fn names_one_cookie_per_login_and_recognises_them() {
        let state = "AbCdEf-_1234rest-of-the-state";
        let name = login_cookie_name("sg_login", state);
        assert_eq!(name, "sg_login_AbCdEf-_1234");
        assert!(is_login_cookie("sg_login", &name));
        let other = login_cookie_name("sg_login", &Login::begin("/".into(), 0).state);
        assert!(is_login_cookie("sg_login", &other));
        assert_ne!(name, other);
        assert!(!is_login_cookie("sg_login", "sg_login_session"));
        assert!(!is_login_cookie("sg", &name));
    }

    #[test]
    fn tells_when_a_refresh_is_due_and_when_the_session_ends() {
        let session = typical();
        assert!(!session.refresh_due(session.expires_at - 1));
        assert!(session.refresh_due(session.expires_at));
        assert!(!session.ended(session.ends_at - 1));
        assert!(session.ended(session.ends_at));
    }
}
