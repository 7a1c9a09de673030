//! The Kommo-facing HTTP surface: `/api/v4/*` and `/oauth2/*`.
//!
//! One entry point handles every counted request so that the order of checks is explicit and
//! the same for all: count the arrival → ban (403) → rate limit (429) → auth (401) → injected
//! fault → endpoint. Then the configured latency, then a `Date` header from the sim clock (the
//! client's only trustworthy source of server time).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use serde_json::{json, Value};

use crate::config::ImsMode;
use crate::embeds::With;
use crate::entity::Entity;
use crate::faults::{self, Fault, TIMEOUT_HOLD};
use crate::limits::Admission;
use crate::oauth::{AuthError, TokenRequest};
use crate::problem::{self, HAL_JSON, PROBLEM_JSON};
use crate::query::{self, Paging};
use crate::sim::{lock, Sim};

/// Largest request body read (token requests are tiny).
const MAX_BODY: usize = 1 << 20;

/// Entry point for every request that is not a /_sim control call.
pub async fn gateway(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let arrival = Instant::now();
    let path = req.uri().path().to_string();
    let counted = path == "/api/v4" || path.starts_with("/api/v4/") || path.starts_with("/oauth2/");
    if !counted {
        return problem::problem(404, &format!("Cannot {} {}", req.method(), path));
    }
    let mut resp = counted_request(&sim, req, &path, arrival).await;
    let latency = sim.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if !resp.headers().contains_key(header::DATE) {
        if let Ok(v) = HeaderValue::from_str(&sim.clock.http_date()) {
            resp.headers_mut().insert(header::DATE, v);
        }
    }
    let status = resp.status().as_u16();
    let mut c = lock(&sim.counters);
    match resp.extensions().get::<Injected>() {
        // The client never sees a status: nothing to count.
        Some(Injected(Fault::Reset)) => {}
        Some(_) => c.injected_status(status),
        None => c.status(status),
    }
    drop(c);
    resp
}

/// Marks a response as an injected fault, so the counters can tell an injected 403 from a ban.
#[derive(Clone, Copy)]
struct Injected(Fault);

async fn counted_request(sim: &Arc<Sim>, req: Request, path: &str, arrival: Instant) -> Response {
    let admission = {
        let (adm, in_window) = lock(&sim.limiter).admit(arrival, &sim.limits());
        let mut c = lock(&sim.counters);
        c.arrival(path);
        c.window(in_window);
        adm
    };
    match admission {
        Admission::Banned => return problem::html(403),
        Admission::TooMany { banned_now } => {
            if banned_now {
                tracing::warn!(
                    "rate limit broken repeatedly: banning for {:?}",
                    sim.cfg.ban_duration
                );
            }
            let mut v = problem::problem_value(
                429,
                "You have sent too many requests in a given amount of time. Please try again later.",
            );
            v["retry_after"] = json!(sim.cfg.retry_after_secs);
            return problem::json_response(429, PROBLEM_JSON, &v);
        }
        Admission::Ok => {}
    }
    if path.starts_with("/oauth2/") {
        return oauth(sim, req, path).await;
    }

    let now = sim.now();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if let Err(e) = lock(&sim.oauth).check_bearer(&sim.cfg.auth, auth, now) {
        let detail = match e {
            AuthError::Missing => "Authorization header with a Bearer token is required",
            AuthError::Unknown => "Invalid user name or password",
            AuthError::Expired => "Token has expired",
        };
        return problem::problem(401, detail);
    }

    let fault = lock(&sim.faults).take();
    if let Some(f) = fault {
        lock(&sim.counters).fault(&f.kind());
        let mut resp = fault_response(sim, f, req, path).await;
        resp.extensions_mut().insert(Injected(f));
        return resp;
    }
    let (method, query, ims) = request_key_parts(&req);
    let resp = endpoint(sim, &req, path);
    if method == Method::GET && (resp.status() == 200 || resp.status() == 204) {
        let pairs = query::pairs(query.as_deref());
        let key = query::query_key(method.as_str(), path, &pairs, ims.as_deref());
        lock(&sim.counters).served_query(key, Instant::now());
    }
    resp
}

fn request_key_parts(req: &Request) -> (Method, Option<String>, Option<String>) {
    let ims = req
        .headers()
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    (
        req.method().clone(),
        req.uri().query().map(str::to_string),
        ims,
    )
}

async fn fault_response(sim: &Arc<Sim>, f: Fault, req: Request, path: &str) -> Response {
    match f {
        Fault::Timeout => {
            let mut stop = sim.shutdown.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(TIMEOUT_HOLD) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            f.simple_response()
        }
        Fault::DateAhead(secs) => {
            let mut r = endpoint(sim, &req, path);
            let date = crate::clock::http_date(sim.clock.now() + secs);
            if let Ok(v) = HeaderValue::from_str(&date) {
                r.headers_mut().insert(header::DATE, v);
            }
            r
        }
        Fault::Truncated200 => {
            let real = endpoint(sim, &req, path);
            let (_, bytes) = split(real).await;
            let cut = bytes.len() / 2;
            let mut r = Response::new(Body::from(bytes.slice(..cut)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(HAL_JSON));
            r
        }
        Fault::ResetBody => {
            let real = endpoint(sim, &req, path);
            faults::reset_mid_body(split(real).await.1)
        }
        Fault::Huge => {
            let real = endpoint(sim, &req, path);
            let (head, bytes) = split(real).await;
            faults::padded(head, &bytes)
        }
        other => other.simple_response(),
    }
}

/// An answer split into its head (an empty-bodied response) and its bytes. Takes the response,
/// not the request: a `&Request` held across the `.await` would make the handler `!Send`.
async fn split(real: Response) -> (Response, Bytes) {
    let (parts, body) = real.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    (Response::from_parts(parts, Body::empty()), bytes)
}

fn hal(v: &Value) -> Response {
    problem::json_response(200, HAL_JSON, v)
}

/// Endpoints of /api/v4 the simulator serves.
enum Route {
    Account,
    Users,
    Pipelines,
    LossReasons,
    CustomFields(Entity),
    Tags(Entity),
    Events,
    List(Entity),
    One(Entity, i64),
}

fn route(rest: &str) -> Option<Route> {
    let segs: Vec<&str> = rest.split('/').collect();
    let entity = |s: &str| s.parse::<Entity>().ok().filter(|e| e.as_str() == s);
    Some(match segs.as_slice() {
        ["account"] => Route::Account,
        ["users"] => Route::Users,
        ["events"] => Route::Events,
        ["leads", "pipelines"] => Route::Pipelines,
        ["leads", "loss_reasons"] => Route::LossReasons,
        [kind, "custom_fields"] => {
            Route::CustomFields(entity(kind).filter(|e| *e != Entity::Tasks)?)
        }
        [kind, "tags"] => Route::Tags(entity(kind).filter(|e| *e != Entity::Tasks)?),
        [kind] => Route::List(entity(kind)?),
        [kind, id] => Route::One(entity(kind)?, id.parse().ok()?),
        _ => return None,
    })
}

/// Routes an authorized /api/v4 request.
fn endpoint(sim: &Sim, req: &Request, path: &str) -> Response {
    let rest = path.trim_start_matches("/api/v4").trim_matches('/');
    let Some(r) = route(rest) else {
        return problem::problem(
            404,
            &format!("Cannot {} {}{}", req.method(), sim.base_url, path),
        );
    };
    if req.method() != Method::GET {
        return problem::problem(405, "Method Not Allowed");
    }
    let pairs = query::pairs(req.uri().query());
    let base = sim.base_url.as_str();
    let now = sim.now();
    let reference = sim.reference();
    match r {
        Route::Account => {
            let with: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| k == "with")
                .flat_map(|(_, v)| v.split(','))
                .collect();
            let user = reference.users.first().map_or(0, |u| u.id);
            let mut v = reference.account_json(base, &with, user, now);
            // Kommo adds it for `with=is_api_filter_enabled`; always present here, so a client
            // that forgets the `with` still sees the truth.
            v["is_api_filter_enabled"] = json!(sim.api_filter_enabled());
            hal(&v)
        }
        Route::Users => paged_reference(
            path,
            base,
            &pairs,
            "users",
            reference.users_json(base),
            None,
        ),
        Route::Pipelines => hal(&reference.pipelines_json(base)),
        Route::LossReasons => paged_reference(
            path,
            base,
            &pairs,
            "loss_reasons",
            reference.loss_reasons_json(base, sim.anchor),
            None,
        ),
        // At most 50 definitions a page, whatever `limit` asks.
        Route::CustomFields(e) => paged_reference(
            path,
            base,
            &pairs,
            "custom_fields",
            reference.custom_fields_json(base, e),
            Some(query::CUSTOM_FIELDS_MAX_LIMIT),
        ),
        Route::Tags(e) => paged_reference(path, base, &pairs, "tags", reference.tags_json(e), None),
        Route::Events => events(sim, path, &pairs),
        Route::List(e) => list(sim, e, path, &pairs, req.headers()),
        Route::One(e, id) => match sim.one(e, id, With::parse(&pairs)) {
            Some(raw) => problem::raw_response(200, HAL_JSON, raw.to_string()),
            None => problem::no_content(),
        },
    }
}

/// `_links` of a page: self, next (when `next`), first and prev (page > 1).
///
/// Entity lists and events pass `next = true` on every page: Kommo cannot count, so it links a
/// next page even from the last one, and a client must not read the absence of `next` as the end.
fn page_links(base: &str, path: &str, pairs: &[(String, String)], p: Paging, next: bool) -> Value {
    let kept: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "page" && k != "limit")
        .cloned()
        .collect();
    let href = |page: i64| {
        let mut q = kept.clone();
        q.push(("limit".into(), p.limit.to_string()));
        q.push(("page".into(), page.to_string()));
        json!({"href": format!("{base}{path}?{}", query::encode(&q))})
    };
    let mut links = serde_json::Map::new();
    links.insert("self".into(), href(p.page));
    if next {
        links.insert("next".into(), href(p.page + 1));
    }
    if p.page > 1 {
        links.insert("first".into(), href(1));
        links.insert("prev".into(), href(p.page - 1));
    }
    Value::Object(links)
}

fn page_slice<T: Clone>(items: &[T], p: Paging) -> Vec<T> {
    let start = ((p.page - 1) as usize).saturating_mul(p.limit as usize);
    items
        .iter()
        .skip(start)
        .take(p.limit as usize)
        .cloned()
        .collect()
}

/// `GET /api/v4/{leads|contacts|companies|tasks}`.
///
/// Parameters are validated, then the account's [`query::ListRules`] apply: ignored parameters
/// are dropped, the default order fills in, and a page-size cap silently shrinks `limit` (the
/// offset follows the capped size, as on a server that caps).
fn list(
    sim: &Sim,
    e: Entity,
    path: &str,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    let rules = sim.list_rules();
    let mut params = match query::list_params_with(e, pairs, &rules) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let ims = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::clock::parse_http_date);
    if let Some(t) = ims {
        let floor = match sim.ims_mode() {
            ImsMode::Gt => Some(t + 1),
            ImsMode::Gte => Some(t),
            ImsMode::Ignore => None,
        };
        if let Some(fl) = floor {
            let f = &mut params.filter;
            f.updated_from = Some(f.updated_from.map_or(fl, |x| x.max(fl)));
        }
    }
    let p = Paging {
        page: params.paging.page,
        limit: rules.page_size(params.paging.limit),
    };
    let offset = ((p.page - 1) as usize).saturating_mul(p.limit as usize);
    let page = sim.list_page(
        e,
        &params.filter,
        With::parse(pairs),
        offset,
        p.limit as usize,
    );
    if page.items.is_empty() {
        return problem::no_content();
    }
    {
        let mut c = lock(&sim.counters);
        c.c.items_served += page.items.len() as u64;
        c.c.raced_items += page.raced;
    }
    let links = page_links(&sim.base_url, path, pairs, p, true);
    let items = &page.items;
    let mut body = String::with_capacity(items.iter().map(|s| s.len() + 1).sum::<usize>() + 512);
    body.push_str(&format!(
        "{{\"_page\":{},\"_links\":{},\"_embedded\":{{\"{}\":[",
        p.page,
        links,
        e.as_str()
    ));
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str("]}}");
    problem::raw_response(200, HAL_JSON, body)
}

/// Reference lists with `_total_items`, `_page`, `_page_count` (users, custom fields, ...).
/// With `cap`, a larger `limit` silently serves `cap` items a page (and says so in `_links`).
fn paged_reference(
    path: &str,
    base: &str,
    pairs: &[(String, String)],
    key: &str,
    items: Vec<Value>,
    cap: Option<i64>,
) -> Response {
    let paged = match cap {
        Some(c) => query::capped_paging(pairs, c),
        None => query::paging(pairs, query::MAX_LIMIT),
    };
    let p = match paged {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let page = page_slice(&items, p);
    if page.is_empty() {
        return problem::no_content();
    }
    let total = items.len() as i64;
    let page_count = (total + p.limit - 1) / p.limit;
    let mut links = page_links(base, path, pairs, p, p.page < page_count);
    if p.page >= page_count {
        links.as_object_mut().expect("object").remove("next");
    }
    hal(&json!({
        "_total_items": total,
        "_page": p.page,
        "_page_count": page_count,
        "_links": links,
        "_embedded": {key: page}
    }))
}

/// `GET /api/v4/events`.
fn events(sim: &Sim, path: &str, pairs: &[(String, String)]) -> Response {
    let (p, f) = match query::event_params(pairs) {
        Ok(x) => x,
        Err(e) => return e.response(),
    };
    let page: Vec<Value> = {
        let d = lock(&sim.data);
        let hits = d.events.list(&f);
        page_slice(&hits, p)
            .into_iter()
            .map(|e| e.to_json(&sim.base_url, sim.cfg.account_id))
            .collect()
    };
    if page.is_empty() {
        return problem::no_content();
    }
    hal(&json!({
        "_page": p.page,
        "_links": page_links(&sim.base_url, path, pairs, p, true),
        "_embedded": {"events": page}
    }))
}

/// `POST /oauth2/access_token`.
async fn oauth(sim: &Arc<Sim>, req: Request, path: &str) -> Response {
    if path.trim_end_matches('/') != "/oauth2/access_token" {
        return problem::problem(
            404,
            &format!("Cannot {} {}{}", req.method(), sim.base_url, path),
        );
    }
    lock(&sim.counters).c.token_requests += 1;
    if req.method() != Method::POST {
        return problem::problem(405, "Method Not Allowed");
    }
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let Ok(bytes) = to_bytes(req.into_body(), MAX_BODY).await else {
        return problem::problem(400, "Request data can not be read");
    };
    if bytes.is_empty() {
        return problem::problem(400, "Request data can not be empty");
    }
    let parsed: Result<TokenRequest, String> = if form {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Ok(TokenRequest {
            client_id: get("client_id"),
            client_secret: get("client_secret"),
            grant_type: get("grant_type"),
            code: get("code"),
            refresh_token: get("refresh_token"),
            redirect_uri: get("redirect_uri"),
        })
    } else {
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let treq = match parsed {
        Ok(t) => t,
        Err(e) => return problem::problem(400, &format!("Request body is not valid JSON: {e}")),
    };
    let now = sim.now();
    let outcome = {
        let mut rng = rand::thread_rng();
        lock(&sim.oauth).grant(&sim.cfg.auth, &treq, now, &mut rng)
    };
    if outcome.refresh_reuse {
        lock(&sim.counters).c.refresh_token_reuses += 1;
    }
    let ct = if outcome.status == 200 {
        "application/json"
    } else {
        PROBLEM_JSON
    };
    problem::json_response(outcome.status, ct, &outcome.body)
}
