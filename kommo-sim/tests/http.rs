//! End-to-end behaviour over real HTTP: what a Kommo client sees.

use std::time::Duration;

use kommo_sim::{
    AuthConfig, Bounds, DefaultOrder, Entity, Fault, Focus, IgnoredParam, ImsMode, MutatorConfig,
    Param, Sim, SimConfig, SimServer, TieOrder,
};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "Bearer sim-token";

/// A small account with the rate limit out of the way (tests that need it turn it back on).
fn small() -> SimConfig {
    SimConfig {
        leads: 600,
        contacts: 300,
        companies: 200,
        tasks: 400,
        max_rps: 0,
        ..SimConfig::default()
    }
}

struct T {
    server: SimServer,
    http: Client,
}

impl T {
    async fn new(cfg: SimConfig) -> T {
        T {
            server: SimServer::start(cfg).await.unwrap(),
            http: Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn sim(&self) -> std::sync::Arc<Sim> {
        self.server.sim()
    }

    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.get_with(path_and_query, &[]).await
    }

    async fn get_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut rb = self
            .http
            .get(format!("{}{}", self.server.base_url(), path_and_query))
            .header("Authorization", TOKEN);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send().await.unwrap()
    }

    /// Items of a 200 page, or empty for 204.
    async fn items(&self, entity: &str, query: &str, headers: &[(&str, &str)]) -> Vec<Value> {
        let r = self
            .get_with(&format!("/api/v4/{entity}?{query}"), headers)
            .await;
        match r.status() {
            StatusCode::NO_CONTENT => vec![],
            StatusCode::OK => {
                let v: Value = r.json().await.unwrap();
                v["_embedded"][entity].as_array().unwrap().clone()
            }
            s => panic!(
                "unexpected {s} for {entity}?{query}: {}",
                r.text().await.unwrap()
            ),
        }
    }

    async fn token(&self, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/oauth2/access_token", self.server.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap())
    }
}

fn ids(items: &[Value]) -> Vec<i64> {
    items.iter().map(|v| v["id"].as_i64().unwrap()).collect()
}

fn field(items: &[Value], f: &str) -> Vec<i64> {
    items.iter().map(|v| v[f].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn page_cap_is_250_and_pages_link() {
    let t = T::new(small()).await;
    let r = t.get("/api/v4/leads?limit=250").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/hal+json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["_page"], 1);
    assert_eq!(v["_embedded"]["leads"].as_array().unwrap().len(), 250);
    assert!(v["_links"]["next"]["href"]
        .as_str()
        .unwrap()
        .contains("page=2"));
    assert!(v["_links"].get("prev").is_none());

    for bad in ["limit=251", "limit=0", "limit=abc", "page=0"] {
        let r = t.get(&format!("/api/v4/leads?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let v: Value = r.json().await.unwrap();
        let path = &v["validation-errors"][0]["errors"][0]["path"];
        assert!(bad.starts_with(path.as_str().unwrap()), "{bad}: {v}");
    }

    // The last page (600 = 250 + 250 + 100) is short, yet links a next page, as Kommo's lists
    // do (they cannot count). Past it: 204.
    let r = t.get("/api/v4/leads?limit=250&page=3").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["_embedded"]["leads"].as_array().unwrap().len(), 100);
    assert!(v["_links"]["next"]["href"]
        .as_str()
        .unwrap()
        .contains("page=4"));
    assert!(v["_links"]["prev"]["href"]
        .as_str()
        .unwrap()
        .contains("page=2"));
    assert!(v["_links"]["first"]["href"]
        .as_str()
        .unwrap()
        .contains("page=1"));
    let r = t.get("/api/v4/leads?limit=250&page=4").await;
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());

    // Every kind and events link next from their last page too; a filtered one-item page also.
    for (path, key) in [
        ("/api/v4/contacts?limit=250&page=2", "contacts"),
        ("/api/v4/companies?limit=250", "companies"),
        ("/api/v4/tasks?limit=250&page=2", "tasks"),
        ("/api/v4/events?limit=70&page=22", "events"),
    ] {
        let v: Value = t.get(path).await.json().await.unwrap();
        let n = v["_embedded"][key].as_array().unwrap().len();
        assert!(n > 0 && n < 250, "{path}: a short last page, got {n}");
        assert!(v["_links"]["next"]["href"].is_string(), "{path}: {v}");
    }
    let id = t.sim().dump(Entity::Leads)[0]["id"].as_i64().unwrap();
    let v: Value = t
        .get(&format!("/api/v4/leads?filter[id]={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(v["_links"]["next"]["href"].is_string());
    // Paged reference lists count, and stop linking at their last page.
    let v: Value = t.get("/api/v4/users?limit=250").await.json().await.unwrap();
    assert!(v["_links"].get("next").is_none(), "{v}");
    t.server.stop().await;
}

#[tokio::test]
async fn empty_result_is_204() {
    let t = T::new(small()).await;
    let future = t.sim().now() + 10_000;
    let r = t
        .get(&format!(
            "/api/v4/contacts?filter[updated_at][from]={future}"
        ))
        .await;
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("content-type").is_none());
    assert!(r.bytes().await.unwrap().is_empty());
    t.server.stop().await;
}

#[tokio::test]
async fn filters_and_orders() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let dump = sim.dump(Entity::Leads);
    let all_ids = ids(&dump);
    assert!(all_ids.windows(2).all(|w| w[0] < w[1]));

    // Default order: id ascending.
    let got = t.items("leads", "limit=250", &[]).await;
    assert_eq!(ids(&got), all_ids[..250].to_vec());

    // filter[id][] repeated, and filter[id]=X.
    let want = vec![all_ids[3], all_ids[10], all_ids[400]];
    let q = want
        .iter()
        .map(|i| format!("filter[id][]={i}"))
        .collect::<Vec<_>>()
        .join("&");
    assert_eq!(ids(&t.items("leads", &q, &[]).await), want);
    let one = t
        .items("leads", &format!("filter[id]={}", all_ids[5]), &[])
        .await;
    assert_eq!(ids(&one), vec![all_ids[5]]);

    // updated_at window, inclusive at both ends, ordered desc.
    let mut ups: Vec<i64> = field(&dump, "updated_at");
    ups.sort_unstable();
    let (lo, hi) = (ups[100], ups[150]);
    let got = t
        .items(
            "leads",
            &format!("filter[updated_at][from]={lo}&filter[updated_at][to]={hi}&order[updated_at]=desc&limit=250"),
            &[],
        )
        .await;
    let expected = ups.iter().filter(|&&u| u >= lo && u <= hi).count();
    assert_eq!(got.len(), expected);
    let got_ups = field(&got, "updated_at");
    assert!(got_ups.windows(2).all(|w| w[0] >= w[1]), "desc order");
    assert_eq!((got_ups[0], *got_ups.last().unwrap()), (hi, lo));

    // filter[updated_at]=X is that one second; created_at filter likewise.
    let x = ups[200];
    let got = t
        .items("leads", &format!("filter[updated_at]={x}"), &[])
        .await;
    assert!(!got.is_empty() && field(&got, "updated_at").iter().all(|&u| u == x));
    let c = dump[7]["created_at"].as_i64().unwrap();
    let got = t
        .items(
            "leads",
            &format!("filter[created_at][from]={c}&filter[created_at][to]={c}"),
            &[],
        )
        .await;
    assert!(ids(&got).contains(&all_ids[7]));

    // order[created_at]=asc and order[id]=desc.
    let got = t.items("leads", "order[id]=desc&limit=5", &[]).await;
    assert_eq!(
        ids(&got),
        all_ids.iter().rev().take(5).copied().collect::<Vec<_>>()
    );
    let got = t
        .items("leads", "order[created_at]=asc&limit=250", &[])
        .await;
    assert!(field(&got, "created_at").windows(2).all(|w| w[0] <= w[1]));

    // Tasks: no order by updated_at, but filter by it and order by complete_till.
    let r = t.get("/api/v4/tasks?order[updated_at]=asc").await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v.to_string().contains("complete_till"),
        "detail lists allowed fields: {v}"
    );
    let tdump = sim.dump(Entity::Tasks);
    let tu = tdump[0]["updated_at"].as_i64().unwrap();
    let got = t
        .items(
            "tasks",
            &format!("filter[updated_at][from]={tu}&order[complete_till]=asc&limit=250"),
            &[],
        )
        .await;
    assert!(!got.is_empty());
    assert!(field(&got, "updated_at").iter().all(|&u| u >= tu));
    assert!(field(&got, "complete_till")
        .windows(2)
        .all(|w| w[0] <= w[1]));
    // Bad direction; unknown params ignored; with= accepted.
    assert_eq!(
        t.get("/api/v4/leads?order[id]=sideways").await.status(),
        400
    );
    assert_eq!(
        t.get("/api/v4/leads?foo=bar&with=contacts&limit=1")
            .await
            .status(),
        200
    );
    t.server.stop().await;
}

#[tokio::test]
async fn if_modified_since_in_each_mode() {
    let cfg = SimConfig {
        leads: 0,
        contacts: 0,
        companies: 0,
        tasks: 0,
        ..small()
    };
    let t = T::new(cfg).await;
    let sim = t.sim();
    let base = sim.now() - 1000;
    for (id, dt) in [(1, -1), (2, 0), (3, 1)] {
        sim.put_raw(
            Entity::Leads,
            json!({"id": id, "name": format!("L{id}"), "created_at": base - 10, "updated_at": base + dt}),
        );
    }
    let ims = kommo_sim::clock::http_date(base);
    let h = [("If-Modified-Since", ims.as_str())];
    assert_eq!(ids(&t.items("leads", "", &h).await), vec![3], "gt");
    sim.set_ims_mode(ImsMode::Gte);
    assert_eq!(ids(&t.items("leads", "", &h).await), vec![2, 3], "gte");
    sim.set_ims_mode(ImsMode::Ignore);
    assert_eq!(
        ids(&t.items("leads", "", &h).await),
        vec![1, 2, 3],
        "ignore"
    );
    sim.set_ims_mode(ImsMode::Gt);
    let garbage = [("If-Modified-Since", "not a date")];
    assert_eq!(
        ids(&t.items("leads", "", &garbage).await).len(),
        3,
        "unparseable: ignored"
    );
    // Nothing newer: 204.
    let later = kommo_sim::clock::http_date(base + 5);
    let r = t
        .get_with("/api/v4/leads", &[("If-Modified-Since", later.as_str())])
        .await;
    assert_eq!(r.status(), 204);
    t.server.stop().await;
}

#[tokio::test]
async fn rate_limit_429_on_eighth_then_ban_403() {
    let cfg = SimConfig {
        max_rps: 7,
        retry_after_secs: 1,
        ban_after_violations: 3,
        ban_duration: Duration::from_secs(2),
        ..small()
    };
    let t = T::new(cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(t.get("/api/v4/account").await.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 200, 429]);
    let r = t.get("/api/v4/account").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.headers().get("date").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["retry_after"], 1);
    assert_eq!(v["status"], 429);
    // Third violation starts the ban: everything is 403 with an HTML body, even token calls.
    assert_eq!(t.get("/api/v4/account").await.status(), 429);
    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 403);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let (s, _) = (
        t.http
            .post(format!("{}/oauth2/access_token", t.server.base_url()))
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(s, 403);
    let c = t.sim().counters();
    assert_eq!(c.too_many_requests, 3);
    assert_eq!(c.forbidden, 2);
    assert_eq!(c.requests, 12);
    assert!(c.max_in_sliding_second >= 12, "{c:?}");
    // Control endpoints are neither counted nor limited.
    let h: Value = t
        .http
        .get(format!("{}/_sim/health", t.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(h["ban_remaining_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(t.sim().counters().requests, 12);
    // The ban ends.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(t.get("/api/v4/account").await.status(), 200);
    // And ban_for bans on demand.
    t.sim().ban_for(Duration::from_secs(60));
    assert_eq!(t.get("/api/v4/account").await.status(), 403);
    t.sim().ban_for(Duration::ZERO);
    assert_eq!(t.get("/api/v4/account").await.status(), 200);
    t.server.stop().await;
}

#[tokio::test]
async fn visibility_delay_hides_fresh_edits() {
    let cfg = SimConfig {
        visibility_delay_secs: 30,
        ..small()
    };
    let t = T::new(cfg).await;
    let sim = t.sim();
    let id = ids(&sim.dump(Entity::Contacts))[0];
    let before = sim.dump(Entity::Contacts)[0].clone();
    sim.edit(Entity::Contacts, &[id]);
    let newest = sim.dump(Entity::Contacts)[0].clone();
    assert!(sim.now() - newest["updated_at"].as_i64().unwrap() <= 1);
    assert_ne!(newest, before);

    let q = format!("filter[id]={id}");
    assert_eq!(
        t.items("contacts", &q, &[]).await,
        vec![before.clone()],
        "old version during delay"
    );
    let created = sim.create(Entity::Contacts, 1)[0];
    let qc = format!("filter[id]={created}");
    assert!(
        t.items("contacts", &qc, &[]).await.is_empty(),
        "new entity invisible during delay"
    );

    sim.advance_clock(30);
    assert_eq!(t.items("contacts", &q, &[]).await, vec![newest.clone()]);
    assert_eq!(ids(&t.items("contacts", &qc, &[]).await), vec![created]);

    // Deletions vanish at once.
    sim.delete(Entity::Contacts, &[id]);
    assert!(t.items("contacts", &q, &[]).await.is_empty());
    assert_eq!(sim.deleted_ids(Entity::Contacts), vec![id]);
    let ev: Value = t
        .get("/api/v4/events?filter[type]=contact_deleted")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ev["_embedded"]["events"][0]["entity_id"], id);
    assert_eq!(ev["_embedded"]["events"][0]["entity_type"], "contact");
    t.server.stop().await;
}

#[tokio::test]
async fn oauth_refresh_is_single_use_and_access_expires() {
    let cfg = SimConfig {
        auth: AuthConfig {
            access_token_ttl: Duration::from_secs(3600),
            ..AuthConfig::default()
        },
        ..small()
    };
    let t = T::new(cfg).await;
    let grant = |g: &str, k: &str, v: &str| {
        json!({"client_id": "sim-client", "client_secret": "sim-secret", "grant_type": g, k: v,
               "redirect_uri": "https://example.com/oauth"})
    };
    let (s, first) = t
        .token(grant("authorization_code", "code", "sim-code"))
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 3600);
    assert!(first["server_time"].as_i64().unwrap() > 0);
    let (s, _) = t
        .token(grant("authorization_code", "code", "sim-code"))
        .await;
    assert_eq!(s, 400, "codes are single use");

    let at1 = first["access_token"].as_str().unwrap().to_string();
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    let call = |tok: String| {
        let http = t.http.clone();
        let url = format!("{}/api/v4/account", t.server.base_url());
        async move {
            http.get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(call(at1.clone()).await, 200);

    let (s, second) = t.token(grant("refresh_token", "refresh_token", &rt1)).await;
    assert_eq!(s, 200);
    let rt2 = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let (s, reuse) = t.token(grant("refresh_token", "refresh_token", &rt1)).await;
    assert_eq!(s, 401);
    assert_eq!(reuse["detail"], "Token has been revoked");
    let (s, _) = t
        .token(grant("refresh_token", "refresh_token", "made-up"))
        .await;
    assert_eq!(s, 401);
    let mut wrong = grant("refresh_token", "refresh_token", &rt2);
    wrong["client_secret"] = json!("nope");
    assert_eq!(t.token(wrong).await.0, 401);

    let c = t.sim().counters();
    assert_eq!(c.token_requests, 6);
    assert_eq!(c.refresh_token_reuses, 2);

    // Access tokens expire in sim time; the long-lived token does not.
    let at2 = second["access_token"].as_str().unwrap().to_string();
    t.sim().advance_clock(3600);
    assert_eq!(call(at1).await, 401);
    assert_eq!(call(at2).await, 401);
    assert_eq!(call("sim-token".into()).await, 200);
    assert_eq!(call("garbage".into()).await, 401);
    // The newest refresh token still works after the access token expired.
    let (s, _) = t.token(grant("refresh_token", "refresh_token", &rt2)).await;
    assert_eq!(s, 200);
    t.server.stop().await;
}

#[tokio::test]
async fn seeding_is_deterministic_and_realistic() {
    let cfg = SimConfig {
        seed_now: Some(1_750_000_000),
        ..small()
    };
    let a = Sim::new(cfg.clone(), "http://sim");
    let b = Sim::new(cfg.clone(), "http://sim");
    let c = Sim::new(
        SimConfig {
            seed: 7,
            ..cfg.clone()
        },
        "http://sim",
    );
    for e in Entity::ALL {
        assert_eq!(a.dump(e), b.dump(e), "{e}");
        assert_ne!(a.dump(e), c.dump(e), "{e}");
    }
    let anchor = 1_750_000_000;
    for e in Entity::ALL {
        let d = a.dump(e);
        let n = match e {
            Entity::Leads => 600,
            Entity::Contacts => 300,
            Entity::Companies => 200,
            Entity::Tasks => 400,
        };
        assert_eq!(d.len(), n);
        let mut by_second = std::collections::HashMap::<i64, usize>::new();
        let mut last_created = i64::MIN;
        for v in &d {
            let (cr, up) = (
                v["created_at"].as_i64().unwrap(),
                v["updated_at"].as_i64().unwrap(),
            );
            assert!(cr <= up && up <= anchor, "{v}");
            assert!(cr >= last_created, "ids increase with created_at");
            last_created = cr;
            assert!(up >= anchor - 365 * 86_400);
            assert_eq!(v["account_id"], 31_000_001);
            assert!(v["_links"]["self"]["href"]
                .as_str()
                .unwrap()
                .ends_with(&v["id"].to_string()));
            *by_second.entry(up).or_default() += 1;
        }
        let biggest = by_second.values().max().copied().unwrap();
        assert!(
            biggest >= n.min(300) && biggest <= n.min(300) + 10,
            "{e}: bulk group {biggest}"
        );
        let shared: usize = by_second.values().filter(|&&k| k > 1).sum();
        if n >= 2 * 300 {
            assert!(shared > biggest, "{e}: some other entities share a second");
        }
    }
    // Field shapes.
    let leads = a.dump(Entity::Leads);
    for v in &leads {
        let s = v["status_id"].as_i64().unwrap();
        assert_eq!(v["closed_at"].is_null(), s != 142 && s != 143, "{v}");
        assert_eq!(v["is_deleted"], false);
        assert!(v["_embedded"]["tags"].is_array());
    }
    let types: std::collections::BTreeSet<String> = Entity::ALL
        .iter()
        .flat_map(|e| a.dump(*e))
        .filter_map(|v| v["custom_fields_values"].as_array().cloned())
        .flatten()
        .map(|f| f["field_type"].as_str().unwrap().to_string())
        .collect();
    for ty in [
        "text",
        "numeric",
        "select",
        "multiselect",
        "date",
        "checkbox",
        "multitext",
    ] {
        assert!(types.contains(ty), "missing {ty}: {types:?}");
    }
    let contacts = a.dump(Entity::Contacts);
    let phone = contacts
        .iter()
        .filter_map(|v| v["custom_fields_values"].as_array())
        .flatten()
        .find(|f| f["field_code"] == "PHONE")
        .unwrap();
    assert!(["WORK", "MOB"].contains(&phone["values"][0]["enum_code"].as_str().unwrap()));
    let numeric = leads
        .iter()
        .filter_map(|v| v["custom_fields_values"].as_array())
        .flatten()
        .find(|f| f["field_type"] == "numeric")
        .unwrap();
    assert!(
        numeric["values"][0]["value"].is_string(),
        "numeric values are strings"
    );
    let task = &a.dump(Entity::Tasks)[0];
    assert!(task["result"].is_object() && task["complete_till"].is_i64());
}

#[tokio::test]
async fn counters_track_window_and_repeats() {
    let t = T::new(small()).await;
    for _ in 0..5 {
        assert_eq!(t.get("/api/v4/leads?limit=10&page=1").await.status(), 200);
    }
    let c = t.sim().counters();
    assert_eq!(c.requests, 5);
    assert_eq!(c.repeated_queries, 4);
    assert_eq!(c.repeated_queries_ever, 4);
    assert_eq!(c.repeated_query_examples.len(), 1, "one distinct key");
    assert!(
        c.repeated_query_examples[0].contains("/api/v4/leads?limit=10&page=1"),
        "{c:?}"
    );
    assert_eq!(c.max_in_sliding_second, 5);
    assert_eq!(c.by_status[&200], 5);
    assert_eq!(c.requests_by_path["/api/v4/leads"], 5);
    assert_eq!(c.items_served, 50);

    // Same params in another order are the same query; another IMS is not.
    t.sim().reset_counters();
    assert_eq!(t.sim().counters().requests, 0);
    t.get("/api/v4/leads?limit=10&page=2").await;
    t.get("/api/v4/leads?page=2&limit=10").await;
    t.get_with(
        "/api/v4/leads?page=2&limit=10",
        &[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    )
    .await;
    t.get("/api/v4/leads?page=3&limit=10").await;
    let c = t.sim().counters();
    assert_eq!((c.repeated_queries, c.repeated_queries_ever), (1, 1));
    // Responses without data (here a 400) are not repeats; a 204 is.
    t.get("/api/v4/leads?limit=0").await;
    t.get("/api/v4/leads?limit=0").await;
    let future = t.sim().now() + 10_000;
    for _ in 0..2 {
        let q = format!("/api/v4/leads?filter[updated_at][from]={future}");
        assert_eq!(t.get(&q).await.status(), 204);
    }
    let c = t.sim().counters();
    assert_eq!((c.repeated_queries, c.repeated_queries_ever), (2, 2));
    assert_eq!(c.repeated_query_examples.len(), 2);
    let over_http: Value = t
        .http
        .get(format!("{}/_sim/counters", t.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http["repeated_queries_ever"], 2);
    assert_eq!(
        over_http["repeated_query_examples"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    t.sim().reset_counters();
    let c = t.sim().counters();
    assert!(c.repeated_query_examples.is_empty() && c.repeated_queries_ever == 0);
    t.server.stop().await;
}

#[tokio::test]
async fn date_header_follows_sim_clock() {
    let cfg = SimConfig {
        clock_offset_secs: -7200,
        ..small()
    };
    let t = T::new(cfg).await;
    t.sim().advance_clock(86_400);
    let r = t.get("/api/v4/account").await;
    let date = r.headers()["date"].to_str().unwrap().to_string();
    let server = kommo_sim::clock::parse_http_date(&date).unwrap();
    assert!((server - t.sim().now()).abs() <= 1);
    let sys = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((server - (sys + 86_400 - 7200)).abs() <= 2);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], 31_000_001);
    assert_eq!(v["subdomain"], "sim");
    t.server.stop().await;
}

#[tokio::test]
async fn injected_faults() {
    let t = T::new(small()).await;
    let sim = t.sim();
    sim.inject(Fault::Status(504), 1);
    sim.inject(Fault::Truncated200, 1);
    sim.inject(Fault::NonJson200, 1);
    sim.inject(Fault::Html429, 1);
    sim.inject(Fault::Status429WithHeader(7), 1);
    sim.inject(Fault::Status(500), 1);

    // Auth is checked before faults: a bad token does not consume one.
    let r = t
        .http
        .get(format!("{}/api/v4/leads", t.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["title"], "Gateway Timeout");

    let r = t.get("/api/v4/leads?limit=250").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/hal+json");
    let body = r.bytes().await.unwrap();
    assert!(body.len() > 1000 && serde_json::from_slice::<Value>(&body).is_err());

    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("<html>"));

    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert!(v.get("retry_after").is_none());

    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert!(v["trace_id"].is_string());

    assert_eq!(t.get("/api/v4/leads").await.status(), 200, "queue drained");
    let c = sim.counters();
    assert_eq!(c.faults_served, 6);
    assert_eq!(c.too_many_requests, 2);

    // A timeout holds the request; stopping the server releases it.
    sim.inject(Fault::Timeout, 1);
    let quick = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = quick
        .get(format!("{}/api/v4/leads", t.server.base_url()))
        .header("Authorization", TOKEN)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let stopped = tokio::time::timeout(Duration::from_secs(8), t.server.stop()).await;
    assert!(stopped.is_ok(), "stop does not wait for held requests");
}

#[tokio::test]
async fn ties_are_shuffled_unless_id_asc() {
    let cfg = SimConfig {
        leads: 1000,
        contacts: 0,
        companies: 0,
        tasks: 0,
        seed_now: None,
        ..small()
    };
    let t = T::new(cfg).await;
    let sim = t.sim();
    // The seeded bulk group: 300 leads on one second.
    let mut count = std::collections::HashMap::<i64, usize>::new();
    for v in sim.dump(Entity::Leads) {
        *count.entry(v["updated_at"].as_i64().unwrap()).or_default() += 1;
    }
    let (&sec, &n) = count.iter().max_by_key(|(_, &n)| n).unwrap();
    assert_eq!(n, 300);
    let q = format!("filter[updated_at]={sec}&order[updated_at]=asc&limit=250");
    let a = ids(&t.items("leads", &q, &[]).await);
    let b = ids(&t.items("leads", &q, &[]).await);
    assert_eq!(a.len(), 250);
    assert_ne!(a, b, "shuffled ties differ between requests");
    sim.set_tie_order(TieOrder::IdAsc);
    let a = ids(&t.items("leads", &q, &[]).await);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    // Walking the second by id is stable and complete.
    let mut walked = Vec::new();
    for page in 1..=2 {
        let q = format!("filter[updated_at]={sec}&order[id]=asc&limit=250&page={page}");
        walked.extend(ids(&t.items("leads", &q, &[]).await));
    }
    assert_eq!(walked.len(), 300);
    t.server.stop().await;
}

#[tokio::test]
async fn mutator_creates_edits_deletes_and_bulk_edits() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let h = sim.start_mutator(MutatorConfig {
        ops_per_sec: 200,
        bulk_every: Some(Duration::from_millis(150)),
        bulk_size: 50,
        delete_ratio: 0.2,
        create_ratio: 0.3,
        seed: 3,
        ..MutatorConfig::default()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = h.stop().await;
    assert!(
        stats.creates > 0 && stats.edits > 0 && stats.deletes > 0,
        "{stats:?}"
    );
    assert!(
        stats.bulk_edits >= 1 && stats.bulk_edited >= 50,
        "{stats:?}"
    );
    let deleted: usize = Entity::ALL.iter().map(|e| sim.deleted_ids(*e).len()).sum();
    assert_eq!(deleted as u64, stats.deletes);

    // bulk_edit puts n entities on one second with changed content.
    let before = sim.dump(Entity::Tasks);
    let edited = sim.bulk_edit(Entity::Tasks, 100);
    assert_eq!(edited.len(), 100);
    let after = sim.dump(Entity::Tasks);
    let secs: std::collections::HashSet<i64> = after
        .iter()
        .filter(|v| edited.contains(&v["id"].as_i64().unwrap()))
        .map(|v| v["updated_at"].as_i64().unwrap())
        .collect();
    assert_eq!(secs.len(), 1);
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 100);

    // The control endpoint drives a mutator too.
    let base = t.server.base_url();
    let r: Value = t
        .http
        .post(format!("{base}/_sim/mutator/start"))
        .json(&json!({"ops_per_sec": 100, "bulk_every": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["started"]["ops_per_sec"], 100);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r: Value = t
        .http
        .post(format!("{base}/_sim/mutator/stop"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["stopped"], true);
    t.server.stop().await;
}

#[tokio::test]
async fn control_endpoints() {
    let t = T::new(small()).await;
    let base = t.server.base_url();
    let post = |p: &str, body: Value| {
        let http = t.http.clone();
        let url = format!("{base}{p}");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let now = t.sim().now();
    let (s, v) = post("/_sim/clock/advance?secs=100", json!({})).await;
    assert_eq!(s, 200);
    assert!(v["now"].as_i64().unwrap() >= now + 100);
    let (s, _) = post("/_sim/faults", json!({"kind": "502", "count": 1})).await;
    assert_eq!(s, 200);
    assert_eq!(t.get("/api/v4/leads").await.status(), 502);
    let (s, _) = post("/_sim/faults", json!({"kind": "bogus"})).await;
    assert_eq!(s, 400);
    let (_, v) = post(
        "/_sim/settings",
        json!({"ims_mode": "gte", "visibility_delay_secs": 5, "tie_order": "id_asc"}),
    )
    .await;
    assert_eq!(v["ims_mode"], "gte");
    assert_eq!(t.sim().visibility_delay(), 5);
    let (_, v) = post(
        "/_sim/mutate",
        json!({"op": "create", "entity": "companies", "n": 2}),
    )
    .await;
    assert_eq!(v["ids"].as_array().unwrap().len(), 2);
    let (s, _) = post("/_sim/ban?secs=60", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(t.get("/api/v4/leads").await.status(), 403);
    let d: Value = t
        .http
        .get(format!("{base}/_sim/dump/companies"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["items"].as_array().unwrap().len(), 202);
    let c: Value = t
        .http
        .get(format!("{base}/_sim/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["requests"], 2);
    assert_eq!(c["by_status"]["403"], 1);
    let (s, _) = post("/_sim/counters/reset", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(t.sim().counters().requests, 0);
    t.server.stop().await;
}

#[tokio::test]
async fn reference_endpoints() {
    let t = T::new(small()).await;
    let v: Value = t.get("/api/v4/leads/pipelines").await.json().await.unwrap();
    let pipelines = v["_embedded"]["pipelines"].as_array().unwrap();
    assert!(pipelines.len() >= 2);
    for p in pipelines {
        let st: Vec<i64> = p["_embedded"]["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_i64().unwrap())
            .collect();
        assert!(st.contains(&142) && st.contains(&143));
    }
    let v: Value = t.get("/api/v4/users?limit=250").await.json().await.unwrap();
    assert_eq!(v["_total_items"], 10);
    let v: Value = t
        .get("/api/v4/contacts/custom_fields")
        .await
        .json()
        .await
        .unwrap();
    assert!(v["_embedded"]["custom_fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["code"] == "PHONE"));
    let v: Value = t
        .get("/api/v4/account?with=task_types")
        .await
        .json()
        .await
        .unwrap();
    assert!(v["_embedded"]["task_types"].is_array());
    // Events: limit above 100 silently serves 50.
    let v: Value = t
        .get("/api/v4/events?limit=250")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["_embedded"]["events"].as_array().unwrap().len(), 50);
    let v: Value = t
        .get("/api/v4/leads/loss_reasons")
        .await
        .json()
        .await
        .unwrap();
    assert!(!v["_embedded"]["loss_reasons"]
        .as_array()
        .unwrap()
        .is_empty());
    let id = ids(&t.sim().dump(Entity::Leads))[0];
    let v: Value = t
        .get(&format!("/api/v4/leads/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(t.get("/api/v4/leads/1").await.status(), 204);
    assert_eq!(t.get("/api/v4/nothing").await.status(), 404);
    t.server.stop().await;
}

/// An account with no seeded entities (tests put exactly what they need).
fn empty() -> SimConfig {
    SimConfig {
        leads: 0,
        contacts: 0,
        companies: 0,
        tasks: 0,
        ..small()
    }
}

impl T {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.server.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn page(&self, entity: &str, query: &str) -> Value {
        let r = self.get(&format!("/api/v4/{entity}?{query}")).await;
        assert_eq!(r.status(), 200, "{entity}?{query}");
        r.json().await.unwrap()
    }
}

/// Polls `done` every 20 ms for up to 10 s (a loaded machine slows the mutator down).
async fn wait_for(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached within 10 s");
}

fn ignore(entity: Option<Entity>, param: Param) -> IgnoredParam {
    IgnoredParam { entity, param }
}

#[tokio::test]
async fn range_bounds_in_each_mode() {
    let t = T::new(empty()).await;
    let sim = t.sim();
    let base = sim.now() - 10_000;
    // Ids 1..=4 at base-1 .. base+2, for both created_at and updated_at, on leads and tasks.
    for e in [Entity::Leads, Entity::Tasks] {
        for id in 1..=4 {
            let at = base + id - 2;
            sim.put_raw(
                e,
                json!({"id": id, "name": format!("X{id}"), "created_at": at, "updated_at": at}),
            );
        }
    }
    let window = |f: &str| format!("filter[{f}][from]={base}&filter[{f}][to]={}", base + 1);
    let cases = [
        (Bounds::Inclusive, vec![2, 3]),
        (Bounds::ExclusiveFrom, vec![3]),
        (Bounds::ExclusiveTo, vec![2]),
        (Bounds::Exclusive, vec![]),
    ];
    for (b, want) in cases {
        sim.set_bounds(b);
        assert_eq!(sim.bounds(), b);
        for entity in ["leads", "tasks"] {
            for f in ["updated_at", "created_at"] {
                let got = ids(&t.items(entity, &window(f), &[]).await);
                assert_eq!(got, want, "{b:?} {entity} {f}");
            }
            // One bound alone moves the same way.
            let from = ids(&t
                .items(entity, &format!("filter[updated_at][from]={base}"), &[])
                .await);
            let want_from = if b == Bounds::ExclusiveFrom || b == Bounds::Exclusive {
                vec![3, 4]
            } else {
                vec![2, 3, 4]
            };
            assert_eq!(from, want_from, "{b:?} {entity} from only");
            // A bare value is always that second.
            let exact = ids(&t
                .items(entity, &format!("filter[updated_at]={base}"), &[])
                .await);
            assert_eq!(exact, vec![2], "{b:?} {entity} bare");
        }
    }
    // Events keep inclusive bounds; the knob is also a setting over HTTP.
    let (s, v) = t
        .post("/_sim/settings", json!({"bounds": "exclusive_from"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["bounds"], "exclusive_from");
    assert_eq!(sim.bounds(), Bounds::ExclusiveFrom);
    let (s, _) = t.post("/_sim/settings", json!({"bounds": "open"})).await;
    assert!(s.is_client_error());
    // And a SimConfig field.
    let t2 = T::new(SimConfig {
        bounds: Bounds::Exclusive,
        ..empty()
    })
    .await;
    assert_eq!(t2.sim().bounds(), Bounds::Exclusive);
    t2.server.stop().await;
    t.server.stop().await;
}

#[tokio::test]
async fn ignored_params_are_dropped_after_validation() {
    let t = T::new(SimConfig {
        default_order: DefaultOrder::IdDesc,
        ..small()
    })
    .await;
    let sim = t.sim();
    let lead_ids = ids(&sim.dump(Entity::Leads));
    let newest_first: Vec<i64> = lead_ids.iter().rev().copied().collect();
    let future = sim.now() + 10_000;

    // Nothing ignored: filters filter and orders order.
    let q_id = format!("filter[id]={}", lead_ids[5]);
    assert_eq!(ids(&t.items("leads", &q_id, &[]).await), vec![lead_ids[5]]);
    let v: Value = t
        .get("/api/v4/account?with=is_api_filter_enabled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["is_api_filter_enabled"], true);

    // filter[id] ignored on leads only: leads ignore it, contacts still honour it.
    sim.set_ignored(vec![ignore(Some(Entity::Leads), Param::FilterId)]);
    assert_eq!(
        ids(&t.items("leads", &format!("{q_id}&limit=10"), &[]).await),
        newest_first[..10].to_vec(),
        "as if filter[id] had not been sent"
    );
    let cid = ids(&sim.dump(Entity::Contacts))[3];
    assert_eq!(
        ids(&t.items("contacts", &format!("filter[id]={cid}"), &[]).await),
        vec![cid]
    );
    // Validation first: a malformed ignored filter is still a 400.
    assert_eq!(t.get("/api/v4/leads?filter[id]=abc").await.status(), 400);
    let v: Value = t
        .get("/api/v4/account?with=is_api_filter_enabled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["is_api_filter_enabled"], true,
        "only one list ignores a filter"
    );

    // order[updated_at] ignored on leads: the default order (id desc) shows through.
    sim.set_ignored(vec![ignore(Some(Entity::Leads), Param::OrderUpdatedAt)]);
    let got = ids(&t
        .items("leads", "order[updated_at]=asc&limit=20", &[])
        .await);
    assert_eq!(got, newest_first[..20].to_vec());
    let contacts = t
        .items("contacts", "order[updated_at]=asc&limit=250", &[])
        .await;
    assert!(field(&contacts, "updated_at")
        .windows(2)
        .all(|w| w[0] <= w[1]));

    // Orders ignored everywhere: tasks still refuse order[updated_at] (validation first), and
    // order[id]=asc / order[created_at]=asc fall back to the default.
    sim.set_ignored(vec![
        ignore(None, Param::OrderUpdatedAt),
        ignore(None, Param::OrderId),
        ignore(None, Param::OrderCreatedAt),
    ]);
    assert_eq!(
        t.get("/api/v4/tasks?order[updated_at]=asc").await.status(),
        400
    );
    for q in ["order[id]=asc&limit=20", "order[created_at]=asc&limit=20"] {
        assert_eq!(
            ids(&t.items("leads", q, &[]).await),
            newest_first[..20].to_vec(),
            "{q}"
        );
    }
    // order[complete_till] is not ignorable.
    let tasks = t
        .items("tasks", "order[complete_till]=asc&limit=250", &[])
        .await;
    assert!(field(&tasks, "complete_till")
        .windows(2)
        .all(|w| w[0] <= w[1]));

    // Every filter on every list: Kommo's "API filtering off". The account says so.
    sim.set_ignored(vec![ignore(None, Param::Filters)]);
    assert!(!sim.api_filter_enabled());
    let v: Value = t
        .get("/api/v4/account?with=is_api_filter_enabled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["is_api_filter_enabled"], false);
    for e in ["leads", "contacts", "companies", "tasks"] {
        let q = format!("filter[updated_at][from]={future}&filter[created_at][from]={future}&filter[id]=1&limit=5");
        assert_eq!(t.items(e, &q, &[]).await.len(), 5, "{e}: filters ignored");
    }
    // Orders still work, and If-Modified-Since (a header, not a filter) too.
    let got = t
        .items("leads", "filter[id]=1&order[id]=asc&limit=3", &[])
        .await;
    assert_eq!(ids(&got), lead_ids[..3].to_vec());
    let ims = kommo_sim::clock::http_date(future);
    let r = t
        .get_with("/api/v4/leads", &[("If-Modified-Since", ims.as_str())])
        .await;
    assert_eq!(r.status(), 204);

    // filter[created_at] / filter[updated_at] one at a time.
    sim.set_ignored(vec![ignore(
        Some(Entity::Companies),
        Param::FilterCreatedAt,
    )]);
    let q = format!("filter[created_at][from]={future}");
    assert_eq!(t.items("companies", &q, &[]).await.len(), 50);
    assert!(t.items("leads", &q, &[]).await.is_empty());
    sim.set_ignored(vec![ignore(Some(Entity::Tasks), Param::FilterUpdatedAt)]);
    let q = format!("filter[updated_at][from]={future}");
    assert_eq!(t.items("tasks", &q, &[]).await.len(), 50);
    assert!(t.items("companies", &q, &[]).await.is_empty());

    // Over HTTP: strings or objects; `[]` clears.
    let (s, v) = t
        .post(
            "/_sim/settings",
            json!({"ignored": ["*:filter", {"entity": "tasks", "param": "order[id]"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ignored"][0], json!({"entity": null, "param": "filter"}));
    assert_eq!(
        v["ignored"][1],
        json!({"entity": "tasks", "param": "order[id]"})
    );
    assert_eq!(sim.ignored().len(), 2);
    let (s, _) = t
        .post("/_sim/settings", json!({"ignored": ["deals:filter"]}))
        .await;
    assert!(s.is_client_error());
    assert_eq!(sim.ignored().len(), 2, "a bad request changes nothing");
    let (_, v) = t.post("/_sim/settings", json!({"ignored": []})).await;
    assert_eq!(v["ignored"], json!([]));
    assert!(sim.api_filter_enabled());
    t.server.stop().await;

    // As a SimConfig field.
    let t = T::new(SimConfig {
        ignored: vec!["*:filter".parse().unwrap()],
        ..small()
    })
    .await;
    let v: Value = t.get("/api/v4/account").await.json().await.unwrap();
    assert_eq!(v["is_api_filter_enabled"], false);
    t.server.stop().await;
}

#[tokio::test]
async fn default_order_in_each_mode() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let all = ids(&sim.dump(Entity::Contacts));
    assert_eq!(sim.default_order(), DefaultOrder::IdAsc);
    assert_eq!(
        ids(&t.items("contacts", "limit=250", &[]).await),
        all[..250].to_vec()
    );

    sim.set_default_order(DefaultOrder::IdDesc);
    let desc: Vec<i64> = all.iter().rev().copied().collect();
    assert_eq!(
        ids(&t.items("contacts", "limit=250", &[]).await),
        desc[..250].to_vec()
    );
    let p2 = ids(&t.items("contacts", "limit=250&page=2", &[]).await);
    assert_eq!(p2, desc[250..].to_vec());

    let (_, v) = t
        .post(
            "/_sim/settings",
            json!({"default_order": "updated_at_desc"}),
        )
        .await;
    assert_eq!(v["default_order"], "updated_at_desc");
    for e in ["contacts", "tasks"] {
        let got = t.items(e, "limit=250", &[]).await;
        let ups = field(&got, "updated_at");
        assert!(ups.windows(2).all(|w| w[0] >= w[1]), "{e}: newest first");
        let newest = sim
            .dump(e.parse().unwrap())
            .iter()
            .map(|v| v["updated_at"].as_i64().unwrap())
            .max();
        assert_eq!(ups.first().copied(), newest);
    }
    // An explicit order wins.
    let got = t.items("contacts", "order[id]=asc&limit=5", &[]).await;
    assert_eq!(ids(&got), all[..5].to_vec());
    t.server.stop().await;
}

#[tokio::test]
async fn racing_edits_show_a_newer_version_in_place() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let before = sim.dump(Entity::Leads);
    let mut ups = field(&before, "updated_at");
    ups.sort_unstable();
    let (lo, hi) = (ups[100], ups[400]);
    let q = format!(
        "filter[updated_at][from]={lo}&filter[updated_at][to]={hi}&order[updated_at]=asc&limit=50"
    );
    sim.set_tie_order(TieOrder::IdAsc);
    let calm = t.items("leads", &q, &[]).await;
    assert_eq!(calm.len(), 50);

    // A queued race at position 3: same items in the same order, item 3 is a new version
    // edited at sim now (beyond the window), the others as they were.
    let now = sim.now();
    sim.queue_races(1, Some(3));
    assert_eq!(sim.races_pending(), 1);
    let raced = t.items("leads", &q, &[]).await;
    assert_eq!(ids(&raced), ids(&calm));
    for (i, (a, b)) in calm.iter().zip(&raced).enumerate() {
        if i == 3 {
            assert_ne!(a, b);
            let up = b["updated_at"].as_i64().unwrap();
            assert!(
                up >= now && up > hi,
                "raced item is newer than the window: {up}"
            );
        } else {
            assert_eq!(a, b, "item {i}");
        }
    }
    // It really was edited: the dump shows it, and the next page does not race.
    let id = raced[3]["id"].as_i64().unwrap();
    let dumped = sim
        .dump(Entity::Leads)
        .into_iter()
        .find(|v| v["id"] == id)
        .unwrap();
    assert_eq!(dumped, raced[3]);
    assert_eq!(sim.counters().raced_items, 1);
    assert_eq!(sim.races_pending(), 0);
    let again = t.items("leads", &q, &[]).await;
    assert!(!ids(&again).contains(&id), "it has left the window");
    assert_eq!(sim.counters().raced_items, 1);

    // The position is clamped to the page; an empty page does not spend a race.
    let future = sim.now() + 10_000;
    sim.queue_races(1, Some(1000));
    let r = t
        .get(&format!("/api/v4/leads?filter[updated_at][from]={future}"))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(sim.races_pending(), 1);
    let page = t.items("contacts", "order[id]=asc&limit=5", &[]).await;
    assert!(page[4]["updated_at"].as_i64().unwrap() >= now);
    assert!(page[..4]
        .iter()
        .all(|v| v["updated_at"].as_i64().unwrap() < now));

    // Over HTTP, random positions: each of the next pages races exactly one item.
    let (s, v) = t.post("/_sim/race", json!({"count": 2})).await;
    assert_eq!(s, 200);
    assert_eq!(v["pending"], 2);
    let t0 = sim.now();
    for page in 1..=3 {
        let got = t
            .items(
                "companies",
                &format!("order[id]=asc&limit=50&page={page}"),
                &[],
            )
            .await;
        let fresh = got
            .iter()
            .filter(|v| v["updated_at"].as_i64().unwrap() >= t0)
            .count();
        assert_eq!(fresh, usize::from(page <= 2), "page {page}");
    }
    assert_eq!(sim.counters().raced_items, 4);

    // A rate of 1 races every page with items; 0 none. Tasks race too.
    sim.set_race_rate(1.0);
    assert_eq!(sim.race_rate(), 1.0);
    for _ in 0..3 {
        t.items("tasks", "limit=10", &[]).await;
    }
    assert_eq!(sim.counters().raced_items, 7);
    let (_, v) = t.post("/_sim/settings", json!({"race_rate": 0.0})).await;
    assert_eq!(v["race_rate"], 0.0);
    t.items("tasks", "limit=10", &[]).await;
    assert_eq!(sim.counters().raced_items, 7);
    sim.set_race_rate(7.0);
    assert_eq!(sim.race_rate(), 1.0, "clamped to a probability");
    t.server.stop().await;

    // A fractional rate races some pages but not all (seeded, so stable).
    let t = T::new(SimConfig {
        race_rate: 0.5,
        ..small()
    })
    .await;
    for _ in 0..40 {
        t.items("leads", "limit=5", &[]).await;
    }
    let n = t.sim().counters().raced_items;
    assert!((5..=35).contains(&n), "{n} of 40 pages raced");
    t.server.stop().await;
}

#[tokio::test]
async fn page_size_cap_is_silent() {
    let t = T::new(SimConfig {
        max_page_size: Some(100),
        ..small()
    })
    .await;
    let sim = t.sim();
    let all = ids(&sim.dump(Entity::Leads));
    let v = t.page("leads", "limit=250").await;
    let got = ids(v["_embedded"]["leads"].as_array().unwrap());
    assert_eq!(got, all[..100].to_vec());
    let next = v["_links"]["next"]["href"].as_str().unwrap();
    assert!(
        next.contains("limit=100") && next.contains("page=2"),
        "{next}"
    );
    // The offset follows the cap: page 2 of "250" is items 100..200.
    let got = ids(&t.items("leads", "limit=250&page=2", &[]).await);
    assert_eq!(got, all[100..200].to_vec());
    assert_eq!(t.items("leads", "limit=250&page=6", &[]).await.len(), 100);
    assert!(t.items("leads", "limit=250&page=7", &[]).await.is_empty());
    // A smaller limit is obeyed; events and reference lists are not capped.
    assert_eq!(t.items("leads", "limit=30", &[]).await.len(), 30);
    let ev: Value = t
        .get("/api/v4/events?limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ev["_embedded"]["events"].as_array().unwrap().len(), 100);
    // An invalid limit is still refused.
    assert_eq!(t.get("/api/v4/leads?limit=251").await.status(), 400);

    sim.set_max_page_size(Some(7));
    assert_eq!(t.items("tasks", "limit=250", &[]).await.len(), 7);
    let (_, v) = t.post("/_sim/settings", json!({"max_page_size": 0})).await;
    assert_eq!(v["max_page_size"], Value::Null);
    assert_eq!(sim.max_page_size(), None);
    assert_eq!(t.items("leads", "limit=250", &[]).await.len(), 250);
    let (_, v) = t
        .post("/_sim/settings", json!({"max_page_size": 120}))
        .await;
    assert_eq!(v["max_page_size"], 120);
    assert_eq!(t.items("leads", "limit=250", &[]).await.len(), 120);
    t.server.stop().await;
}

#[tokio::test]
async fn import_crowd_seeds_one_shared_second() {
    let anchor = 1_750_000_000;
    let cfg = SimConfig {
        leads: 1000,
        import_crowd: 400,
        seed_now: Some(anchor),
        ..small()
    };
    let a = Sim::new(cfg.clone(), "http://sim");
    let b = Sim::new(cfg.clone(), "http://sim");
    let plain = Sim::new(
        SimConfig {
            import_crowd: 0,
            ..cfg.clone()
        },
        "http://sim",
    );
    let span = 365 * 86_400;
    for e in Entity::ALL {
        let d = a.dump(e);
        assert_eq!(d, b.dump(e), "{e}: deterministic");
        let n = d.len();
        let k = 400.min(n);
        let (sec, count) = a.crowded_second(e).unwrap();
        assert_eq!(count, k, "{e}");
        let members: Vec<usize> = (0..n).filter(|&i| d[i]["updated_at"] == sec).collect();
        assert_eq!(members.len(), k);
        assert!(
            members.windows(2).all(|w| w[1] == w[0] + 1),
            "{e}: a block of ids"
        );
        assert!(
            members.iter().all(|&i| d[i]["created_at"] == sec),
            "{e}: never edited"
        );
        let mut last = i64::MIN;
        for v in &d {
            let (c, u) = (
                v["created_at"].as_i64().unwrap(),
                v["updated_at"].as_i64().unwrap(),
            );
            assert!(c >= last && c <= u && u <= anchor, "{e}: {v}");
            last = c;
        }
        if k < n / 2 {
            assert!(
                (sec - (anchor - span / 3)).abs() < span / 10,
                "{e}: a third back"
            );
        }
        // Without the import the biggest crowd is the old bulk edit.
        assert_eq!(plain.crowded_second(e).unwrap().1, 300.min(n), "{e}");
    }
    // The old bulk edit survives beside the import on a big kind.
    let mut by = std::collections::HashMap::<i64, usize>::new();
    for v in a.dump(Entity::Leads) {
        *by.entry(v["updated_at"].as_i64().unwrap()).or_default() += 1;
    }
    let mut sizes: Vec<usize> = by.values().copied().collect();
    sizes.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(sizes[0], 400);
    assert!(sizes[1] >= 300, "{:?}", &sizes[..3]);
}

#[tokio::test]
async fn mutator_can_aim_at_the_crowd_of_chosen_kinds() {
    let t = T::new(SimConfig {
        import_crowd: 400,
        ..small()
    })
    .await;
    let sim = t.sim();
    let (sec, n) = sim.crowded_second(Entity::Leads).unwrap();
    assert_eq!(n, 400);
    let crowd: std::collections::HashSet<i64> = sim
        .dump(Entity::Leads)
        .iter()
        .filter(|v| v["updated_at"] == sec)
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    let others: Vec<Vec<Value>> = [Entity::Contacts, Entity::Companies, Entity::Tasks]
        .iter()
        .map(|e| sim.dump(*e))
        .collect();
    let before = sim.dump(Entity::Leads);
    let h = sim.start_mutator(MutatorConfig {
        ops_per_sec: 200,
        delete_ratio: 0.2,
        create_ratio: 0.0,
        focus: Focus::Crowd,
        kinds: Some(vec![Entity::Leads]),
        seed: 5,
        ..MutatorConfig::default()
    });
    // Stop soon after both kinds of op happened, well before the crowd of 400 runs out.
    wait_for(|| {
        let s = h.stats();
        s.edits >= 5 && s.deletes >= 2
    })
    .await;
    let stats = h.stop().await;
    assert!(stats.edits + stats.deletes < 400, "{stats:?}");
    assert_eq!(stats.creates, 0);
    // Other kinds untouched.
    for (e, d) in [Entity::Contacts, Entity::Companies, Entity::Tasks]
        .iter()
        .zip(&others)
    {
        assert_eq!(&sim.dump(*e), d, "{e}");
    }
    // Every changed or deleted lead was in the crowd, and each op struck a distinct one.
    let after = sim.dump(Entity::Leads);
    let deleted = sim.deleted_ids(Entity::Leads);
    assert!(deleted.iter().all(|id| crowd.contains(id)));
    let changed: Vec<i64> = before
        .iter()
        .filter(|v| !deleted.contains(&v["id"].as_i64().unwrap()))
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a["id"].as_i64().unwrap())
        .collect();
    assert!(
        changed.iter().all(|id| crowd.contains(id)),
        "edits outside the crowd"
    );
    assert_eq!(changed.len() as u64, stats.edits);
    assert_eq!(deleted.len() as u64, stats.deletes);
    let left = sim.crowded_second(Entity::Leads).unwrap();
    assert_eq!(left, (sec, 400 - (stats.edits + stats.deletes) as usize));

    // Over HTTP, with JSON names.
    let (_, v) = t
        .post(
            "/_sim/mutator/start",
            json!({"ops_per_sec": 100, "focus": "crowd", "kinds": ["tasks"], "create_ratio": 0.0, "delete_ratio": 0.0}),
        )
        .await;
    assert_eq!(v["started"]["focus"], "crowd");
    assert_eq!(v["started"]["kinds"], json!(["tasks"]));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, v) = t.post("/_sim/mutator/stop", json!({})).await;
    assert!(v["stats"]["edits"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(sim.dump(Entity::Contacts), others[0]);
    t.server.stop().await;

    // Once the crowd is gone the mutator falls back to uniform victims.
    let t = T::new(empty()).await;
    let sim = t.sim();
    let base = sim.now() - 5000;
    for id in 1..=3 {
        sim.put_raw(
            Entity::Companies,
            json!({"id": id, "name": "C", "created_at": base, "updated_at": base + id}),
        );
    }
    assert_eq!(sim.crowded_second(Entity::Companies), Some((base + 1, 1)));
    let h = sim.start_mutator(MutatorConfig {
        ops_per_sec: 100,
        delete_ratio: 0.0,
        create_ratio: 0.0,
        focus: Focus::Crowd,
        kinds: Some(vec![Entity::Companies]),
        ..MutatorConfig::default()
    });
    wait_for(|| h.stats().edits >= 40).await;
    h.stop().await;
    let ups = field(&sim.dump(Entity::Companies), "updated_at");
    assert!(ups.iter().all(|&u| u > base + 3), "all edited: {ups:?}");
    t.server.stop().await;
}

#[tokio::test]
async fn health_shows_the_list_knobs() {
    let t = T::new(SimConfig {
        bounds: Bounds::ExclusiveTo,
        default_order: DefaultOrder::UpdatedAtDesc,
        race_rate: 0.1,
        max_page_size: Some(80),
        ignored: vec![ignore(Some(Entity::Tasks), Param::OrderId)],
        ..small()
    })
    .await;
    t.sim().queue_races(3, None);
    let h: Value = t
        .http
        .get(format!("{}/_sim/health", t.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["bounds"], "exclusive_to");
    assert_eq!(h["default_order"], "updated_at_desc");
    assert_eq!(h["race_rate"], 0.1);
    assert_eq!(h["races_pending"], 3);
    assert_eq!(h["max_page_size"], 80);
    assert_eq!(
        h["ignored"],
        json!([{"entity": "tasks", "param": "order[id]"}])
    );
    // Unknown settings are refused rather than silently doing nothing.
    let (s, _) = t.post("/_sim/settings", json!({"max_page": 5})).await;
    assert!(s.is_client_error());
    t.server.stop().await;
}
