//! A mock X API v2 on 127.0.0.1 for the posting tests: checks each request's OAuth 1.0a
//! signature (HMAC-SHA1 over the method, URL and parameters, RFC 5849) and refuses replayed
//! nonces, keeps the tweets posted to it, and can be told how to answer the next posts:
//! 429, 503, 403 duplicate, hang before or after committing, or close without an answer.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};

pub const CONSUMER_KEY: &str = "ck-app-key-7781";
pub const CONSUMER_SECRET: &str = "cs-app-secret-91aa";
pub const ACCESS_TOKEN: &str = "42-at-token-5521";
pub const ACCESS_SECRET: &str = "as-token-secret-c0de";
const REQUEST_TOKEN: &str = "rt-request-token-11";
const REQUEST_SECRET: &str = "rs-request-secret-22";
pub const USER_ID: &str = "42";

/// Every secret the tests hand out: none may appear in any output.
pub const SECRETS: [&str; 4] = [CONSUMER_SECRET, ACCESS_TOKEN, ACCESS_SECRET, REQUEST_SECRET];

/// How the server answers one POST /2/tweets.
#[derive(Clone, Debug)]
pub enum Answer {
    Ok,
    RateLimited {
        reset_in_secs: i64,
    },
    /// 429 with the 24-hour allowance spent: the window resets in `window_in_secs`, the day
    /// in `day_in_secs`.
    RateLimitedDaily {
        window_in_secs: i64,
        day_in_secs: i64,
    },
    Unavailable,
    Duplicate,
    /// 403 for a reason other than a duplicate (a read-only app).
    Forbidden,
    /// Never answers, and posts nothing.
    HangBefore,
    /// Posts it, then never answers.
    HangAfter,
    /// Posts it, then closes the connection without an answer.
    CloseAfter,
}

#[derive(Clone, Debug)]
pub struct Posted {
    pub id: String,
    pub text: String,
    pub at: String,
}

#[derive(Default)]
pub struct State {
    pub posts: Vec<Posted>,
    pub script: VecDeque<Answer>,
    pub post_requests: usize,
    pub unsigned: Vec<String>,
    pub nonces: HashSet<String>,
    /// Extra timeline for `--fetch` tests: (id, text), newest first, per user id.
    pub other_timeline: Vec<(String, String)>,
    /// The timeline lags: this many of the newest posts are not on it yet.
    pub timeline_lag: usize,
    /// The `start_time` of every read of the account's own timeline, as asked.
    pub timeline_starts: Vec<Option<String>>,
    next_id: u64,
}

pub struct MockX {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl MockX {
    pub fn start() -> MockX {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(State {
            next_id: 1_860_000_000_000_000_000,
            ..Default::default()
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        MockX { url, state }
    }

    pub fn script(&self, answers: &[Answer]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().cloned());
    }

    pub fn posts(&self) -> Vec<Posted> {
        self.state.lock().unwrap().posts.clone()
    }

    pub fn post_requests(&self) -> usize {
        self.state.lock().unwrap().post_requests
    }

    /// Requests whose signature did not verify (must stay empty).
    /// Posts `n` tweets as the account itself (outside aviary), `prefix 1`, `prefix 2`, ...
    pub fn post_directly(&self, prefix: &str, n: usize) {
        let mut s = self.state.lock().unwrap();
        for k in 0..n {
            s.next_id += 1;
            let id = s.next_id.to_string();
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            s.posts.push(Posted {
                id,
                text: format!("{prefix} {k}"),
                at,
            });
        }
    }

    /// The `start_time` of each read of the account's timeline so far.
    pub fn timeline_starts(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().timeline_starts.clone()
    }

    /// The newest `n` posts stay off the timeline (X's timeline lagging behind a post).
    pub fn lag_timeline(&self, n: usize) {
        self.state.lock().unwrap().timeline_lag = n;
    }

    pub fn unsigned(&self) -> Vec<String> {
        self.state.lock().unwrap().unsigned.clone()
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    host: String,
    auth: Option<String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let (mut host, mut auth, mut len) = (String::new(), None, 0usize);
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim().to_string();
            match k.to_ascii_lowercase().as_str() {
                "host" => host = v,
                "authorization" => auth = Some(v),
                "content-length" => len = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        path,
        query,
        host,
        auth,
        body,
    }))
}

fn respond(s: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &str) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    let _ = s.write_all(out.as_bytes());
    let _ = s.flush();
}

fn pct_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Checks the OAuth 1.0a signature; returns the oauth params when it verifies.
fn verify(req: &Request, state: &Mutex<State>) -> Result<Vec<(String, String)>, String> {
    let auth = req.auth.as_deref().ok_or("no Authorization header")?;
    let rest = auth.strip_prefix("OAuth ").ok_or("not OAuth")?;
    let mut oauth: Vec<(String, String)> = Vec::new();
    for kv in rest.split(',') {
        let (k, v) = kv.trim().split_once('=').ok_or("bad header")?;
        oauth.push((pct_decode(k), pct_decode(v.trim_matches('"'))));
    }
    let get = |k: &str| oauth.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let sig = get("oauth_signature").ok_or("no signature")?;
    if get("oauth_consumer_key").as_deref() != Some(CONSUMER_KEY) {
        return Err("unknown consumer key".into());
    }
    let token_secret = match get("oauth_token").as_deref() {
        None => "",
        Some(ACCESS_TOKEN) => ACCESS_SECRET,
        Some(REQUEST_TOKEN) => REQUEST_SECRET,
        Some(_) => return Err("unknown token".into()),
    };
    let nonce = get("oauth_nonce").ok_or("no nonce")?;
    if !state.lock().unwrap().nonces.insert(nonce) {
        return Err("replayed nonce".into());
    }
    let mut params: Vec<(String, String)> = oauth
        .iter()
        .filter(|(k, _)| k != "oauth_signature" && k != "realm")
        .cloned()
        .collect();
    for (k, v) in form_urlencoded::parse(req.query.as_bytes()) {
        params.push((k.into_owned(), v.into_owned()));
    }
    let mut enc: Vec<(String, String)> = params.iter().map(|(k, v)| (pct(k), pct(v))).collect();
    enc.sort();
    let norm = enc
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let base_url = format!("http://{}{}", req.host.to_ascii_lowercase(), req.path);
    let base = format!("{}&{}&{}", req.method, pct(&base_url), pct(&norm));
    let key = format!("{}&{}", pct(CONSUMER_SECRET), pct(token_secret));
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(base.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if want != sig {
        return Err(format!("bad signature for {base_url}"));
    }
    Ok(oauth)
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let Some(req) = read_request(&mut r)? else {
        return Ok(());
    };
    let oauth = match verify(&req, state) {
        Ok(o) => o,
        Err(why) => {
            state
                .lock()
                .unwrap()
                .unsigned
                .push(format!("{} {}: {why}", req.method, req.path));
            respond(
                &mut w,
                401,
                &[],
                r#"{"title":"Unauthorized","detail":"Unauthorized","status":401}"#,
            );
            return Ok(());
        }
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/oauth/request_token") => respond(
            &mut w,
            200,
            &[],
            &format!("oauth_token={REQUEST_TOKEN}&oauth_token_secret={REQUEST_SECRET}&oauth_callback_confirmed=true"),
        ),
        ("POST", "/oauth/access_token") => {
            if !oauth.iter().any(|(k, v)| k == "oauth_verifier" && v == "1234567") {
                respond(&mut w, 401, &[], "Invalid PIN");
            } else {
                respond(
                    &mut w,
                    200,
                    &[],
                    &format!("oauth_token={ACCESS_TOKEN}&oauth_token_secret={ACCESS_SECRET}&user_id={USER_ID}&screen_name=mockbot"),
                )
            }
        }
        ("GET", "/2/users/me") => respond(
            &mut w,
            200,
            &[],
            &format!(r#"{{"data":{{"id":"{USER_ID}","name":"Mock","username":"mockbot"}}}}"#),
        ),
        ("GET", p) if p.starts_with("/2/users/by/username/") => {
            let name = &p["/2/users/by/username/".len()..];
            respond(
                &mut w,
                200,
                &[],
                &format!(r#"{{"data":{{"id":"77","name":"Other","username":"{name}"}}}}"#),
            )
        }
        ("GET", p) if p.starts_with("/2/users/") && p.ends_with("/tweets") => {
            let uid = &p["/2/users/".len()..p.len() - "/tweets".len()];
            let q: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let qget = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
            let max: usize = qget("max_results").and_then(|m| m.parse().ok()).unwrap_or(10);
            let from: usize = qget("pagination_token").and_then(|m| m.parse().ok()).unwrap_or(0);
            if uid == USER_ID {
                state.lock().unwrap().timeline_starts.push(qget("start_time"));
            }
            let all: Vec<(String, String, String)> = {
                let s = state.lock().unwrap();
                if uid == USER_ID {
                    s.posts.iter().rev().skip(s.timeline_lag).map(|p| (p.id.clone(), p.text.clone(), p.at.clone())).collect()
                } else {
                    s.other_timeline.iter().map(|(i, t)| (i.clone(), t.clone(), now.clone())).collect()
                }
            };
            let page: Vec<String> = all
                .iter()
                .skip(from)
                .take(max)
                .map(|(id, text, at)| {
                    serde_json::json!({"id": id, "text": text, "created_at": at, "edit_history_tweet_ids": [id]}).to_string()
                })
                .collect();
            let next = if from + max < all.len() {
                format!(r#","next_token":"{}""#, from + max)
            } else {
                String::new()
            };
            let body = if page.is_empty() {
                r#"{"meta":{"result_count":0}}"#.to_string()
            } else {
                format!(
                    r#"{{"data":[{}],"meta":{{"result_count":{}{next}}}}}"#,
                    page.join(","),
                    page.len()
                )
            };
            respond(&mut w, 200, &[], &body)
        }
        ("POST", "/2/tweets") => {
            let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let text = v["text"].as_str().unwrap_or("").to_string();
            let answer = {
                let mut s = state.lock().unwrap();
                s.post_requests += 1;
                s.script.pop_front().unwrap_or(Answer::Ok)
            };
            let commit = |s: &Mutex<State>| {
                let mut s = s.lock().unwrap();
                s.next_id += 1;
                let id = s.next_id.to_string();
                s.posts.push(Posted { id: id.clone(), text: text.clone(), at: now.clone() });
                id
            };
            match answer {
                Answer::Ok => {
                    let dup = state.lock().unwrap().posts.iter().any(|p| p.text == text);
                    if dup {
                        respond(&mut w, 403, &[], r#"{"detail":"You are not allowed to create a Tweet with duplicate content.","type":"about:blank","title":"Forbidden","status":403}"#);
                    } else if text.chars().count() > 280 {
                        respond(&mut w, 400, &[], r#"{"errors":[{"message":"Your Tweet text is too long."}],"title":"Invalid Request","detail":"One or more parameters to your request was invalid.","type":"https://api.twitter.com/2/problems/invalid-request"}"#);
                    } else {
                        let id = commit(state);
                        respond(&mut w, 201, &[], &serde_json::json!({"data":{"id": id, "text": text, "edit_history_tweet_ids":[id]}}).to_string());
                    }
                }
                Answer::RateLimited { reset_in_secs } => {
                    let reset = chrono::Utc::now().timestamp() + reset_in_secs;
                    respond(
                        &mut w,
                        429,
                        &[
                            ("x-rate-limit-limit", "100".into()),
                            ("x-rate-limit-remaining", "0".into()),
                            ("x-rate-limit-reset", reset.to_string()),
                            ("x-user-limit-24hour-remaining", "7".into()),
                        ],
                        r#"{"title":"Too Many Requests","detail":"Too Many Requests","type":"about:blank","status":429}"#,
                    )
                }
                Answer::RateLimitedDaily { window_in_secs, day_in_secs } => {
                    let now = chrono::Utc::now().timestamp();
                    respond(
                        &mut w,
                        429,
                        &[
                            ("x-rate-limit-reset", (now + window_in_secs).to_string()),
                            ("x-user-limit-24hour-remaining", "0".into()),
                            ("x-user-limit-24hour-reset", (now + day_in_secs).to_string()),
                        ],
                        r#"{"title":"Too Many Requests","detail":"Too Many Requests","type":"about:blank","status":429}"#,
                    )
                }
                Answer::Forbidden => respond(&mut w, 403, &[], r#"{"title":"Forbidden","detail":"Your client app is not configured with the appropriate oauth1 app permissions for this endpoint.","type":"https://api.twitter.com/2/problems/oauth1-permissions","status":403}"#),
                Answer::Unavailable => respond(&mut w, 503, &[], r#"{"title":"Service Unavailable","status":503}"#),
                Answer::Duplicate => respond(&mut w, 403, &[], r#"{"detail":"You are not allowed to create a Tweet with duplicate content.","type":"about:blank","title":"Forbidden","status":403}"#),
                Answer::HangBefore => std::thread::sleep(Duration::from_secs(3600)),
                Answer::HangAfter => {
                    commit(state);
                    std::thread::sleep(Duration::from_secs(3600));
                }
                Answer::CloseAfter => {
                    commit(state);
                    let _ = w.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        _ => respond(&mut w, 404, &[], r#"{"title":"Not Found"}"#),
    }
    Ok(())
}
