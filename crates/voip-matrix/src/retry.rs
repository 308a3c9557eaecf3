//! Retry with back-off: classification of failures and the bounded retry loop.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};
use matrix_sdk::HttpError;
use voip_core::SendOutcome;

/// How one failed attempt should be treated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 429 `M_LIMIT_EXCEEDED`, with the server's delay when it gave one.
    RateLimited {
        /// `Retry-After` / `retry_after_ms`.
        retry_after: Option<Duration>,
        /// Detail for logs.
        error: String,
    },
    /// Network error, timeout or 5xx: another attempt may succeed.
    Transient(String),
    /// 4xx or a local refusal: retrying would fail the same way (unless `retryable` says the
    /// condition may clear by itself, e.g. a device whose keys are not known yet).
    Permanent {
        /// Whether the core may still retry later.
        retryable: bool,
        /// Detail for logs.
        error: String,
        /// The Matrix `errcode`, when the server gave one (e.g. `M_NOT_FOUND`).
        errcode: Option<String>,
    },
    /// A delayed event's delay is above the server's maximum (MSC4140), which it named: not
    /// retried as is (the core schedules again with the maximum).
    MaxDelayExceeded {
        /// The server's maximum delay.
        max_delay: Duration,
        /// Detail for logs.
        error: String,
    },
}

impl Failure {
    /// The outcome reported to the core when this was the last attempt.
    pub fn into_outcome(self) -> SendOutcome {
        match self {
            Failure::RateLimited { retry_after, .. } => {
                SendOutcome::RateLimited { retry_after_ms: retry_after.map(|d| d.as_millis() as u64) }
            }
            Failure::Transient(error) => SendOutcome::Failed { retryable: true, error, errcode: None },
            Failure::Permanent { retryable, error, errcode } => {
                SendOutcome::Failed { retryable, error, errcode }
            }
            Failure::MaxDelayExceeded { max_delay, .. } => {
                SendOutcome::MaxDelayExceeded { max_delay_ms: max_delay.as_millis() as u64 }
            }
        }
    }

    /// A local refusal (no `errcode`).
    pub fn refused(retryable: bool, error: impl Into<String>) -> Failure {
        Failure::Permanent { retryable, error: error.into(), errcode: None }
    }
}

/// Classifies a matrix-sdk error.
pub fn classify(err: &matrix_sdk::Error) -> Failure {
    match err {
        matrix_sdk::Error::Http(http) => classify_http(http),
        other => Failure::refused(false, other.to_string()),
    }
}

/// Classifies an HTTP error.
pub fn classify_http(err: &HttpError) -> Failure {
    let error = err.to_string();
    match err {
        HttpError::Reqwest(_) => return Failure::Transient(error),
        HttpError::Cached(inner) => return classify_http(inner),
        _ => {}
    }
    if let Some(api) = err.as_client_api_error() {
        if let Some(ErrorKind::LimitExceeded(data)) = api.error_kind() {
            let retry_after = data.retry_after.as_ref().map(|r| match r {
                RetryAfter::Delay(d) => *d,
                RetryAfter::DateTime(t) => t.duration_since(std::time::SystemTime::now()).unwrap_or_default(),
            });
            return Failure::RateLimited { retry_after, error };
        }
        let status = api.status_code.as_u16();
        if status == 429 {
            return Failure::RateLimited { retry_after: None, error };
        }
        if status >= 500 {
            return Failure::Transient(error);
        }
        if let Some(max_delay) = max_delay_exceeded(api) {
            return Failure::MaxDelayExceeded { max_delay, error };
        }
        let errcode = api.error_kind().map(|k| k.errcode().to_string());
        return Failure::Permanent { retryable: false, error, errcode };
    }
    Failure::refused(false, error)
}

/// The server's maximum delay when it refused a delayed event's delay as too long, in either
/// form servers use: MSC4140's `org.matrix.msc4140.errcode: M_MAX_DELAY_EXCEEDED` with
/// `org.matrix.msc4140.max_delay` (under a custom errcode; ruma drops the extra fields of an
/// `M_UNKNOWN` body), or Synapse 1.163's `ORG.MATRIX.MSC4140_DELAY_TOO_LARGE`, which names the
/// maximum only in its message ("… exceeds the allowed maximum (86400000ms)").
fn max_delay_exceeded(api: &matrix_sdk::ruma::api::error::Error) -> Option<Duration> {
    use matrix_sdk::ruma::api::error::ErrorBody;
    let kind = api.error_kind()?;
    let code = kind.errcode().to_string();
    let data = kind.custom_json_data();
    let field = |k: &str| data.and_then(|d| d.get(k)).and_then(serde_json::Value::as_u64);
    let named = field("org.matrix.msc4140.max_delay").or_else(|| field("max_delay"));
    let flagged = code == "M_MAX_DELAY_EXCEEDED"
        || data.and_then(|d| d.get("org.matrix.msc4140.errcode")).and_then(serde_json::Value::as_str)
            == Some("M_MAX_DELAY_EXCEEDED");
    if flagged {
        return named.map(Duration::from_millis);
    }
    if !code.eq_ignore_ascii_case("ORG.MATRIX.MSC4140_DELAY_TOO_LARGE") {
        return None;
    }
    if let Some(ms) = named {
        return Some(Duration::from_millis(ms));
    }
    let ErrorBody::Standard(body) = &api.body else { return None };
    // "The requested delay (360000000ms) exceeds the allowed maximum (86400000ms)"
    let tail = &body.message[body.message.rfind("maximum (")? + "maximum (".len()..];
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    tail[digits.len()..].starts_with("ms)").then(|| digits.parse().ok().map(Duration::from_millis)).flatten()
}

/// Bounds of the adapter's retries of requests the app makes through it directly (the core's
/// sends get one attempt: the core retries them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled each time.
    pub base_delay: Duration,
    /// Cap of one back-off delay (a longer server `Retry-After` is honoured up to
    /// `max_total`).
    pub max_delay: Duration,
    /// Give up when the next wait would end later than this after the first attempt.
    pub max_total: Duration,
}

impl Failure {
    /// The Matrix `errcode` of a refusal, when the server gave one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Failure::Permanent { errcode, .. } => errcode.as_deref(),
            _ => None,
        }
    }
}

impl RetryPolicy {
    /// For ordinary sends: 5 attempts, 250 ms doubling to 4 s, 30 s in all.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(4),
        max_total: Duration::from_secs(30),
    };

    /// For sends that must not be lost (hangup, reject, leave): 12 attempts, 2 minutes.
    pub const CRITICAL: RetryPolicy = RetryPolicy {
        max_attempts: 12,
        base_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(10),
        max_total: Duration::from_secs(120),
    };

    /// No retries at all.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        max_total: Duration::ZERO,
    };

    /// The wait before attempt `attempt + 1` after `failure` on attempt `attempt` (1-based), or
    /// `None` to give up. `elapsed` is the time since the first attempt started.
    pub fn next_delay(&self, attempt: u32, failure: &Failure, elapsed: Duration) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let backoff = self.base_delay.saturating_mul(1u32 << (attempt - 1).min(16)).min(self.max_delay);
        let delay = match failure {
            Failure::Permanent { .. } | Failure::MaxDelayExceeded { .. } => return None,
            Failure::Transient(_) => backoff,
            Failure::RateLimited { retry_after, .. } => {
                retry_after.map_or(backoff, |r| r.max(Duration::from_millis(1)))
            }
        };
        (elapsed + delay <= self.max_total).then_some(delay)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Counters of an adapter's send attempts since it was created (shared by its clones), from
/// [`crate::MatrixAdapter::send_stats`]: to see that a homeserver's rate limits really bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Attempts answered with 429 `M_LIMIT_EXCEEDED`.
    pub rate_limited: u64,
    /// Attempts that failed with a network error or a 5xx.
    pub transient: u64,
    /// Attempts the adapter retried after a failure (only the app's own requests: the core's
    /// sends get one attempt each and the core retries them).
    pub retried: u64,
    /// App requests whose adapter retries ran out (rate limits, network errors, 5xx). A core
    /// send that failed is not counted here: its outcome went back to the core, which retries.
    pub given_up: u64,
    /// Requests the server refused for good (a 4xx other than 429, not retried): the core
    /// decides what follows (e.g. a leave sent directly when its delayed event is gone).
    pub refused: u64,
}

/// The atomic counters behind [`SendStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    rate_limited: AtomicU64,
    transient: AtomicU64,
    retried: AtomicU64,
    given_up: AtomicU64,
    refused: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> SendStats {
        SendStats {
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            transient: self.transient.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn failed(&self, failure: &Failure) {
        match failure {
            Failure::RateLimited { .. } => self.rate_limited.fetch_add(1, Ordering::Relaxed),
            Failure::Transient(_) => self.transient.fetch_add(1, Ordering::Relaxed),
            Failure::Permanent { .. } | Failure::MaxDelayExceeded { .. } => 0,
        };
    }
}

/// Runs `attempt` until it succeeds or `policy` says to stop; returns the value or the last
/// failure.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, attempt: F) -> Result<T, Failure>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    retry_counted(policy, what, None, attempt).await
}

/// [`retry`], counting every failed attempt in `counters`.
pub(crate) async fn retry_counted<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    counters: Option<&Counters>,
    mut attempt: F,
) -> Result<T, Failure>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let start = tokio::time::Instant::now();
    let mut n = 1;
    loop {
        match attempt(n).await {
            Ok(v) => return Ok(v),
            Err(failure) => {
                if let Some(c) = counters {
                    c.failed(&failure);
                }
                match policy.next_delay(n, &failure, start.elapsed()) {
                    Some(delay) => {
                        if let Some(c) = counters {
                            c.retried.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(what, attempt = n, ?delay, ?failure, "send failed, retrying");
                        tokio::time::sleep(delay).await;
                        n += 1;
                    }
                    None => {
                        if let Some(c) = counters {
                            let refused = matches!(
                                failure,
                                Failure::Permanent { .. } | Failure::MaxDelayExceeded { .. }
                            );
                            // One attempt by design (a core send: the core retries it) is not
                            // the adapter giving up.
                            if refused {
                                c.refused.fetch_add(1, Ordering::Relaxed);
                            } else if policy.max_attempts > 1 {
                                c.given_up.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        return Err(failure);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> Failure {
        Failure::Transient("boom".into())
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::DEFAULT;
        let d: Vec<_> = (1..5).map(|a| p.next_delay(a, &transient(), Duration::ZERO).unwrap()).collect();
        assert_eq!(d, [250, 500, 1000, 2000].map(Duration::from_millis));
        let p = RetryPolicy { max_attempts: 10, ..RetryPolicy::DEFAULT };
        assert_eq!(p.next_delay(9, &transient(), Duration::ZERO), Some(Duration::from_secs(4)));
        assert_eq!(p.next_delay(10, &transient(), Duration::ZERO), None);
    }

    #[test]
    fn retry_after_is_honoured_and_bounded_by_total() {
        let p = RetryPolicy::DEFAULT;
        let limited =
            |ms| Failure::RateLimited { retry_after: Some(Duration::from_millis(ms)), error: String::new() };
        assert_eq!(p.next_delay(1, &limited(7_000), Duration::ZERO), Some(Duration::from_millis(7_000)));
        assert_eq!(p.next_delay(1, &limited(7_000), Duration::from_secs(25)), None);
        let no_hint = Failure::RateLimited { retry_after: None, error: String::new() };
        assert_eq!(p.next_delay(2, &no_hint, Duration::ZERO), Some(Duration::from_millis(500)));
    }

    #[test]
    fn permanent_is_not_retried() {
        let f = Failure::refused(false, "403");
        assert_eq!(RetryPolicy::CRITICAL.next_delay(1, &f, Duration::ZERO), None);
    }

    #[test]
    fn outcomes() {
        let f = Failure::RateLimited { retry_after: Some(Duration::from_millis(1500)), error: String::new() };
        assert_eq!(f.into_outcome(), SendOutcome::RateLimited { retry_after_ms: Some(1500) });
        assert_eq!(
            transient().into_outcome(),
            SendOutcome::Failed { retryable: true, error: "boom".into(), errcode: None }
        );
    }

    /// An SDK error as a homeserver response would produce it.
    fn http_error(status: u16, body: &str) -> HttpError {
        use matrix_sdk::ruma::api::client::uiaa::UiaaResponse;
        use matrix_sdk::ruma::api::error::{Error as ApiError, FromHttpResponseError};
        use matrix_sdk::ruma::api::EndpointError;
        let response = matrix_sdk::ruma::exports::http::Response::builder()
            .status(status)
            .body(body.as_bytes())
            .expect("response");
        let error = ApiError::from_http_response(response);
        HttpError::Api(Box::new(FromHttpResponseError::Server(UiaaResponse::MatrixError(error))))
    }

    #[test]
    fn classifies_homeserver_errors() {
        let limited =
            http_error(429, r#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":1500}"#);
        assert!(matches!(
            classify_http(&limited),
            Failure::RateLimited { retry_after: Some(d), .. } if d == Duration::from_millis(1500)
        ));
        let bare_429 = http_error(429, r#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down"}"#);
        assert!(matches!(classify_http(&bare_429), Failure::RateLimited { retry_after: None, .. }));
        let unavailable = http_error(502, "<html>bad gateway</html>");
        assert!(matches!(classify_http(&unavailable), Failure::Transient(_)));
        let not_found = http_error(404, r#"{"errcode":"M_NOT_FOUND","error":"no such delayed event"}"#);
        match classify_http(&not_found) {
            Failure::Permanent { retryable: false, errcode, .. } => {
                assert_eq!(errcode.as_deref(), Some("M_NOT_FOUND"))
            }
            other => panic!("{other:?}"),
        }
        // Synapse 1.163 names its maximum only in the message.
        let too_large = http_error(
            400,
            r#"{"errcode":"ORG.MATRIX.MSC4140_DELAY_TOO_LARGE","error":"The requested delay (360000000ms) exceeds the allowed maximum (86400000ms)"}"#,
        );
        assert_eq!(
            classify_http(&too_large).into_outcome(),
            SendOutcome::MaxDelayExceeded { max_delay_ms: 86_400_000 }
        );
        // MSC4140's form under its own errcode keeps the field.
        let msc = http_error(
            400,
            r#"{"errcode":"M_MAX_DELAY_EXCEEDED","error":"too long","org.matrix.msc4140.max_delay":7500}"#,
        );
        assert_eq!(classify_http(&msc).into_outcome(), SendOutcome::MaxDelayExceeded { max_delay_ms: 7_500 });
        // A too-large error without a number is an ordinary refusal (the core falls back).
        let vague = http_error(400, r#"{"errcode":"ORG.MATRIX.MSC4140_DELAY_TOO_LARGE","error":"too long"}"#);
        assert!(matches!(classify_http(&vague), Failure::Permanent { retryable: false, .. }));
        let forbidden =
            matrix_sdk::Error::Http(Box::new(http_error(403, r#"{"errcode":"M_FORBIDDEN","error":"no"}"#)));
        assert!(matches!(classify(&forbidden), Failure::Permanent { retryable: false, .. }));
    }

    #[tokio::test]
    async fn loop_retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy { base_delay: Duration::from_millis(1), ..RetryPolicy::DEFAULT };
        let r = retry(p, "t", |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(transient())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refusal_is_counted_as_refused_not_given_up() {
        let counters = Counters::default();
        let not_found = || Failure::Permanent {
            retryable: false,
            error: "gone".into(),
            errcode: Some("M_NOT_FOUND".into()),
        };
        let r: Result<u32, Failure> =
            retry_counted(RetryPolicy::DEFAULT, "t", Some(&counters), |_| async move { Err(not_found()) })
                .await;
        assert_eq!(r.unwrap_err().errcode(), Some("M_NOT_FOUND"));
        let s = counters.snapshot();
        assert_eq!((s.given_up, s.refused, s.retried), (0, 1, 0));
    }

    #[tokio::test]
    async fn counters_see_every_failed_attempt() {
        let counters = Counters::default();
        let p = RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(1), ..RetryPolicy::DEFAULT };
        let limited =
            || Failure::RateLimited { retry_after: Some(Duration::from_millis(1)), error: String::new() };
        let r = retry_counted(p, "t", Some(&counters), |n| async move {
            match n {
                1 => Err(limited()),
                2 => Err(transient()),
                _ => Ok(n),
            }
        })
        .await;
        assert_eq!(r, Ok(3));
        let r: Result<(), _> = retry_counted(p, "t", Some(&counters), |_| async { Err(limited()) }).await;
        assert!(matches!(r, Err(Failure::RateLimited { .. })));
        assert_eq!(
            counters.snapshot(),
            SendStats { rate_limited: 4, transient: 1, retried: 4, given_up: 1, refused: 0 }
        );
    }

    #[tokio::test]
    async fn loop_gives_up_with_last_failure() {
        let p = RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(1), ..RetryPolicy::DEFAULT };
        let r: Result<(), _> = retry(p, "t", |_| async { Err(transient()) }).await;
        assert_eq!(r, Err(transient()));
        let r: Result<(), _> = retry(p, "t", |_| async { Err(Failure::refused(false, "x")) }).await;
        assert!(matches!(r, Err(Failure::Permanent { .. })));
    }
}
