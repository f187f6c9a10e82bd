//! [`XApi`] over HTTPS: requests signed with OAuth 1.0a by `egg_mode::raw` and sent by its
//! hyper client (bundled webpki roots: no OpenSSL, no system CA store). egg-mode's own
//! response helpers only read v1.1 error bodies, so answers are read here: status, headers
//! and body, mapped to [`ApiError`].

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use egg_mode::raw::auth::{Method, RequestBuilder};
use egg_mode::raw::ParamList;
use egg_mode::KeyPair;
use hyper::{Body, Request};
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
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

/// A whole answer: status, headers, body.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
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
            timeout,
            runtime: runtime()?,
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
        send(&self.runtime, req, self.timeout)
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

/// A single-threaded runtime for one blocking call at a time: aviary's callers are
/// synchronous (the scheduler commits each step to SQLite before the next).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))
}

/// Sends `req` and reads the whole answer within `timeout`.
pub(crate) fn send(
    rt: &tokio::runtime::Runtime,
    req: Request<Body>,
    timeout: Duration,
) -> std::result::Result<Answer, ApiError> {
    rt.block_on(async {
        let fut = async {
            let resp = egg_mode::raw::response_future(req)
                .await
                .map_err(|e| ApiError::Network(network_words(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = hyper::body::to_bytes(body)
                .await
                .map_err(|e| ApiError::Network(network_words(&e)))?;
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ApiError::Timeout(timeout))?
    })
}

/// hyper's words for a failure, with its cause ("connection closed before message completed").
fn network_words(e: &hyper::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
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

fn header_u64(h: &hyper::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
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
            let daily_remaining = header_u64(&a.headers, "x-user-limit-24hour-remaining");
            // A spent daily allowance outlasts the 15-minute window: wait for the later reset.
            let window = epoch(header_u64(&a.headers, "x-rate-limit-reset"));
            let daily = epoch(header_u64(&a.headers, "x-user-limit-24hour-reset"));
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
        let req = egg_mode::raw::request_post_json(
            &url,
            &egg_mode::Token::Access {
                consumer: self.consumer.clone(),
                access: self.access.clone(),
            },
            serde_json::json!({ "text": text }),
        );
        let answer = send(&self.runtime, req, self.timeout)?;
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
        let mut h = hyper::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Answer {
            status,
            headers: h,
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
