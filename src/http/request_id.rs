//! `x-request-id`: taken from the request when it is a sensible id, made otherwise, put on
//! the request's span (so every log line of the request carries it) and echoed in the
//! response, so a client's report can be matched with the service's logs.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

pub const HEADER: &str = "x-request-id";

/// The longest id taken from a client; longer ones, or ones with other characters than
/// these, are replaced, so a client cannot write what it likes into the logs.
const MAX_LEN: usize = 128;

fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .filter(|value| acceptable(value))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid header value")
        });
    request.headers_mut().insert(HEADER, id.clone());
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
    let mut response = next.run(request).instrument(span).await;
    response.headers_mut().insert(HEADER, id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_sensible_characters_and_length_are_taken_and_others_are_not() {
        for taken in ["abc", "01J8Z-trace.id_7:x", &"a".repeat(128)] {
            assert!(acceptable(&HeaderValue::from_str(taken).unwrap()), "{taken}");
        }
        for refused in ["", "with space", "quote\"", &"a".repeat(129), "ünïcode"] {
            let value = HeaderValue::from_bytes(refused.as_bytes()).unwrap();
            assert!(!acceptable(&value), "{refused}");
        }
    }
}
