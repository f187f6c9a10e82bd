//! The PIN-based OAuth 1.0a flow (`aviary auth BOT`): get a request token, have the user
//! authorise the app in a browser and type the PIN X shows, trade both for the account's
//! access token. Requests are built and signed by egg-mode against the configured base URL
//! (egg-mode's own helpers call fixed twitter.com URLs, which tests could not redirect).

use std::time::Duration;

use egg_mode::raw::auth::{Method, RequestBuilder};
use egg_mode::KeyPair;

use super::client::{check, normalize_base_url, Agent};
use super::credentials::{AccountKeys, AppKeys, Secret};
use super::ApiError;
use crate::Result;

/// A flow waiting for the user's PIN.
pub struct PendingAuth {
    base: String,
    consumer: KeyPair,
    request_token: KeyPair,
    /// The page where the user authorises the app and reads the PIN.
    pub authorize_url: String,
}

/// Step 1: a request token, and the page to send the user to.
pub fn begin(base: &str, app: &AppKeys, timeout: Duration) -> Result<PendingAuth> {
    let base = normalize_base_url(base)?;
    let consumer = KeyPair::new(
        app.consumer_key.expose().to_string(),
        app.consumer_secret.expose().to_string(),
    );
    let req = RequestBuilder::new(Method::POST, &format!("{base}/oauth/request_token"))
        .oauth_callback("oob")
        .request_keys(&consumer, None);
    let form = form_answer(Agent::new(timeout).send(req, None), 200)?;
    let token = field(&form, "oauth_token")?;
    let secret = field(&form, "oauth_token_secret")?;
    Ok(PendingAuth {
        authorize_url: format!("{base}/oauth/authorize?oauth_token={token}"),
        base,
        consumer,
        request_token: KeyPair::new(token, secret),
    })
}

impl PendingAuth {
    /// Step 2: trades the PIN for the account's access token, id and handle.
    pub fn finish(self, pin: &str, timeout: Duration) -> Result<AccountKeys> {
        let req = RequestBuilder::new(Method::POST, &format!("{}/oauth/access_token", self.base))
            .oauth_verifier(pin.trim())
            .request_keys(&self.consumer, Some(&self.request_token));
        let form = form_answer(Agent::new(timeout).send(req, None), 200)?;
        Ok(AccountKeys {
            access_token: Secret::new(field(&form, "oauth_token")?),
            access_secret: Secret::new(field(&form, "oauth_token_secret")?),
            user_id: field(&form, "user_id").ok(),
            username: field(&form, "screen_name").ok(),
        })
    }
}

fn form_answer(
    answer: std::result::Result<super::client::Answer, ApiError>,
    ok: u16,
) -> Result<Vec<(String, String)>> {
    let a = answer.map_err(auth_error)?;
    check(&a, ok).map_err(auth_error)?;
    Ok(url_decode_form(&String::from_utf8_lossy(&a.body)))
}

fn auth_error(e: ApiError) -> crate::Error {
    crate::Error::invalid(
        format!("authorising with X failed: {e}"),
        "check the consumer key and secret ([app] in the credentials file, or \
         AVIARY_X_CONSUMER_KEY / AVIARY_X_CONSUMER_SECRET) and that the PIN was typed right",
    )
}

fn field(form: &[(String, String)], name: &str) -> Result<String> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            crate::Error::invalid(
                format!("X's answer to the authorisation has no `{name}`"),
                "try again; if it persists, the API may have changed",
            )
        })
}

/// `a=1&b=x%20y` as pairs.
fn url_decode_form(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.trim().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_answers_decode() {
        let f = url_decode_form("oauth_token=a%2Fb&oauth_token_secret=c+d\n");
        assert_eq!(f[0], ("oauth_token".into(), "a/b".into()));
        assert_eq!(f[1].1, "c d");
    }
}
