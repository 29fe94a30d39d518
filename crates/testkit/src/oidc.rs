//! A real OpenID provider and a real browser for the OpenID Connect tests, both from
//! `tests/fixtures/oidc` (node packages `npm ci` installs there; `scripts/test` runs it).
//!
//! [`OidcProvider`] is `provider.js`: oidc-provider 8 on a free loopback port, issuer
//! `http://127.0.0.1:PORT`, with the clients it is given and four users (account id = email):
//! `alice@example.com` (groups engineering, admins), `bob@example.com` (sales),
//! `carol@other.org` (engineering) and `dave@example.com` (sales, `email_verified` false).
//! Its login form takes any password; another login comes back to the client as
//! `access_denied`. There is no consent screen, PKCE (S256) is required, every client allowed
//! the `refresh_token` grant gets refresh tokens, and a refresh token is spent once used: using
//! it again is `invalid_grant` and revokes the whole login (every token of its grant), as does
//! logging out. Its cookies are named `op_session`, `op_interaction` and
//! `op_interaction_resume` (cookies do not tell the ports of 127.0.0.1 apart). Test-only
//! routes count the requests it answers, sign tokens to order and switch it off.
//!
//! [`run_browser`] is `browser.js`: Debian's chromium, driven by playwright-core, logging in
//! through the gateway, out, and in again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use super::proc;

/// How long `provider.js` gets to print that it is listening (node loads oidc-provider and
/// generates two RSA keys first).
const START: Duration = Duration::from_secs(20);

/// How long a request to a test route may take.
const REQUEST: Duration = Duration::from_secs(10);

/// What [`OidcProvider::start`] configures.
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    /// A JSON array of oidc-provider client metadata: `client_id`, `client_secret`,
    /// `redirect_uris`, `post_logout_redirect_uris`, `token_endpoint_auth_method`
    /// (`client_secret_basic` or `client_secret_post`), `grant_types`
    /// (`["authorization_code", "refresh_token"]`) and `response_types` (`["code"]`).
    pub clients: Value,
    /// The lifetime of ID tokens, in seconds.
    pub id_token_ttl: u64,
    /// The lifetime of access tokens, in seconds.
    pub access_token_ttl: u64,
}

impl Default for ProviderOptions {
    /// No clients; ID and access tokens live an hour (refresh tokens a day).
    fn default() -> Self {
        ProviderOptions {
            clients: json!([]),
            id_token_ttl: 3600,
            access_token_ttl: 3600,
        }
    }
}

/// A running `provider.js`; killed (and its directory removed) on drop.
pub struct OidcProvider {
    child: Child,
    port: u16,
    /// Holds `provider.log`, the provider's stderr.
    dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts the provider on a free loopback port (it binds port 0 itself and reports the
    /// one it got), with `options`; returns once it serves requests.
    pub fn start(options: &ProviderOptions) -> OidcProvider {
        let node = super::require("node", "nodejs");
        let fixture = fixture_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("provider.log");
        let stderr = std::fs::File::create(&log).expect("create provider.log");
        let mut child = Command::new(node)
            .arg("provider.js")
            .current_dir(&fixture)
            .env("PORT", "0")
            .env("CLIENTS", options.clients.to_string())
            .env("ID_TOKEN_TTL", options.id_token_ttl.to_string())
            .env("ACCESS_TOKEN_TTL", options.access_token_ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node provider.js: {e}"));
        let stdout = child.stdout.take().expect("provider.js stdout");
        let mut provider = OidcProvider {
            child,
            port: 0,
            dir,
        };
        match wait_for_port(stdout) {
            Some(port) => provider.port = port,
            None => panic!(
                "provider.js did not start listening within {START:?}; its log ({}):\n{}",
                log.display(),
                provider.log()
            ),
        }
        provider
    }

    /// `http://127.0.0.1:PORT`: the issuer, and the base of every endpoint.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The provider's port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests answered so far (not those refused while [down](Self::set_down)), by
    /// endpoint: `{"token_calls", "refresh_calls", "authorization_code_calls",
    /// "userinfo_calls", "authorization_calls", "end_session_calls"}`. `token_calls` counts
    /// every token request; `refresh_calls` and `authorization_code_calls` those of one grant
    /// type; `authorization_calls` the requests that start a login (not its resumption).
    pub fn stats(&self) -> Value {
        let body = self.test_route("GET", "/test/stats", None);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {body}"))
    }

    /// A compact JWS of `claims` with `header` merged over `{"alg": "RS256", "kid": <the
    /// key's>, "typ": "JWT"}`, signed with RS256 by `key`: `"issuer"` (the provider's published
    /// key, kid `issuer-key`) or `"other"` (kid `other-key`, published nowhere). The signature
    /// is RS256 whatever the header says; with `"alg": "none"` the token is unsigned
    /// (`header.claims.`).
    pub fn sign(&self, header: &Value, claims: &Value, key: &str) -> String {
        let request = json!({"header": header, "claims": claims, "key": key});
        self.test_route("POST", "/test/sign", Some(&request))
    }

    /// An opaque access token for `account` (an email), as if issued to `client_id` (a
    /// configured client) with `scope`, that the userinfo endpoint accepts for `ttl` seconds
    /// (at least 1).
    pub fn access_token(&self, account: &str, scope: &str, client_id: &str, ttl: u64) -> String {
        let request = json!({
            "account": account, "scope": scope, "client_id": client_id, "ttl": ttl,
        });
        self.test_route("POST", "/test/access_token", Some(&request))
    }

    /// Takes the provider down (every request but the test routes' is answered 503) or
    /// brings it back up.
    pub fn set_down(&self, down: bool) {
        let path = if down { "/test/down" } else { "/test/up" };
        self.test_route("POST", path, None);
    }

    /// Arms the one-shot ID token tampering of the next token answer (`/test/tamper`:
    /// `{"claims": {...}, "header": {...}, "key": "issuer"|"other"|"none"}`).
    pub fn tamper(&self, spec: &Value) {
        self.test_route("POST", "/test/tamper", Some(spec));
    }

    /// Plays a user at the provider without a browser: follows `authorize_url` (built by a
    /// relying party) through the provider's redirects and its development login form as
    /// `login`, with a cookie jar of its own (a fresh browser each call), and returns the
    /// first redirect that leaves the provider (the relying party's callback), unrequested.
    pub fn login(&self, authorize_url: &str, login: &str, password: &str) -> String {
        let issuer = self.issuer();
        let mut jar: Vec<(String, String)> = Vec::new();
        let mut next = (
            "GET".to_string(),
            authorize_url
                .strip_prefix(&issuer)
                .unwrap_or_else(|| panic!("not a URL of this provider: {authorize_url}"))
                .to_string(),
            String::new(),
        );
        for _ in 0..20 {
            let (method, path, form) = next.clone();
            let cookie = jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
            if !cookie.is_empty() {
                headers.push(("Cookie", cookie.as_str()));
            }
            if form.is_empty() {
                headers.remove(0);
            }
            let (status, got, body) = self.exchange(&method, &path, &headers, &form);
            for (name, value) in &got {
                if name.eq_ignore_ascii_case("set-cookie") {
                    let pair = value.split(';').next().unwrap_or("");
                    if let Some((k, v)) = pair.split_once('=') {
                        jar.retain(|(n, _)| n != k);
                        if !v.is_empty() {
                            jar.push((k.to_string(), v.to_string()));
                        }
                    }
                }
            }
            let location = got
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.clone());
            match (status, location) {
                (301..=308, Some(loc)) => {
                    let path = if let Some(p) = loc.strip_prefix(&issuer) {
                        p.to_string()
                    } else if loc.starts_with('/') {
                        loc
                    } else {
                        return loc;
                    };
                    next = ("GET".into(), path, String::new());
                }
                (200, _) => {
                    let action = body
                        .split("action=\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or_else(|| panic!("{path}: no form in the page: {body}"))
                        .to_string();
                    let form = if body.contains("value=\"consent\"") {
                        "prompt=consent".to_string()
                    } else {
                        format!(
                            "prompt=login&login={}&password={}",
                            encode(login),
                            encode(password)
                        )
                    };
                    next = ("POST".into(), action, form);
                }
                (s, _) => panic!(
                    "{method} {path} answered {s}: {body}\nprovider log:\n{}",
                    self.log()
                ),
            }
        }
        panic!("the login did not leave the provider after 20 steps");
    }

    /// One request on a connection of its own: status, headers and body of the answer.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to provider.js");
        s.set_read_timeout(Some(REQUEST)).ok();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.port
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(request.as_bytes())
            .expect("write to provider.js");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("read {method} {path} from provider.js: {e}"));
        let reply = String::from_utf8_lossy(&reply);
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer: {reply}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    /// The provider's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// The body of a test route's answer; panics unless it is a 200.
    fn test_route(&self, method: &str, path: &str, body: Option<&Value>) -> String {
        let body = body.map(Value::to_string).unwrap_or_default();
        let (status, reply) = self.http(method, path, &[], &body);
        if status != 200 {
            panic!(
                "{method} {path} answered {status}: {reply}\nprovider log:\n{}",
                self.log()
            );
        }
        reply
    }

    /// One HTTP/1.1 request on a connection of its own; the status and body of the answer.
    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to provider.js");
        s.set_read_timeout(Some(REQUEST)).ok();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.port
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(request.as_bytes())
            .expect("write to provider.js");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("read {method} {path} from provider.js: {e}"));
        let reply = String::from_utf8_lossy(&reply);
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer: {reply}"));
        (status, body.to_string())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        proc::stop(&mut self.child);
    }
}

/// The port in the `listening on http://127.0.0.1:PORT` line `provider.js` prints, or `None`
/// when it exits or does not print it in time. Whatever it prints later is read and dropped
/// by a thread of its own, so that it never blocks on a full pipe.
fn wait_for_port(stdout: ChildStdout) -> Option<u16> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.rsplit(':').next().and_then(|p| p.parse().ok()));
                break;
            }
        }
        lines.for_each(drop);
    });
    rx.recv_timeout(START).ok().flatten()
}

/// `tests/fixtures/oidc`, checked to have its node packages.
fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/oidc");
    if !dir.join("node_modules").is_dir() {
        panic!(
            "the OIDC fixture's node packages are not installed in {}: run `scripts/test` \
             (it runs `npm ci` there), or `npm ci` in that directory",
            dir.display()
        );
    }
    dir
}

/// Runs `browser.js`: opens `target` (a URL the gateway protects), logs in as `login` with
/// `password` on the provider's form, opens `logout` (confirming on the provider's page),
/// opens `target` again and logs in again if the form is shown. Returns what it saw:
/// `{"first": {"url", "status", "body"}, "after_logout": {"url", "status"},
/// "login_form_again": bool, "second": {"url", "status", "body"}}`: where each step ended,
/// the HTTP status of that page (0 when none came) and its text (the body itself for a text
/// or JSON response). Panics with the browser's account of the failure (the page's URL and
/// text) when a step fails. With `SCREENSHOT_DIR` set in the environment, a PNG of each
/// step is saved there.
pub fn run_browser(target: &str, logout: &str, login: &str, password: &str) -> Value {
    let node = super::require("node", "nodejs");
    let chromium = super::require("chromium", "chromium");
    let out = Command::new(node)
        .arg("browser.js")
        .current_dir(fixture_dir())
        .env("CHROMIUM", chromium)
        .env("TARGET", target)
        .env("LOGOUT", logout)
        .env("LOGIN", login)
        .env("PASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run node browser.js: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!("browser.js failed ({}):\n{stderr}{stdout}", out.status);
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("browser.js printed no JSON ({e}):\n{stdout}{stderr}"))
}

/// Form-urlencodes one value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_client() -> ProviderOptions {
        ProviderOptions {
            clients: json!([{
                "client_id": "gateway",
                "client_secret": "gateway-secret",
                "redirect_uris": ["http://127.0.0.1:9/callback"],
                "post_logout_redirect_uris": ["http://127.0.0.1:9/"],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            }]),
            ..ProviderOptions::default()
        }
    }

    fn get_json(provider: &OidcProvider, path: &str, headers: &[(&str, &str)]) -> Value {
        let (status, body) = provider.http("GET", path, headers, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The JSON in one base64url part of a compact JWS.
    fn decode_part(part: &str) -> Value {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
        for c in part.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c).expect("base64url") as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn publishes_its_endpoints_and_one_key_for_its_issuer() {
        let provider = OidcProvider::start(&one_client());
        let issuer = provider.issuer();
        assert_eq!(issuer, format!("http://127.0.0.1:{}", provider.port()));
        let discovery = get_json(&provider, "/.well-known/openid-configuration", &[]);
        assert_eq!(discovery["issuer"], issuer);
        for (field, path) in [
            ("authorization_endpoint", "/auth"),
            ("token_endpoint", "/token"),
            ("userinfo_endpoint", "/me"),
            ("jwks_uri", "/jwks"),
            ("end_session_endpoint", "/session/end"),
        ] {
            assert_eq!(discovery[field], format!("{issuer}{path}"), "{field}");
        }
        assert_eq!(
            discovery["code_challenge_methods_supported"],
            json!(["S256"])
        );
        let jwks = get_json(&provider, "/jwks", &[]);
        let kids: Vec<&Value> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| &k["kid"])
            .collect();
        assert_eq!(kids, [&json!("issuer-key")]);
    }

    #[test]
    fn signs_tokens_with_its_key_another_or_none() {
        let provider = OidcProvider::start(&ProviderOptions::default());
        let claims = json!({"sub": "alice@example.com", "iss": provider.issuer()});

        let token = provider.sign(&json!({}), &claims, "issuer");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_part(parts[0]),
            json!({"alg": "RS256", "kid": "issuer-key", "typ": "JWT"})
        );
        assert_eq!(decode_part(parts[1]), claims);
        assert!(!parts[2].is_empty());

        let other = provider.sign(&json!({"typ": "at+jwt"}), &claims, "other");
        let header = decode_part(other.split('.').next().unwrap());
        assert_eq!(
            header,
            json!({"alg": "RS256", "kid": "other-key", "typ": "at+jwt"})
        );

        let unsigned = provider.sign(&json!({"alg": "none"}), &claims, "issuer");
        assert!(unsigned.ends_with('.'), "{unsigned}");
        assert_eq!(
            decode_part(unsigned.split('.').next().unwrap())["alg"],
            "none"
        );
    }

    #[test]
    fn issues_access_tokens_its_userinfo_accepts_and_counts_the_calls() {
        let provider = OidcProvider::start(&one_client());
        let token = provider.access_token("carol@other.org", "openid email groups", "gateway", 60);
        let bearer = format!("Bearer {token}");
        let userinfo = get_json(&provider, "/me", &[("Authorization", &bearer)]);
        assert_eq!(userinfo["sub"], "carol@other.org");
        assert_eq!(userinfo["email"], "carol@other.org");
        assert_eq!(userinfo["groups"], json!(["engineering"]));
        assert_eq!(userinfo.get("name"), None, "profile was not in the scope");

        let stats = provider.stats();
        assert_eq!(stats["userinfo_calls"], 1);
        assert_eq!(stats["token_calls"], 0);
        assert_eq!(stats["authorization_calls"], 0);
    }

    #[test]
    fn answers_503_while_down() {
        let provider = OidcProvider::start(&ProviderOptions::default());
        provider.set_down(true);
        let (status, _) = provider.http("GET", "/.well-known/openid-configuration", &[], "");
        assert_eq!(status, 503);
        provider.set_down(false);
        let (status, _) = provider.http("GET", "/.well-known/openid-configuration", &[], "");
        assert_eq!(status, 200);
    }
}
