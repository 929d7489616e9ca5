//! Building responses, and the one place where an [`Error`] becomes an HTTP response.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::Body;
use crate::error::{Error, Kind, Side};

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    json_bytes(
        status,
        serde_json::to_vec(value).expect("response types serialize"),
    )
}

/// A response whose body is JSON text already.
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Every error's body.
#[derive(Serialize, schemars::JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize, schemars::JsonSchema)]
struct ErrorDetail<'a> {
    /// What went wrong, for programs (the message is for people).
    #[schemars(extend("examples" = crate::error::Kind::EXAMPLE_CODES))]
    code: &'static str,
    message: &'a str,
    request_id: &'a str,
    /// Figures that explain the refusal (e.g. the budget's), where there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

/// The header of an answer an `Idempotency-Key` replays.
pub const REPLAYED: &str = "idempotent-replayed";

/// A replayed error (the answer an `Idempotency-Key` recorded) gets this request's id, as every
/// error body has one; the rest is the recorded answer. Replays are rare: the body is read back
/// and written again.
pub async fn replayed_error(resp: Response<Body>, request_id: &str) -> Response<Body> {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(e) = v.get_mut("error").and_then(|e| e.as_object_mut()) {
        e.insert("request_id".into(), serde_json::json!(request_id));
    }
    let body = serde_json::to_vec(&v).map_or(bytes, Bytes::from);
    Response::from_parts(parts, full(body))
}

/// Maps an error to its status and JSON body `{"error":{"code","message","request_id"}}`, adds the
/// headers its kind calls for, and logs faults that are not the client's.
pub fn error_response(err: &Error, request_id: &str) -> Response<Body> {
    log(err, request_id);
    let mut resp = json(
        err.kind.status(),
        &ErrorBody {
            error: ErrorDetail {
                code: err.kind.code(),
                message: &err.message,
                request_id,
                details: err.details.as_deref(),
            },
        },
    );
    if let Some(secs) = retry_after_secs(err) {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Kind::RateLimited(v) = &err.kind {
        set_ratelimit_headers(&mut resp, v);
    }
    if let Kind::Unauthorized(code) = &err.kind {
        let v = format!(
            "Bearer realm=\"gpuproxyd\", error=\"invalid_token\", error_description=\"{code}\""
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, v);
        }
    }
    if let Kind::MethodNotAllowed(allowed) = &err.kind {
        let list = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&list) {
            resp.headers_mut().insert(ALLOW, v);
        }
    }
    resp
}

/// Logs a fault that is not the client's (a client's at debug level).
fn log(err: &Error, request_id: &str) {
    match err.side {
        Side::Client => tracing::debug!(request_id, error = %err, "client error"),
        Side::Upstream => tracing::warn!(request_id, error = %err, "upstream error"),
        Side::Internal => tracing::error!(request_id, error = %err, "internal error"),
    }
}

/// When the same request may be tried again (seconds), for the errors that say: a rate limit,
/// a provider-call budget, an idempotent run still in progress, a busy key cache, a capacity
/// reached.
fn retry_after_secs(err: &Error) -> Option<u64> {
    match (&err.kind, &err.details) {
        (Kind::RateLimited(v), _) => match v.decision {
            crate::ratelimit::gcra::Decision::Limited { retry_after } => {
                Some(crate::ratelimit::ceil_secs(retry_after))
            }
            _ => None,
        },
        (Kind::Refused(crate::error::Refusal::IdempotencyInProgress) | Kind::AuthBusy, _) => {
            Some(2)
        }
        (Kind::OverCapacity, _) => Some(1),
        (Kind::Refused(crate::error::Refusal::UpstreamBudget), Some(d)) => {
            Some(d["retry_after_s"].as_u64().unwrap_or(1))
        }
        _ => None,
    }
}

/// The gRPC status code of an error: from its HTTP status, with 409's split by what it means
/// (docs/grpc.md, "Errors"). `code` is the error's code (`Kind::code`), so a replayed error
/// (an `Idempotency-Key`'s recorded answer: status and body) maps the same as a live one.
pub fn grpc_code(status: u16, code: &str) -> tonic::Code {
    use tonic::Code;
    match status {
        400 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        402 => Code::FailedPrecondition,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        408 => Code::DeadlineExceeded,
        409 => match code {
            "idempotency_in_progress" => Code::Aborted,
            "conflict" | "ssh_key_exists" => Code::AlreadyExists,
            "instance_limit" => Code::ResourceExhausted,
            _ => Code::FailedPrecondition,
        },
        413 | 429 => Code::ResourceExhausted,
        502..=504 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The gRPC status of an error (the gRPC carrier's one way to answer one, as
/// [`error_response`] is REST's): its code, its message, and `google.rpc.ErrorInfo` with our
/// code as `reason` and the request id and the details' scalar figures as metadata; with
/// `google.rpc.RetryInfo` when the request may be tried again later. Logged as REST's are.
pub fn grpc_status(err: &Error, request_id: &str) -> tonic::Status {
    log(err, request_id);
    status_with_info(
        grpc_code(err.kind.status().as_u16(), err.kind.code()),
        &err.message,
        err.kind.code(),
        request_id,
        err.details.as_deref(),
        retry_after_secs(err),
    )
}

/// A gRPC status from its parts (`details`: a JSON object whose scalar members become
/// `ErrorInfo` metadata).
pub fn status_with_info(
    code: tonic::Code,
    message: &str,
    reason: &str,
    request_id: &str,
    details: Option<&serde_json::Value>,
    retry_after: Option<u64>,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut meta = std::collections::HashMap::new();
    meta.insert("request_id".to_owned(), request_id.to_owned());
    if let Some(serde_json::Value::Object(m)) = details {
        for (k, v) in m {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            meta.insert(k.clone(), text);
        }
    }
    let mut d = ErrorDetails::with_error_info(reason, GRPC_ERROR_DOMAIN, meta);
    if let Some(secs) = retry_after {
        d.set_retry_info(Some(std::time::Duration::from_secs(secs)));
    }
    tonic::Status::with_error_details(code, message, d)
}

/// `google.rpc.ErrorInfo.domain` of every error gpuproxyd sends.
pub const GRPC_ERROR_DOMAIN: &str = "gpuproxyd";

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `RateLimit-Policy` and `RateLimit` (IETF httpapi draft) from a verdict.
pub fn set_ratelimit_headers(resp: &mut Response<Body>, v: &crate::ratelimit::Verdict) {
    let h = resp.headers_mut();
    h.insert(RATELIMIT_POLICY, v.policy_header());
    h.insert(RATELIMIT, v.limit_header());
}

/// The same error as a complete HTTP/1.1 response with `Connection: close`, for the one place that
/// answers without hyper: a plain-HTTP connection refused by a connection cap.
pub fn raw_http1_error(err: &Error) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: err.kind.code(),
            message: &err.message,
            request_id: "",
            details: None,
        },
    })
    .expect("error body serializes");
    let status = err.kind.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    async fn body_json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn error_shape_and_allow_header() {
        let e = Error::method_not_allowed(&Method::POST, vec![Method::GET, Method::HEAD]);
        let resp = error_response(&e, "rid-1");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
        let v = body_json(resp).await;
        assert_eq!(v["error"]["code"], "method_not_allowed");
        assert_eq!(v["error"]["request_id"], "rid-1");
        assert!(v["error"]["message"].as_str().unwrap().contains("POST"));
    }

    #[tokio::test]
    async fn internal_error_hides_its_source() {
        let e = Error::internal(std::io::Error::other("secret-key-abc leaked"));
        let resp = error_response(&e, "r");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v = body_json(resp).await;
        assert!(!v.to_string().contains("secret-key-abc"));
    }
}
