//! The rules of Durable Streams subscriptions (the protocol's §6–7), without I/O: a
//! subscription's configuration as a `PUT` gives it (validated, normalized, and the
//! digest that tells a re-confirmation from a conflict), the glob of its `pattern`,
//! which webhook URLs may be called at all (and which resolved addresses), the webhook
//! retry backoff, and the keys — the Ed25519 key that signs deliveries (its JWK Set,
//! the `Webhook-Signature` header) and the HMAC of wake tokens — and the control
//! routes below `__ds/`, with which of them need no API key. The engine keeps the
//! subscriptions (`engine::subscriptions`); the routes are `http::ds_subs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A lease when the configuration names none, and its bounds.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
pub const MIN_LEASE_MS: u64 = 1_000;
pub const MAX_LEASE_MS: u64 = 600_000;

/// The acked offset of a stream a matching append linked: before its first message,
/// so everything it holds is pending.
pub const BEFORE_FIRST: &str = "-1";

/// The first path segment reserved for the protocol's control routes.
pub const RESERVED: &str = "__ds";

/// The longest subscription id, stream path, pattern or worker name, in bytes.
const MAX_TEXT: usize = 1024;
/// The most explicit streams one request may name.
const MAX_STREAMS: usize = 1000;
/// The longest webhook retry delay.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// How a subscription wakes its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    #[serde(rename = "webhook")]
    Webhook,
    #[serde(rename = "pull-wake")]
    PullWake,
}

/// A subscription's configuration, normalized: the part a re-`PUT` must repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(rename = "type")]
    pub delivery: Delivery,
    pub pattern: Option<String>,
    /// Explicit streams, sorted, each once.
    pub streams: Vec<String>,
    pub webhook_url: Option<String>,
    pub wake_stream: Option<String>,
    pub lease_ttl_ms: u64,
    pub description: Option<String>,
}

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Invalid(String),
    /// The webhook URL is not one this server calls (`WEBHOOK_URL_REJECTED`).
    UrlRejected(String),
}

impl Config {
    /// A `PUT` body's configuration.
    pub fn parse(body: &Value) -> Result<Config, ConfigError> {
        let invalid = |m: &str| ConfigError::Invalid(m.to_owned());
        let Some(o) = body.as_object() else {
            return Err(invalid("the body must be a JSON object"));
        };
        let delivery = match o.get("type").and_then(Value::as_str) {
            Some("webhook") => Delivery::Webhook,
            Some("pull-wake") => Delivery::PullWake,
            _ => return Err(invalid("type must be \"webhook\" or \"pull-wake\"")),
        };
        let pattern = match o.get("pattern") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(
                stream_path(p).map_err(|why| ConfigError::Invalid(format!("pattern: {why}")))?,
            ),
            Some(_) => return Err(invalid("pattern must be a string")),
        };
        let streams = match o.get("streams") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => stream_list(v).map_err(ConfigError::Invalid)?,
        };
        if pattern.is_none() && streams.is_empty() {
            return Err(invalid("give a pattern, streams, or both"));
        }
        let lease_ttl_ms = match o.get("lease_ttl_ms") {
            None | Some(Value::Null) => DEFAULT_LEASE_MS,
            Some(v) => v
                .as_u64()
                .filter(|ms| (MIN_LEASE_MS..=MAX_LEASE_MS).contains(ms))
                .ok_or_else(|| invalid("lease_ttl_ms must be an integer from 1000 to 600000"))?,
        };
        let description = match o.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) if d.len() <= MAX_TEXT => Some(d.clone()),
            Some(_) => {
                return Err(invalid(
                    "description must be a string of at most 1024 bytes",
                ));
            }
        };
        let (mut webhook_url, mut wake_stream) = (None, None);
        match delivery {
            Delivery::Webhook => {
                let url = o
                    .get("webhook")
                    .and_then(|w| w.get("url"))
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| invalid("a webhook subscription needs webhook.url"))?;
                check_webhook_url(url).map_err(ConfigError::UrlRejected)?;
                webhook_url = Some(url.to_owned());
            }
            Delivery::PullWake => {
                let path = o
                    .get("wake_stream")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("a pull-wake subscription needs wake_stream"))?;
                wake_stream = Some(
                    stream_path(path)
                        .map_err(|why| ConfigError::Invalid(format!("wake_stream: {why}")))?,
                );
            }
        }
        Ok(Config {
            delivery,
            pattern,
            streams,
            webhook_url,
            wake_stream,
            lease_ttl_ms,
            description,
        })
    }

    /// The digest a re-confirmation is compared by.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A stream path as subscriptions name it: relative to the stream root, without
/// leading or trailing slashes, not under the reserved `__ds`.
pub fn stream_path(raw: &str) -> Result<String, &'static str> {
    let path = raw.trim_matches('/');
    if path.is_empty() || path.len() > MAX_TEXT {
        return Err("a stream path is 1 to 1024 bytes");
    }
    if path.split('/').next() == Some(RESERVED) {
        return Err("paths under __ds are reserved");
    }
    Ok(path.to_owned())
}

/// `{"streams": [...]}`'s list: non-empty paths, sorted, each once.
pub fn stream_list(value: &Value) -> Result<Vec<String>, String> {
    let Some(items) = value.as_array() else {
        return Err("streams must be an array of stream paths".to_owned());
    };
    if items.len() > MAX_STREAMS {
        return Err(format!("at most {MAX_STREAMS} streams at once"));
    }
    let mut streams = items
        .iter()
        .map(|item| {
            item.as_str()
                .ok_or_else(|| "streams must be an array of stream paths".to_owned())
                .and_then(|p| stream_path(p).map_err(|why| format!("streams: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    streams.sort();
    streams.dedup();
    Ok(streams)
}

/// A subscription id or worker name: 1 to 1024 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TEXT
}

/// A control route: what follows `{stream root}/__ds/`, from its decoded segments.
pub enum Route {
    Jwks,
    Subscription(String),
    Streams(String),
    Stream(String, String),
    Callback(String),
    Claim(String),
    Ack(String),
    Release(String),
}

impl Route {
    pub fn parse(rest: &str) -> Option<Route> {
        let segments: Vec<String> = rest
            .split('/')
            .map(crate::ds::decode_path)
            .collect::<Option<_>>()?;
        let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
        let id = |id: &str| valid_name(id).then(|| id.to_owned());
        Some(match parts.as_slice() {
            ["jwks.json"] => Route::Jwks,
            ["subscriptions", i] => Route::Subscription(id(i)?),
            ["subscriptions", i, "streams"] => Route::Streams(id(i)?),
            ["subscriptions", i, "streams", path @ ..] if !path.is_empty() => {
                Route::Stream(id(i)?, path.join("/"))
            }
            ["subscriptions", i, "callback"] => Route::Callback(id(i)?),
            ["subscriptions", i, "claim"] => Route::Claim(id(i)?),
            ["subscriptions", i, "ack"] => Route::Ack(id(i)?),
            ["subscriptions", i, "release"] => Route::Release(id(i)?),
            _ => return None,
        })
    }
}

/// Whether a request to `path` (below the stream root) is authorized by its wake token
/// or needs nothing at all: the callback, ack and release routes, and the public keys.
pub fn keyless(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("__ds/") else {
        return false;
    };
    matches!(
        Route::parse(rest),
        Some(Route::Jwks | Route::Callback(_) | Route::Ack(_) | Route::Release(_))
    )
}

/// Whether `path` matches `pattern`: `*` is one path segment, `**` any number of them
/// (none included), anything else itself.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segments_match(&pattern, &path)
}

fn segments_match(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| segments_match(rest, &path[skip..])),
        Some((&seg, rest)) => path
            .split_first()
            .is_some_and(|(&p, tail)| (seg == "*" || seg == p) && segments_match(rest, tail)),
    }
}

/// Whether this server calls `raw` with webhooks: `https://` to a public host, or —
/// for development — `http://localhost` and `http://127.0.0.x`. Loopback, private,
/// link-local and other local targets are refused (SSRF); so are credentials in the
/// URL. A host name is checked again when it is resolved ([`public_address`]).
pub fn check_webhook_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|_| "webhook.url must be a valid URL".to_owned())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("webhook.url must not carry credentials".to_owned());
    }
    let Some(host) = url.host() else {
        return Err("webhook.url must name a host".to_owned());
    };
    match url.scheme() {
        "http" if development_host(&host) => Ok(()),
        "http" => Err(
            "http webhook URLs are only allowed for localhost or 127.0.0.x (development); use https"
                .to_owned(),
        ),
        "https" => {
            let local = match &host {
                url::Host::Domain(d) => {
                    let d = d.to_ascii_lowercase();
                    d == "localhost" || d.ends_with(".localhost")
                }
                url::Host::Ipv4(ip) => !public_address(IpAddr::V4(*ip)),
                url::Host::Ipv6(ip) => !public_address(IpAddr::V6(*ip)),
            };
            if local {
                Err("webhook.url must not target a loopback, private or link-local host".to_owned())
            } else {
                Ok(())
            }
        }
        _ => Err("webhook.url must use https".to_owned()),
    }
}

/// `localhost` or `127.0.0.x`: the development exception.
fn development_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.octets()[..3] == [127, 0, 0],
        url::Host::Ipv6(_) => false,
    }
}

/// Whether a webhook may be delivered to a host named `host` (as the URL gives it),
/// resolved to `ip`: a public address, or loopback for the development host names.
pub fn deliverable(host: &str, ip: IpAddr) -> bool {
    public_address(ip) || (host.eq_ignore_ascii_case("localhost") && ip.is_loopback())
}

/// Not loopback, private, link-local, shared (CGNAT), unspecified, broadcast,
/// documentation or multicast.
pub fn public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// The wait before webhook retry `attempt` (1 for the first): 1 s doubling up to 60 s,
/// ±20% by `jitter` in [-1, 1].
pub fn retry_delay(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY);
    base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0))
}

/// The server's webhook signing key and wake-token key, from one stored seed.
pub struct Signer {
    pair: Ed25519KeyPair,
    kid: String,
    x: String,
    tokens: hmac::Key,
}

impl Signer {
    /// The keys of a 32-byte (or longer: the first 32 count) seed.
    pub fn new(seed: &[u8]) -> Result<Signer, String> {
        let seed = seed
            .get(..32)
            .ok_or_else(|| "the signing seed is shorter than 32 bytes".to_owned())?;
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| e.to_string())?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        // The key's RFC 7638 thumbprint.
        let thumbprint = Sha256::digest(format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
        let kid = format!("ds_{}", URL_SAFE_NO_PAD.encode(thumbprint));
        let token_key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, seed),
            b"durable-streams wake tokens",
        );
        Ok(Signer {
            pair,
            kid,
            x,
            tokens: hmac::Key::new(hmac::HMAC_SHA256, token_key.as_ref()),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"keys": [...]}` with the public key.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
            "x": self.x,
        }]})
    }

    /// The `Webhook-Signature` of `body` sent at `unix_secs`: an Ed25519 signature of
    /// `{t}.{body}`.
    pub fn signature(&self, unix_secs: u64, body: &[u8]) -> String {
        let mut message = format!("{unix_secs}.").into_bytes();
        message.extend_from_slice(body);
        let signature = self.pair.sign(&message);
        format!(
            "t={unix_secs},kid={},ed25519={}",
            self.kid,
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// The wake token of subscription `id` (incarnation `nonce`) for `generation`:
    /// `{generation}.{mac}`.
    pub fn token(&self, id: &str, nonce: &str, generation: u64) -> String {
        let mac = hmac::sign(&self.tokens, token_scope(id, nonce, generation).as_bytes());
        format!("{generation}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
    }

    /// The generation a token of this subscription was made for (`None`: not one of
    /// its tokens). Checked in constant time.
    pub fn token_generation(&self, id: &str, nonce: &str, token: &str) -> Option<u64> {
        let (generation, mac) = token.split_once('.')?;
        let generation: u64 = generation.parse().ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        hmac::verify(
            &self.tokens,
            token_scope(id, nonce, generation).as_bytes(),
            &mac,
        )
        .ok()?;
        Some(generation)
    }
}

fn token_scope(id: &str, nonce: &str, generation: u64) -> String {
    format!("ds-wake:{}:{id}:{nonce}:{generation}", id.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_segments() {
        assert!(glob_match("events/*", "events/abc"));
        assert!(!glob_match("events/*", "events/abc/def"));
        assert!(!glob_match("events/*", "events"));
        assert!(!glob_match("events/*", "other/abc"));
        assert!(glob_match("events/**", "events"));
        assert!(glob_match("events/**", "events/a/b/c"));
        assert!(glob_match("**/log", "a/b/log"));
        assert!(glob_match("**", "anything/at/all"));
        assert!(glob_match("a/*/c", "a/b/c"));
        assert!(!glob_match("a/*/c", "a/b/d"));
        assert!(
            !glob_match("ev*", "events"),
            "a star inside a segment is itself"
        );
        assert!(glob_match("/events/*/", "events/x"));
    }

    #[test]
    fn webhook_urls_are_https_to_public_hosts_or_local_development() {
        for ok in [
            "https://worker.example/hooks",
            "https://93.184.216.34/x",
            "http://localhost:8080/hook",
            "http://127.0.0.1:9/hook",
            "https://[2606:4700::1]/x",
        ] {
            assert_eq!(check_webhook_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/hook",
            "http://worker.example/hook",
            "https://10.1.2.3/x",
            "https://192.168.1.1/x",
            "https://172.16.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://a.localhost/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "http://127.0.1.1/x",
            "ftp://worker.example/x",
            "https://user:pw@worker.example/x",
            "not a url",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolved_addresses_must_be_public_unless_the_host_is_localhost() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let private: IpAddr = "10.0.0.7".parse().unwrap();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        assert!(deliverable("localhost", lo));
        assert!(!deliverable("worker.example", lo));
        assert!(!deliverable("worker.example", private));
        assert!(deliverable("worker.example", public));
    }

    #[test]
    fn configurations_normalize_and_hash_the_same_when_equal() {
        let a = Config::parse(&json!({
            "type": "webhook", "pattern": "/events/*/",
            "streams": ["b", "a", "b"], "webhook": {"url": "http://localhost:1/h"}
        }))
        .unwrap();
        assert_eq!(a.pattern.as_deref(), Some("events/*"));
        assert_eq!(a.streams, ["a", "b"]);
        assert_eq!(a.lease_ttl_ms, DEFAULT_LEASE_MS);
        let b = Config::parse(&json!({
            "type": "webhook", "pattern": "events/*",
            "streams": ["a", "b"], "webhook": {"url": "http://localhost:1/h"}, "lease_ttl_ms": 30000
        }))
        .unwrap();
        assert_eq!(a.hash(), b.hash());
        let c = Config::parse(&json!({
            "type": "webhook", "pattern": "events/*", "streams": ["a", "b"],
            "webhook": {"url": "http://localhost:1/h"}, "description": "other"
        }))
        .unwrap();
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let invalid = |v: Value| matches!(Config::parse(&v), Err(ConfigError::Invalid(_)));
        assert!(invalid(json!([])));
        assert!(invalid(json!({"type": "push", "pattern": "a"})));
        assert!(invalid(
            json!({"type": "webhook", "webhook": {"url": "http://localhost/h"}})
        ));
        assert!(invalid(json!({"type": "webhook", "pattern": "a"})));
        assert!(invalid(json!({"type": "pull-wake", "pattern": "a"})));
        assert!(invalid(
            json!({"type": "pull-wake", "pattern": "a", "wake_stream": "__ds/x"})
        ));
        assert!(invalid(
            json!({"type": "pull-wake", "streams": [1], "wake_stream": "w"})
        ));
        assert!(invalid(
            json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "lease_ttl_ms": 999})
        ));
        assert!(invalid(
            json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "lease_ttl_ms": 1.5})
        ));
        assert_eq!(
            Config::parse(&json!({"type": "webhook", "pattern": "a", "webhook": {"url": "http://10.0.0.1/h"}})),
            Err(ConfigError::UrlRejected(
                "http webhook URLs are only allowed for localhost or 127.0.0.x (development); use https"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn retries_back_off_from_one_second_to_a_minute_with_a_fifth_of_jitter() {
        assert_eq!(retry_delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(retry_delay(7, 0.0), Duration::from_secs(60));
        assert_eq!(retry_delay(100, 0.0), Duration::from_secs(60));
        assert_eq!(retry_delay(1, 1.0), Duration::from_millis(1200));
        assert_eq!(retry_delay(1, -1.0), Duration::from_millis(800));
    }

    #[test]
    fn signatures_verify_with_the_published_key() {
        let signer = Signer::new(&[7u8; 32]).unwrap();
        let header = signer.signature(1_700_000_000, b"{\"a\":1}");
        let (prefix, sig) = header.rsplit_once(",ed25519=").unwrap();
        assert_eq!(prefix, format!("t=1700000000,kid={}", signer.kid()));
        let jwks = signer.jwks();
        let x = URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["x"].as_str().unwrap())
            .unwrap();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x);
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert!(key.verify(b"1700000000.{\"a\":1}", &sig).is_ok());
        assert!(key.verify(b"1700000001.{\"a\":1}", &sig).is_err());
        assert!(signer.kid().starts_with("ds_"));
        assert_eq!(
            Signer::new(&[7u8; 32]).unwrap().kid(),
            signer.kid(),
            "stable"
        );
    }

    #[test]
    fn wake_tokens_carry_their_generation_and_only_their_subscription() {
        let signer = Signer::new(&[1u8; 32]).unwrap();
        let token = signer.token("sub-1", "n1", 7);
        assert_eq!(signer.token_generation("sub-1", "n1", &token), Some(7));
        assert_eq!(signer.token_generation("sub-2", "n1", &token), None);
        assert_eq!(
            signer.token_generation("sub-1", "n2", &token),
            None,
            "re-created"
        );
        let forged = token.replacen('7', "8", 1);
        assert_eq!(signer.token_generation("sub-1", "n1", &forged), None);
        assert_eq!(signer.token_generation("sub-1", "n1", "garbage"), None);
    }
}
