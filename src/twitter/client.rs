//! [`XApi`] over HTTPS: requests are built and signed with OAuth 1.0a by `egg_mode::raw`, and
//! sent by `ureq` on current rustls (bundled webpki roots: no OpenSSL, no system CA store).
//! Only the signature is taken from egg-mode's request (its method, URL and `Authorization`
//! header): egg-mode's own client (hyper 0.14 on rustls 0.19, with open advisories) never
//! sends a byte or reads one from the network. Answers are read here: status, headers and
//! body, mapped to [`ApiError`].

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use egg_mode::raw::auth::{Method, RequestBuilder};
use egg_mode::raw::ParamList;
use egg_mode::KeyPair;
use serde::Deserialize;

use super::credentials::BotKeys;
use super::{ApiError, PostedTweet, TimelinePage, TimelineQuery, TimelineTweet, XApi, XUser};
use crate::{Error, Result};

/// X's duplicate-content refusal (403), as X words it.
const DUPLICATE: &str = "duplicate content";

/// The API base URL in the one form OAuth signatures accept: lower-case scheme and host, no
/// default port, no trailing slash (X signs the URL as written; anything else is a 401).
pub fn normalize_base_url(url: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::invalid(
            format!("API base URL `{url}` {why}"),
            "set [x] api_base to a URL like https://api.x.com",
        )
    };
    let (scheme, rest) = url
        .trim()
        .split_once("://")
        .ok_or_else(|| bad("has no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(bad(
            "must start with https:// (or http:// for a local test server)",
        ));
    }
    let rest = rest.trim_end_matches('/');
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(['?', '#', '@']) || path.contains(['?', '#']) {
        return Err(bad("is not a plain scheme://host[:port][/path]"));
    }
    let mut host = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    if let Some(h) = host.strip_suffix(default_port) {
        host = h.to_string();
    }
    Ok(format!("{scheme}://{host}{path}"))
}

/// The X API v2 over HTTP(S), as one account.
pub struct HttpApi {
    base: String,
    consumer: KeyPair,
    access: KeyPair,
    agent: Agent,
}

/// A whole answer: status, headers (names in lower case), body.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP(S) client that gives up on a call after `timeout` and returns every status as an
/// answer (X's error bodies say what went wrong).
#[derive(Clone)]
pub(crate) struct Agent {
    agent: ureq::Agent,
    timeout: Duration,
}

impl Agent {
    pub(crate) fn new(timeout: Duration) -> Agent {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Agent { agent, timeout }
    }

    /// Sends what egg-mode signed (method, URL with its query, `Authorization` header), with
    /// `body` (not part of the signature: JSON) when given, and reads the whole answer.
    pub(crate) fn send(
        &self,
        signed: hyper::Request<hyper::Body>,
        body: Option<serde_json::Value>,
    ) -> std::result::Result<Answer, ApiError> {
        let mut b = ureq::http::Request::builder()
            .method(signed.method().as_str())
            .uri(signed.uri().to_string());
        if let Some(auth) = signed.headers().get("authorization") {
            b = b.header("Authorization", auth.as_bytes());
        }
        let network = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => ApiError::Timeout(self.timeout),
            e => ApiError::Network(e.to_string()),
        };
        let built = |e: ureq::http::Error| ApiError::Network(format!("bad request: {e}"));
        let mut resp = match body {
            Some(json) => {
                let req = b
                    .header("Content-Type", "application/json; charset=UTF-8")
                    .body(json.to_string())
                    .map_err(built)?;
                self.agent.run(req)
            }
            None => self.agent.run(b.body(()).map_err(built)?),
        }
        .map_err(network)?;
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect();
        let body = resp.body_mut().read_to_vec().map_err(network)?;
        Ok(Answer {
            status: resp.status().as_u16(),
            headers,
            body,
        })
    }
}

impl HttpApi {
    /// A client for `base` (normalised with [`normalize_base_url`]) signing as `keys`.
    pub fn new(base: &str, keys: &BotKeys, timeout: Duration) -> Result<HttpApi> {
        Ok(HttpApi {
            base: normalize_base_url(base)?,
            consumer: KeyPair::new(
                keys.app.consumer_key.expose().to_string(),
                keys.app.consumer_secret.expose().to_string(),
            ),
            access: KeyPair::new(
                keys.account.access_token.expose().to_string(),
                keys.account.access_secret.expose().to_string(),
            ),
            agent: Agent::new(timeout),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a freshly signed request (a new nonce each time: X refuses a replayed one).
    fn get(&self, path: &str, params: Option<ParamList>) -> std::result::Result<Answer, ApiError> {
        let url = self.url(path);
        let mut b = RequestBuilder::new(Method::GET, &url);
        if let Some(p) = &params {
            // Once only: a second call signs both sets but sends only the last.
            b = b.with_query_params(p);
        }
        let req = b.request_keys(&self.consumer, Some(&self.access));
        self.agent.send(req, None)
    }

    fn json<T: for<'de> Deserialize<'de>>(
        answer: Answer,
        ok: u16,
    ) -> std::result::Result<(T, Answer), ApiError> {
        check(&answer, ok)?;
        let v = serde_json::from_slice(&answer.body)
            .map_err(|e| ApiError::Malformed(format!("{e} in {}", snippet(&answer.body))))?;
        Ok((v, answer))
    }
}

/// The first characters of a body, for messages (X's error bodies hold no secrets).
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s: String = s.chars().take(200).collect();
    s.replace('\n', " ")
}

/// X's words in an error body: v2 `detail`/`title`, `errors[].message`, or the raw text.
fn detail(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return snippet(body);
    };
    let mut parts = Vec::new();
    for key in ["detail", "title"] {
        if let Some(s) = v.get(key).and_then(|d| d.as_str()) {
            parts.push(s.to_string());
            break;
        }
    }
    if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
        for e in errs {
            if let Some(m) = e.get("message").and_then(|m| m.as_str()) {
                parts.push(m.to_string());
            }
        }
    }
    if parts.is_empty() {
        snippet(body)
    } else {
        parts.join("; ")
    }
}

fn header_u64(a: &Answer, name: &str) -> Option<u64> {
    a.header(name)?.trim().parse().ok()
}

fn epoch(secs: Option<u64>) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs? as i64, 0).single()
}

/// Maps an answer that is not `ok` to what the user should do.
pub(crate) fn check(a: &Answer, ok: u16) -> std::result::Result<(), ApiError> {
    let status = a.status;
    if status == ok || (ok == 200 && status == 201) {
        return Ok(());
    }
    let detail = detail(&a.body);
    Err(match status {
        401 => ApiError::Unauthorized { detail },
        403 if detail.to_lowercase().contains(DUPLICATE) => ApiError::Duplicate,
        403 => ApiError::Forbidden { detail },
        429 => {
            let daily_remaining = header_u64(a, "x-user-limit-24hour-remaining");
            // A spent daily allowance outlasts the 15-minute window: wait for the later reset.
            let window = epoch(header_u64(a, "x-rate-limit-reset"));
            let daily = epoch(header_u64(a, "x-user-limit-24hour-reset"));
            let reset = match (daily_remaining, window, daily) {
                (Some(0), w, Some(d)) => Some(w.map_or(d, |w| w.max(d))),
                (_, w, d) => w.or(d),
            };
            ApiError::RateLimited {
                reset,
                daily_remaining,
            }
        }
        500..=599 => ApiError::Server { status, detail },
        _ if (200..300).contains(&status) => {
            ApiError::Malformed(format!("status {status} where {ok} was expected"))
        }
        _ => ApiError::Rejected { status, detail },
    })
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    data: Vec<TimelineTweet>,
    #[serde(default)]
    meta: Meta,
}

#[derive(Default, Deserialize)]
struct Meta {
    #[serde(default)]
    next_token: Option<String>,
}

impl XApi for HttpApi {
    fn post(&self, text: &str) -> std::result::Result<PostedTweet, ApiError> {
        let url = self.url("/2/tweets");
        // The JSON body is not part of the OAuth 1.0a signature (unlike a form body).
        let req = RequestBuilder::new(Method::POST, &url)
            .request_keys(&self.consumer, Some(&self.access));
        let answer = self
            .agent
            .send(req, Some(serde_json::json!({ "text": text })))?;
        let (d, _): (Data<PostedTweet>, _) = HttpApi::json(answer, 201)?;
        Ok(d.data)
    }

    fn me(&self) -> std::result::Result<XUser, ApiError> {
        let (d, _): (Data<XUser>, _) = HttpApi::json(self.get("/2/users/me", None)?, 200)?;
        Ok(d.data)
    }

    fn user_by_username(&self, username: &str) -> std::result::Result<XUser, ApiError> {
        let name = username.trim_start_matches('@');
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ApiError::Rejected {
                status: 400,
                detail: format!("`{username}` is not an X handle (letters, digits and _)"),
            });
        }
        let answer = self.get(&format!("/2/users/by/username/{name}"), None)?;
        let (d, _): (Data<XUser>, _) = HttpApi::json(answer, 200)?;
        Ok(d.data)
    }

    fn user_tweets(
        &self,
        user_id: &str,
        q: &TimelineQuery,
    ) -> std::result::Result<TimelinePage, ApiError> {
        // None of these names is a prefix of another (egg-mode sorts `k=v` strings, RFC 5849
        // sorts names first; they only disagree on such prefixes).
        let mut p = ParamList::new()
            .add_param("max_results", q.max_results.clamp(5, 100).to_string())
            .add_param(
                "tweet.fields",
                "created_at,referenced_tweets,in_reply_to_user_id,note_tweet",
            );
        if let Some(t) = &q.pagination_token {
            p = p.add_param("pagination_token", t.clone());
        }
        if let Some(t) = q.start_time {
            p = p.add_param("start_time", t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        if !user_id.chars().all(|c| c.is_ascii_digit()) || user_id.is_empty() {
            return Err(ApiError::Rejected {
                status: 400,
                detail: format!("`{user_id}` is not a numeric user id"),
            });
        }
        let answer = self.get(&format!("/2/users/{user_id}/tweets"), Some(p))?;
        let (page, answer): (Page, _) = HttpApi::json(answer, 200)?;
        Ok(TimelinePage {
            tweets: page.data,
            raw: String::from_utf8_lossy(&answer.body).into_owned(),
            next_token: page.meta.next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised_for_signing() {
        let n = |s| normalize_base_url(s).unwrap();
        assert_eq!(n("HTTPS://API.X.com:443/"), "https://api.x.com");
        assert_eq!(n("http://127.0.0.1:80"), "http://127.0.0.1");
        assert_eq!(
            n("http://127.0.0.1:8080/mock/"),
            "http://127.0.0.1:8080/mock"
        );
        assert!(normalize_base_url("api.x.com").is_err());
        assert!(normalize_base_url("ftp://api.x.com").is_err());
        assert!(normalize_base_url("https://api.x.com/?a=1").is_err());
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        Answer {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn v2_errors_are_mapped_from_status_body_and_headers() {
        let dup = answer(
            403,
            &[],
            r#"{"detail":"You are not allowed to create a Tweet with duplicate content.","type":"about:blank","title":"Forbidden","status":403}"#,
        );
        assert_eq!(check(&dup, 201), Err(ApiError::Duplicate));
        let ro = answer(
            403,
            &[],
            r#"{"title":"Forbidden","detail":"oauth1 app permissions"}"#,
        );
        assert!(matches!(check(&ro, 201), Err(ApiError::Forbidden { .. })));
        let rl = answer(
            429,
            &[
                ("x-rate-limit-reset", "2000000000"),
                ("x-user-limit-24hour-remaining", "0"),
                ("x-user-limit-24hour-reset", "2000050000"),
            ],
            "{}",
        );
        let Err(ApiError::RateLimited {
            reset,
            daily_remaining,
        }) = check(&rl, 201)
        else {
            panic!()
        };
        assert_eq!(daily_remaining, Some(0));
        assert_eq!(reset.unwrap().timestamp(), 2000050000);
        let s = answer(503, &[], "Service Unavailable");
        assert!(matches!(
            check(&s, 201),
            Err(ApiError::Server { status: 503, .. })
        ));
        let long = answer(
            400,
            &[],
            r#"{"errors":[{"message":"Your Tweet text is too long."}]}"#,
        );
        let e = check(&long, 201).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        assert!(check(&answer(201, &[], "{}"), 201).is_ok());
    }
}
