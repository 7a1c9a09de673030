//! Bodies of the faults that break the transfer itself or its size.
//!
//! hyper aborts a connection when a response body's stream yields an error, writing nothing it
//! has not flushed yet. That gives the two resets: an error at once loses even the status line
//! (`reset`), while an error after a pause, once the head and half the page have gone out,
//! breaks the body mid-way (`reset_body`).

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures_util::stream::{self, StreamExt};

use crate::problem::{self, HAL_JSON};

/// Size of the `huge` padding and of the `huge_junk` body: 10 MB, some twenty times a full page
/// of 250 leads.
pub const HUGE_BYTES: usize = 10_000_000;

/// How long `reset_body` waits between sending half the page and dropping the connection, so
/// that hyper flushes the head and the half first (it flushes whenever the body is pending).
const FLUSH_PAUSE: Duration = Duration::from_millis(20);

fn connection_reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "kommo-sim: injected reset")
}

/// A response whose body fails before its first byte: hyper drops the connection without
/// writing the head, so the status set here never reaches the client.
pub(crate) fn reset() -> Response {
    let body = stream::once(async { Err::<Bytes, io::Error>(connection_reset()) });
    Response::new(Body::from_stream(body))
}

/// 200, hal+json, the first half of `page`, then the connection drops.
pub(crate) fn reset_mid_body(page: Bytes) -> Response {
    let half = page.slice(..page.len() / 2);
    let broken = stream::once(async {
        tokio::time::sleep(FLUSH_PAUSE).await;
        Err(connection_reset())
    });
    let body = stream::once(async { Ok(half) }).chain(broken);
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(HAL_JSON));
    r
}

/// `real` (status and headers kept) with `body` padded by [`HUGE_BYTES`] and still valid JSON:
/// an object gains a last key `"_sim_padding": "xxx..."` (a client should ignore unknown keys,
/// as Kommo adds them), anything else trailing spaces. An empty body (204) stays empty: padding
/// it would make it a different answer, not a bigger one.
pub(crate) fn padded(mut real: Response, body: &[u8]) -> Response {
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    let json = &body[..end];
    let out = if json.is_empty() {
        Vec::new()
    } else if json.len() >= 2 && json[0] == b'{' && json[end - 1] == b'}' {
        let mut out = Vec::with_capacity(end + HUGE_BYTES + 32);
        out.extend_from_slice(&json[..end - 1]);
        if json[1..end - 1].iter().any(|b| !b.is_ascii_whitespace()) {
            out.push(b',');
        }
        out.extend_from_slice(b"\"_sim_padding\":\"");
        out.resize(out.len() + HUGE_BYTES, b'x');
        out.extend_from_slice(b"\"}");
        out
    } else {
        let mut out = json.to_vec();
        out.resize(end + HUGE_BYTES, b' ');
        out
    };
    real.headers_mut().remove(header::CONTENT_LENGTH);
    *real.body_mut() = Body::from(out);
    real
}

/// 200, hal+json, [`HUGE_BYTES`] of PHP warnings. Built once: a mix may serve it often.
pub(crate) fn junk() -> Response {
    static JUNK: OnceLock<Bytes> = OnceLock::new();
    let bytes = JUNK.get_or_init(|| {
        let line: &[u8] = b"<br />\n<b>Warning</b>:  Unknown: write failed: No space left on device (28) in <b>Unknown</b> on line <b>0</b><br />\n";
        Bytes::from(line.iter().copied().cycle().take(HUGE_BYTES).collect::<Vec<u8>>())
    });
    let mut r = problem::raw_response(200, HAL_JSON, String::new());
    *r.body_mut() = Body::from(bytes.clone());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use serde_json::Value;

    async fn padded_body(body: &str) -> Vec<u8> {
        let r = padded(Response::new(Body::empty()), body.as_bytes());
        to_bytes(r.into_body(), usize::MAX).await.unwrap().to_vec()
    }

    #[tokio::test]
    async fn padding_keeps_the_json_and_adds_ten_megabytes() {
        let out = padded_body("{\"_page\":1,\"_embedded\":{\"leads\":[{\"id\":3}]}}\n").await;
        assert!(out.len() >= HUGE_BYTES);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["_embedded"]["leads"][0]["id"], 3);
        assert_eq!(v["_sim_padding"].as_str().unwrap().len(), HUGE_BYTES);

        let v: Value = serde_json::from_slice(&padded_body("{ }").await).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
        let v: Value = serde_json::from_slice(&padded_body("[1,2]").await).unwrap();
        assert_eq!(v, serde_json::json!([1, 2]));
        assert!(padded_body("").await.is_empty());
    }

    #[tokio::test]
    async fn junk_is_big_and_not_json() {
        let body = to_bytes(junk().into_body(), usize::MAX).await.unwrap();
        assert_eq!(body.len(), HUGE_BYTES);
        assert!(serde_json::from_slice::<Value>(&body).is_err());
    }
}
