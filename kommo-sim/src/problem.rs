//! HTTP response helpers in Kommo's shapes: `application/problem+json` errors, HAL bodies, and the
//! nginx-style HTML pages a real edge returns for bans and some 429s.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

/// Content type of Kommo's errors.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Content type of Kommo's lists and entities.
pub const HAL_JSON: &str = "application/hal+json";

/// Reason phrase for a status, as used in `title`.
pub fn title(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// A problem body `{title, type, status, detail}`.
pub fn problem_value(status: u16, detail: &str) -> Value {
    json!({
        "title": title(status),
        "type": format!("https://httpstatus.es/{status}"),
        "status": status,
        "detail": detail,
    })
}

/// A response with a JSON body and the given content type.
pub fn json_response(status: u16, content_type: &str, body: &Value) -> Response {
    raw_response(
        status,
        content_type,
        serde_json::to_string(body).expect("JSON serializes"),
    )
}

/// A response with a body and content type.
pub fn raw_response(status: u16, content_type: &str, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("valid content type"),
    );
    r
}

/// `application/problem+json` error.
pub fn problem(status: u16, detail: &str) -> Response {
    json_response(status, PROBLEM_JSON, &problem_value(status, detail))
}

/// 400 with `validation-errors` naming the offending query parameter.
pub fn validation(path: &str, code: &str, detail: &str) -> Response {
    let mut v = problem_value(400, "Request validation failed");
    v["validation-errors"] = json!([{
        "request_id": "0",
        "errors": [{"code": code, "path": path, "detail": detail}]
    }]);
    json_response(400, PROBLEM_JSON, &v)
}

/// 500 like Kommo's, with a `trace_id`.
pub fn internal_error() -> Response {
    let mut v = problem_value(
        500,
        "Our team are probably already working on the elimination of the problem",
    );
    v["title"] = json!("ErrInternalServer");
    v["trace_id"] = json!(format!("{:032x}", rand::random::<u128>()));
    json_response(500, PROBLEM_JSON, &v)
}

/// 204 with no body.
pub fn no_content() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// An nginx-style HTML error page.
pub fn html(status: u16) -> Response {
    let t = format!("{status} {}", title(status));
    raw_response(
        status,
        "text/html; charset=utf-8",
        format!(
            "<html>\r\n<head><title>{t}</title></head>\r\n<body>\r\n<center><h1>{t}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        ),
    )
}
