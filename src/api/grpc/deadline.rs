//! A call's deadline and its answer's body. `grpc-timeout` (gRPC over HTTP/2: up to 8 digits
//! and a unit, `H M S m u n`) bounds the whole call: a unary call whose answer is not ready by
//! then is dropped (its work cancelled, as any dropped future is) and answered
//! DEADLINE_EXCEEDED; a stream still open then ends with that status. tonic's body is carried
//! as the API's body ([`GrpcBody`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::Frame;
use hyper::header::HeaderMap;
use sync_wrapper::SyncWrapper;
use tokio::time::{Instant, Sleep};

use super::super::Body;
use crate::error::{Error, Result};

/// The longest deadline honoured (longer ones are this): an event stream may run for days.
const MAX: Duration = Duration::from_secs(100 * 24 * 3600);

/// The call's deadline from `grpc-timeout`, if it has one; a malformed one is a 400
/// (INVALID_ARGUMENT) naming the header.
pub fn of(headers: &HeaderMap) -> Result<Option<Instant>> {
    let Some(v) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    parse(v.as_bytes())
        .map(|d| Some(Instant::now() + d.min(MAX)))
        .ok_or_else(|| {
            Error::bad_request(
                "invalid `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n)",
            )
        })
}

fn parse(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A status as a whole answer (trailers-only: the status in the headers, no body).
pub fn status_response(s: tonic::Status) -> Response<Body> {
    s.into_http::<tonic::body::Body>()
        .map(|b| GrpcBody::new(b, None).boxed())
}

/// The status an answer's headers carry (a trailers-only answer: an error), or OK (the status
/// follows in the trailers).
pub fn head_code(resp: &Response<Body>) -> tonic::Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// Runs `call` until `deadline`: its answer, or DEADLINE_EXCEEDED (the call dropped).
pub async fn run<F>(deadline: Option<Instant>, call: F) -> Response<Body>
where
    F: Future<Output = Response<tonic::body::Body>>,
{
    let resp = match deadline {
        None => call.await,
        Some(at) => match tokio::time::timeout_at(at, call).await {
            Ok(r) => r,
            Err(_) => return status_response(exceeded()),
        },
    };
    resp.map(|b| GrpcBody::new(b, deadline).boxed())
}

fn exceeded() -> tonic::Status {
    metrics::counter!(crate::metrics::GRPC_DEADLINES_EXCEEDED_TOTAL).increment(1);
    tonic::Status::deadline_exceeded("the call's deadline (grpc-timeout) passed")
}

/// tonic's answer body as the API's: `Sync` (through [`SyncWrapper`]: only ever polled through
/// `&mut`), its errors as trailers (tonic gives a server's errors as trailers already; this is
/// for anything else), and ended with DEADLINE_EXCEEDED trailers at the deadline.
pub struct GrpcBody {
    inner: SyncWrapper<tonic::body::Body>,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl GrpcBody {
    fn new(inner: tonic::body::Body, deadline: Option<Instant>) -> GrpcBody {
        // an answer that is only headers (a trailers-only status) says so, so that hyper ends
        // the stream on its HEADERS frame: gRPC clients take an empty DATA frame after it as a
        // broken stream
        let done = hyper::body::Body::is_end_stream(&inner);
        GrpcBody {
            inner: SyncWrapper::new(inner),
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            done,
        }
    }

    fn end(
        &mut self,
        s: tonic::Status,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        self.done = true;
        let mut h = HeaderMap::new();
        // a status that cannot be written as headers ends the stream without one
        let _ = s.add_header(&mut h);
        Poll::Ready(Some(Ok(Frame::trailers(h))))
    }
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(this.inner.get_mut()).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if f.is_trailers() {
                    this.done = true;
                }
                return Poll::Ready(Some(Ok(f)));
            }
            Poll::Ready(Some(Err(s))) => return this.end(s),
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some(d) = &mut this.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            return this.end(exceeded());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(parse(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"S", b"5", b"5s", b"123456789S", b"-5S", b"5 S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
