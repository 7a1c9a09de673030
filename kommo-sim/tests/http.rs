//! End-to-end behaviour over real HTTP: what a Kommo client sees.

use std::time::Duration;

use kommo_sim::{
    AuthConfig, Bounds, DefaultOrder, Entity, Fault, FaultMix, FaultMixError, Focus, IgnoredParam,
    ImsMode, MutatorConfig, Param, Sim, SimConfig, SimServer, TieOrder, With,
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

/// Sends an authorized GET and returns the status, or `None` when the client got no answer.
async fn status_or_reset(t: &T, path: &str) -> Option<u16> {
    let r = t
        .http
        .get(format!("{}{path}", t.server.base_url()))
        .header("Authorization", TOKEN)
        .send()
        .await;
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            // Read the body so that a broken one shows here too.
            r.bytes().await.ok().map(|_| s)
        }
        Err(e) => {
            assert!(e.status().is_none(), "{e:?}");
            None
        }
    }
}

#[tokio::test]
async fn a_reset_drops_the_connection_before_any_status() {
    let t = T::new(small()).await;
    let sim = t.sim();
    sim.inject(Fault::Reset, 1);
    let err = t
        .http
        .get(format!("{}/api/v4/leads", t.server.base_url()))
        .header("Authorization", TOKEN)
        .send()
        .await
        .expect_err("no answer at all");
    assert!(err.status().is_none());
    assert!(err.is_request() && !err.is_timeout(), "{err:?}");

    assert_eq!(t.get("/api/v4/leads").await.status(), 200, "one reset only");
    let c = sim.counters();
    assert_eq!(c.requests, 2, "the client did not retry on its own");
    assert_eq!(c.faults_served, 1);
    assert_eq!(c.faults_by_kind["reset"], 1);
    assert_eq!(
        c.by_status.values().sum::<u64>(),
        1,
        "a reset has no status"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn a_reset_mid_body_gives_200_then_a_body_error() {
    let t = T::new(small()).await;
    t.sim().inject(Fault::ResetBody, 1);
    let r = t.get("/api/v4/leads?limit=250").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/hal+json");
    let err = r.bytes().await.expect_err("the body breaks");
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    assert_eq!(t.get("/api/v4/leads").await.status(), 200);
    t.server.stop().await;
}

#[tokio::test]
async fn a_huge_answer_is_ten_megabytes_of_the_same_page() {
    let t = T::new(small()).await;
    let clean: Value = t.get("/api/v4/leads?limit=250").await.json().await.unwrap();
    t.sim().inject(Fault::Huge, 1);
    let r = t.get("/api/v4/leads?limit=250").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/hal+json");
    let body = r.bytes().await.unwrap();
    assert!(body.len() >= 10_000_000, "{} bytes", body.len());
    let huge: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(huge["_embedded"], clean["_embedded"]);
    assert_eq!(huge["_links"], clean["_links"]);
    assert_eq!(t.sim().counters().faults_by_kind["huge"], 1);
    t.server.stop().await;
}

#[tokio::test]
async fn huge_junk_is_ten_megabytes_that_do_not_parse() {
    let t = T::new(small()).await;
    t.sim().inject(Fault::HugeJunk, 1);
    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/hal+json");
    let body = r.bytes().await.unwrap();
    assert!(body.len() >= 10_000_000);
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    t.server.stop().await;
}

#[tokio::test]
async fn an_injected_html_403_looks_like_a_ban_but_is_not_one() {
    let t = T::new(small()).await;
    let sim = t.sim();
    sim.inject(Fault::Html403, 1);
    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 403);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let injected = r.text().await.unwrap();
    assert_eq!(t.get("/api/v4/leads").await.status(), 200, "no ban started");
    assert_eq!(sim.ban_remaining(), None);
    let c = sim.counters();
    assert_eq!((c.forbidden, c.faults_403_served), (0, 1));
    assert_eq!(c.by_status[&403], 1);

    // A real ban serves the same page and counts as a ban.
    sim.ban_for(Duration::from_secs(60));
    let r = t.get("/api/v4/leads").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), injected);
    let c = sim.counters();
    assert_eq!((c.forbidden, c.faults_403_served), (1, 1));
    t.server.stop().await;
}

#[tokio::test]
async fn a_fault_mix_fails_its_share_of_requests_repeatably() {
    let t = T::new(small()).await;
    let sim = t.sim();
    sim.set_fault_mix(Some(FaultMix::new(1.0, vec![Fault::Status(503)], 1)))
        .unwrap();
    for _ in 0..10 {
        assert_eq!(t.get("/api/v4/leads").await.status(), 503);
    }
    sim.set_fault_mix(Some(FaultMix::new(0.0, vec![Fault::Status(503)], 1)))
        .unwrap();
    for _ in 0..10 {
        assert_eq!(t.get("/api/v4/leads").await.status(), 200);
    }
    // Queued faults come first.
    sim.set_fault_mix(Some(FaultMix::new(1.0, vec![Fault::Status(503)], 1)))
        .unwrap();
    sim.inject(Fault::Status(502), 1);
    assert_eq!(t.get("/api/v4/leads").await.status(), 502);
    assert_eq!(t.get("/api/v4/leads").await.status(), 503);
    let c = sim.counters();
    assert_eq!(c.faults_served, 12);
    assert_eq!(c.faults_by_kind["503"], 11);

    let kinds = vec![
        Fault::Status(500),
        Fault::Status(504),
        Fault::Reset,
        Fault::ResetBody,
    ];
    let mut runs = Vec::new();
    for _ in 0..2 {
        sim.set_fault_mix(Some(FaultMix::new(0.5, kinds.clone(), 7)))
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..40 {
            seen.push(status_or_reset(&t, "/api/v4/leads?limit=5").await);
        }
        runs.push(seen);
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    let ok = runs[0].iter().filter(|s| **s == Some(200)).count();
    assert!((8..=32).contains(&ok), "about half faulted: {:?}", runs[0]);
    assert!(runs[0].contains(&None), "resets among them: {:?}", runs[0]);

    assert_eq!(
        sim.set_fault_mix(Some(FaultMix::new(1.5, kinds, 7))),
        Err(FaultMixError::Rate(1.5))
    );
    sim.clear_faults();
    assert_eq!(sim.fault_mix(), None);
    assert_eq!(t.get("/api/v4/leads").await.status(), 200);
    t.server.stop().await;
}

#[tokio::test]
async fn the_fault_mix_is_set_and_checked_over_http() {
    let t = T::new(small()).await;
    let base = t.server.base_url();
    let send = |method: reqwest::Method, p: &str, body: Value| {
        let http = t.http.clone();
        let url = format!("{base}{p}");
        async move {
            let r = http.request(method, url).json(&body).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let post = |p: &'static str, body: Value| send(reqwest::Method::POST, p, body);
    let health = || async {
        let v: Value = t
            .http
            .get(format!("{base}/_sim/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["fault_mix"].clone()
    };

    let (s, v) = post("/_sim/faults/mix", json!({"rate": 1.5, "kinds": ["500"]})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("1.5"), "{v}");
    let (s, v) = post("/_sim/faults/mix", json!({"rate": 0.1, "kinds": []})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("empty"), "{v}");
    let (s, v) = post(
        "/_sim/faults/mix",
        json!({"rate": 0.1, "kinds": ["500", "resett"]}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("\"resett\""), "{v}");
    assert_eq!(health().await, Value::Null, "nothing was set");

    let (s, v) = post(
        "/_sim/faults/mix",
        json!({"rate": 1.0, "kinds": ["html_403", "huge_junk"], "seed": 7}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        health().await,
        json!({"rate": 1.0, "kinds": ["html_403", "huge_junk"], "seed": 7})
    );
    let s = t.get("/api/v4/leads").await.status();
    assert!(s == 403 || s == 200, "{s}");
    let c: Value = t
        .http
        .get(format!("{base}/_sim/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["faults_served"], 1);
    assert_eq!(c["faults_by_kind"].as_object().unwrap().len(), 1);

    let (s, _) = send(reqwest::Method::DELETE, "/_sim/faults", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(
        health().await,
        Value::Null,
        "DELETE /_sim/faults clears the mix"
    );
    assert_eq!(t.get("/api/v4/leads").await.status(), 200);

    post("/_sim/faults/mix", json!({"rate": 1.0, "kinds": ["502"]})).await;
    let (s, _) = send(reqwest::Method::DELETE, "/_sim/faults/mix", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(t.get("/api/v4/leads").await.status(), 200);
    t.server.stop().await;
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
    // It really was edited: the dump shows it (as a list without with), and the next page
    // does not race.
    let id = raced[3]["id"].as_i64().unwrap();
    let dumped = sim
        .dump_with(Entity::Leads, With::NONE)
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

// ---------------------------------------------------------------------------------------------
// with=, reference paging, restores, merges, stage moves, links.

impl T {
    /// Events of one type about one entity, newest first (via the API, as a client sees them).
    async fn events_about(&self, kind: &str, entity_id: i64) -> Vec<Value> {
        self.items("events", &format!("filter[type]={kind}&limit=100"), &[])
            .await
            .into_iter()
            .filter(|e| e["entity_id"] == entity_id)
            .collect()
    }

    /// One entity by id through a list (`None` if the list leaves it out).
    async fn listed(&self, entity: &str, id: i64, with: &str) -> Option<Value> {
        self.items(entity, &format!("filter[id]={id}&{with}"), &[])
            .await
            .into_iter()
            .next()
    }
}

fn embedded_ids(v: &Value, key: &str) -> Vec<i64> {
    v["_embedded"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no _embedded.{key} in {v}"))
        .iter()
        .map(|x| x["id"].as_i64().unwrap())
        .collect()
}

/// All pages of a list, with a query.
async fn all_items(t: &T, entity: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for page in 1.. {
        let items = t
            .items(entity, &format!("limit=250&page={page}&{query}"), &[])
            .await;
        if items.is_empty() {
            return out;
        }
        out.extend(items);
    }
    unreachable!()
}

#[tokio::test]
async fn optional_embeds_come_only_with_with() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let links = sim.links();
    let (lead, contact, _) = sim.lead_contacts()[0];

    // Leads: tags and companies always, contacts only with=contacts (unknown values ignored).
    for v in all_items(&t, "leads", "with=catalog_elements").await {
        assert!(v["_embedded"]["tags"].is_array() && v["_embedded"]["companies"].is_array());
        assert!(v["_embedded"].get("contacts").is_none(), "{v}");
    }
    let leads = all_items(&t, "leads", "with=loss_reason,contacts").await;
    let shown: Vec<(i64, i64, bool)> = leads
        .iter()
        .flat_map(|v| {
            let id = v["id"].as_i64().unwrap();
            v["_embedded"]["contacts"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |c| {
                    (
                        id,
                        c["id"].as_i64().unwrap(),
                        c["is_main"].as_bool().unwrap(),
                    )
                })
        })
        .collect();
    assert_eq!(
        shown,
        sim.lead_contacts(),
        "with=contacts shows the link truth"
    );
    assert!(leads.iter().all(|v| {
        let c = v["_embedded"]["contacts"].as_array().unwrap();
        c.is_empty() || c.iter().filter(|x| x["is_main"] == true).count() == 1
    }));

    // Contacts: companies always, leads only with=leads, from the leads' links.
    let plain = t.listed("contacts", contact, "").await.unwrap();
    assert!(plain["_embedded"]["companies"].is_array());
    assert!(plain["_embedded"].get("leads").is_none());
    let with = t.listed("contacts", contact, "with=leads").await.unwrap();
    let want: Vec<i64> = links
        .lead_contacts
        .iter()
        .filter(|l| l.contact_id == contact)
        .map(|l| l.lead_id)
        .collect();
    assert_eq!(embedded_ids(&with, "leads"), want);
    assert!(want.contains(&lead));

    // Companies: contacts and leads each only when asked, from the members' companies.
    let (cl_lead, company) = links.lead_companies[0];
    let plain = t.listed("companies", company, "").await.unwrap();
    assert!(
        plain["_embedded"].get("contacts").is_none() && plain["_embedded"].get("leads").is_none()
    );
    let only_leads = t.listed("companies", company, "with=leads").await.unwrap();
    assert!(only_leads["_embedded"].get("contacts").is_none());
    let both = t
        .listed("companies", company, "with=contacts,leads")
        .await
        .unwrap();
    let of = |pairs: &[(i64, i64)]| -> Vec<i64> {
        pairs
            .iter()
            .filter(|(_, c)| *c == company)
            .map(|(id, _)| *id)
            .collect()
    };
    assert_eq!(embedded_ids(&both, "leads"), of(&links.lead_companies));
    assert_eq!(
        embedded_ids(&both, "contacts"),
        of(&links.contact_companies)
    );
    assert!(embedded_ids(&both, "leads").contains(&cl_lead));

    // GET /{entity}/{id} honours with= the same way.
    let one: Value = t
        .get(&format!("/api/v4/leads/{lead}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(one["_embedded"].get("contacts").is_none());
    let one: Value = t
        .get(&format!("/api/v4/leads/{lead}?with=contacts"))
        .await
        .json()
        .await
        .unwrap();
    assert!(embedded_ids(&one, "contacts").contains(&contact));
    let one: Value = t
        .get(&format!("/api/v4/contacts/{contact}?with=leads"))
        .await
        .json()
        .await
        .unwrap();
    assert!(embedded_ids(&one, "leads").contains(&lead));

    // dump shows leads as with=contacts lists them (the shape dumps always had), the others
    // as lists without with; dump_with chooses.
    assert_eq!(sim.dump(Entity::Leads), leads);
    assert!(sim
        .dump_with(Entity::Leads, With::NONE)
        .iter()
        .all(|v| v["_embedded"].get("contacts").is_none()));
    assert!(sim.dump(Entity::Companies).iter().all(|v| {
        v["_embedded"].get("contacts").is_none() && v["_embedded"].get("leads").is_none()
    }));
    let companies = sim.dump_with(Entity::Companies, With::ALL);
    assert!(companies.iter().all(|v| v["_embedded"]["leads"].is_array()));

    // A deleted contact drops out of its leads' contacts.
    sim.delete(Entity::Contacts, &[contact]);
    let v = t.listed("leads", lead, "with=contacts").await.unwrap();
    assert!(!embedded_ids(&v, "contacts").contains(&contact));
    t.server.stop().await;
}

/// FNV-1a of a dump's JSON: a short fingerprint of everything a seed generates.
fn fingerprint(items: &[Value]) -> u64 {
    serde_json::to_string(items)
        .unwrap()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
}

#[test]
fn seeded_entities_are_what_they_were_before_the_unused_definitions() {
    // Fingerprints of dumps taken before the 56 unused lead field definitions (and with=)
    // existed: the extra definitions draw nothing, and dumps keep their shape.
    let want: [(u64, usize, [u64; 4]); 3] = [
        (
            42,
            1000,
            [
                0x73622e44d7627e1a,
                0x95b19bb09c2ab051,
                0xb703a55c7c617df1,
                0xd8e35547daaee450,
            ],
        ),
        (
            7,
            300,
            [
                0x7ea3b22d577ef0b8,
                0x0c0d12cebf8d8807,
                0x694b5288e46f5883,
                0xc6e2c6c50eab8d42,
            ],
        ),
        (
            42,
            5000,
            [
                0xdd0ddf58aabddb2b,
                0x2335d404a6882324,
                0x1fe895067587bc42,
                0x86e46e38441e53cd,
            ],
        ),
    ];
    for (seed, n, prints) in want {
        let sim = Sim::new(
            SimConfig {
                seed,
                leads: n,
                contacts: n,
                companies: n,
                tasks: n,
                seed_now: Some(1_750_000_000),
                ..SimConfig::default()
            },
            "http://sim",
        );
        for e in Entity::ALL {
            assert_eq!(
                fingerprint(&sim.dump(e)),
                prints[e.index()],
                "seed {seed}, {n} {e}"
            );
        }
    }
}

#[tokio::test]
async fn custom_field_definitions_come_50_a_page() {
    let t = T::new(small()).await;
    let v = t.page("leads/custom_fields", "limit=250").await;
    let total = v["_total_items"].as_i64().unwrap();
    assert!(
        total > 50,
        "enough lead fields to need a second page: {total}"
    );
    assert_eq!(
        v["_embedded"]["custom_fields"].as_array().unwrap().len(),
        50
    );
    assert_eq!(v["_page_count"], (total + 49) / 50);
    let next = v["_links"]["next"]["href"].as_str().unwrap();
    assert!(
        next.contains("limit=50") && next.contains("page=2"),
        "{next}"
    );
    let v = t.page("leads/custom_fields", "limit=250&page=2").await;
    assert_eq!(
        v["_embedded"]["custom_fields"].as_array().unwrap().len() as i64,
        total - 50
    );
    assert!(v["_links"].get("next").is_none());
    assert_eq!(
        t.page("leads/custom_fields", "limit=20").await["_page_count"],
        (total + 19) / 20
    );
    assert_eq!(
        t.get("/api/v4/leads/custom_fields?limit=0").await.status(),
        400
    );
    // The unused definitions never appear in entities' values.
    let in_use: std::collections::HashSet<i64> = t
        .sim()
        .reference()
        .fields_in_use(Entity::Leads)
        .iter()
        .map(|f| f.id)
        .collect();
    assert!(in_use.len() < 50);
    for v in t.sim().dump(Entity::Leads) {
        for f in v["custom_fields_values"].as_array().into_iter().flatten() {
            assert!(in_use.contains(&f["field_id"].as_i64().unwrap()), "{f}");
        }
    }
    t.server.stop().await;
}

#[tokio::test]
async fn tags_are_listed_per_kind() {
    let t = T::new(small()).await;
    let r = t.sim().reference();
    for (e, path) in [
        (Entity::Leads, "leads/tags"),
        (Entity::Contacts, "contacts/tags"),
        (Entity::Companies, "companies/tags"),
    ] {
        let v = t.page(path, "limit=250").await;
        let tags = v["_embedded"]["tags"].as_array().unwrap();
        let want: Vec<i64> = r.tags[e.index()].iter().map(|t| t.id).collect();
        assert_eq!(ids(tags), want, "{path}");
        assert!(tags
            .iter()
            .all(|t| t["name"].is_string() && t.get("color").is_some()));
    }
    let v = t.page("leads/tags", "limit=4").await;
    assert_eq!(v["_embedded"]["tags"].as_array().unwrap().len(), 4);
    assert!(v["_links"]["next"]["href"]
        .as_str()
        .unwrap()
        .contains("page=2"));
    let v = t.page("leads/tags", "limit=4&page=2").await;
    assert_eq!(v["_embedded"]["tags"].as_array().unwrap().len(), 2);
    assert_eq!(t.get("/api/v4/leads/tags?limit=251").await.status(), 400);
    assert_eq!(t.get("/api/v4/tasks/tags").await.status(), 404);
    t.server.stop().await;
}

#[tokio::test]
async fn a_restored_entity_is_listed_again_after_a_restored_event() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let leads = ids(&sim.dump(Entity::Leads));
    let (a, b) = (leads[3], leads[4]);
    sim.delete(Entity::Leads, &[a, b]);
    assert!(t.listed("leads", a, "").await.is_none());
    let deleted = t.events_about("lead_deleted", a).await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (&deleted[0]["value_before"], &deleted[0]["value_after"]),
        (&json!([]), &json!([]))
    );

    // Restore with the default switch: back in lists with a new updated_at.
    sim.advance_clock(600);
    let at = sim.now();
    assert_eq!(sim.restore(Entity::Leads, &[a, 12345]), vec![a]);
    let back = t.listed("leads", a, "").await.expect("listed again");
    assert!(back["updated_at"].as_i64().unwrap() >= at);
    let restored = t.events_about("lead_restored", a).await;
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["entity_type"], "lead");
    assert_eq!(
        (&restored[0]["value_before"], &restored[0]["value_after"]),
        (&json!([]), &json!([]))
    );
    assert_eq!(sim.deleted_ids(Entity::Leads), vec![b]);
    assert_eq!(sim.restored_ids(Entity::Leads), vec![a]);

    // Without the bump it comes back with the updated_at it had: behind any cursor.
    sim.set_restore_bumps_updated_at(false);
    sim.restore(Entity::Leads, &[b]);
    let v = t.listed("leads", b, "").await.unwrap();
    assert!(v["updated_at"].as_i64().unwrap() < at);
    let since = t
        .items(
            "leads",
            &format!("filter[updated_at][from]={at}&limit=250"),
            &[],
        )
        .await;
    assert!(!ids(&since).contains(&b), "an updated_at cursor misses it");
    assert!(ids(&since).contains(&a));

    // Contacts and companies restore too; tasks cannot (Kommo has no task_restored).
    let c = ids(&sim.dump(Entity::Companies))[0];
    sim.delete(Entity::Companies, &[c]);
    assert_eq!(sim.restore(Entity::Companies, &[c]), vec![c]);
    assert_eq!(t.events_about("company_restored", c).await.len(), 1);
    let task = ids(&sim.dump(Entity::Tasks))[0];
    sim.delete(Entity::Tasks, &[task]);
    assert!(sim.restore(Entity::Tasks, &[task]).is_empty());
    assert_eq!(t.events_about("task_deleted", task).await.len(), 1);
    t.server.stop().await;
}

#[tokio::test]
async fn a_merged_contact_leaves_and_its_leads_follow_the_kept_one() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let (lead, from, _) = sim.lead_contacts()[0];
    let into = ids(&sim.dump(Entity::Contacts))
        .into_iter()
        .find(|&c| c != from && !sim.lead_contacts().iter().any(|l| l.0 == lead && l.1 == c))
        .unwrap();
    let lead_before = t.listed("leads", lead, "").await.unwrap();
    sim.advance_clock(600);
    let at = sim.now();
    assert!(sim.merge(Entity::Contacts, from, into));
    assert!(!sim.merge(Entity::Contacts, from, into), "from is gone");
    assert!(
        !sim.merge(Entity::Leads, lead, lead),
        "only contacts and companies merge"
    );

    assert!(t.listed("contacts", from, "").await.is_none());
    let merged = t.events_about("entity_merged", from).await;
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0]["entity_type"], "contact");
    assert_eq!(
        (&merged[0]["value_before"], &merged[0]["value_after"]),
        (&json!([]), &json!([]))
    );
    let kept = t.listed("contacts", into, "with=leads").await.unwrap();
    assert!(
        kept["updated_at"].as_i64().unwrap() >= at,
        "the kept one is edited"
    );
    assert!(embedded_ids(&kept, "leads").contains(&lead));
    let v = t.listed("leads", lead, "with=contacts").await.unwrap();
    let contacts = embedded_ids(&v, "contacts");
    assert!(contacts.contains(&into) && !contacts.contains(&from));
    let linked = t.events_about("entity_linked", lead).await;
    assert_eq!(
        linked[0]["value_after"],
        json!([{"link": {"entity": {"id": into, "type": "contact"}}}])
    );
    assert_eq!(
        v["updated_at"], lead_before["updated_at"],
        "links do not bump by default"
    );

    assert_eq!(sim.merged_ids(Entity::Contacts), vec![from]);
    assert_eq!(sim.merges(Entity::Contacts), vec![(from, into)]);
    assert!(!sim.deleted_ids(Entity::Contacts).contains(&from));
    assert!(
        sim.restore(Entity::Contacts, &[from]).is_empty(),
        "merged is not in the trash"
    );

    // Companies: members' _embedded.companies move to the kept company.
    let links = sim.links();
    let (member, gone) = links.lead_companies[0];
    let keep = ids(&sim.dump(Entity::Companies))
        .into_iter()
        .find(|&c| c != gone)
        .unwrap();
    assert!(sim.merge(Entity::Companies, gone, keep));
    let v = t.listed("leads", member, "").await.unwrap();
    let companies = embedded_ids(&v, "companies");
    assert!(companies.contains(&keep) && !companies.contains(&gone));
    assert!(sim.links().lead_companies.iter().all(|(_, c)| *c != gone));
    let kept = t.listed("companies", keep, "with=leads").await.unwrap();
    assert!(embedded_ids(&kept, "leads").contains(&member));
    t.server.stop().await;
}

#[tokio::test]
async fn stage_moves_are_logged_and_listed_as_truth() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let r = sim.reference();
    let lead = ids(&sim.dump(Entity::Leads))[10];
    let (p0, s0) = sim.stage_of(lead).unwrap();
    let other = r.pipelines.iter().find(|p| p.id != p0).unwrap();
    let target = other.statuses[1].id;
    sim.advance_clock(60);
    assert!(sim.move_lead(lead, other.id, target));
    assert!(!sim.move_lead(lead, other.id, target), "already there");
    assert!(!sim.move_lead(lead, other.id, 999), "unknown stage");
    assert!(!sim.move_lead(lead, 1, 142), "unknown pipeline");
    assert!(sim.move_lead(lead, other.id, 142));

    let v = t.listed("leads", lead, "").await.unwrap();
    assert_eq!(
        (v["pipeline_id"].as_i64(), v["status_id"].as_i64()),
        (Some(other.id), Some(142))
    );
    assert!(v["closed_at"].as_i64().is_some());
    let ev = t.events_about("lead_status_changed", lead).await;
    assert_eq!(ev.len(), 2);
    assert_eq!(
        ev[1]["value_before"],
        json!([{"lead_status": {"id": s0, "pipeline_id": p0}}])
    );
    assert_eq!(
        ev[1]["value_after"],
        json!([{"lead_status": {"id": target, "pipeline_id": other.id}}])
    );

    let moves: Vec<_> = sim
        .stage_moves()
        .into_iter()
        .filter(|m| m.lead_id == lead)
        .collect();
    assert_eq!(moves.len(), 2);
    assert_eq!(
        (
            moves[0].from_pipeline,
            moves[0].from_status,
            moves[0].to_pipeline,
            moves[0].to_status
        ),
        (p0, s0, other.id, target)
    );
    assert_eq!(moves[0].event_id, ev[1]["id"].as_str().unwrap());
    assert_eq!(moves[1].to_status, 142);
    assert!(moves[0].at <= moves[1].at && moves[0].by > 0);
    t.server.stop().await;
}

#[tokio::test]
async fn link_changes_raise_events_and_bump_updated_at_only_when_asked() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let lead = ids(&sim.dump(Entity::Leads))[20];
    let contacts = ids(&sim.dump(Entity::Contacts));
    let fresh = *contacts
        .iter()
        .find(|&&c| !sim.lead_contacts().iter().any(|l| l.0 == lead && l.1 == c))
        .unwrap();
    let before = t.listed("leads", lead, "").await.unwrap();
    sim.advance_clock(600);
    assert!(sim.link(lead, fresh));
    assert!(!sim.link(lead, fresh), "already linked");
    let v = t.listed("leads", lead, "with=contacts").await.unwrap();
    assert!(embedded_ids(&v, "contacts").contains(&fresh));
    assert_eq!(
        v["updated_at"], before["updated_at"],
        "updated_at stays by default"
    );
    assert!(sim
        .lead_contacts()
        .iter()
        .any(|l| l.0 == lead && l.1 == fresh));
    let ev = t.events_about("entity_linked", lead).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["entity_type"], "lead");
    assert_eq!(
        ev[0]["value_after"],
        json!([{"link": {"entity": {"id": fresh, "type": "contact"}}}])
    );
    assert_eq!(ev[0]["value_before"], json!([]));

    sim.set_link_bumps_updated_at(true);
    let at = sim.now();
    assert!(sim.unlink(lead, fresh));
    assert!(!sim.unlink(lead, fresh));
    let v = t.listed("leads", lead, "with=contacts").await.unwrap();
    assert!(!embedded_ids(&v, "contacts").contains(&fresh));
    assert!(
        v["updated_at"].as_i64().unwrap() >= at,
        "bumped when the switch is on"
    );
    let ev = t.events_about("entity_unlinked", lead).await;
    assert_eq!(
        ev[0]["value_before"],
        json!([{"link": {"entity": {"id": fresh, "type": "contact"}}}])
    );
    assert_eq!(ev[0]["value_after"], json!([]));
    t.server.stop().await;
}

#[tokio::test]
async fn every_seeded_lead_has_a_lead_added_event_with_a_note() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let added: Vec<_> = sim
        .events()
        .into_iter()
        .filter(|e| e.kind == "lead_added")
        .collect();
    let mut lead_ids: Vec<i64> = added.iter().map(|e| e.entity_id).collect();
    lead_ids.sort_unstable();
    assert_eq!(lead_ids, ids(&sim.dump(Entity::Leads)));
    assert!(added
        .iter()
        .all(|e| e.before == json!([]) && e.after[0]["note"]["id"].is_i64()));
    let created = sim.create(Entity::Leads, 1)[0];
    let ev = t.events_about("lead_added", created).await;
    assert!(ev[0]["value_after"][0]["note"]["id"].is_i64(), "{}", ev[0]);
    t.server.stop().await;
}

#[tokio::test]
async fn reference_data_changes_are_served() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let r = sim.reference();
    let user = r.users[3].id;
    assert!(sim.remove_user(user));
    assert!(!sim.remove_user(user));
    let v = t.page("users", "limit=250").await;
    assert_eq!(v["_total_items"], 9);
    assert!(!ids(v["_embedded"]["users"].as_array().unwrap()).contains(&user));

    let p = &r.pipelines[1];
    let stage = p.statuses[1].id;
    assert!(sim.rename_pipeline(p.id, "Resellers"));
    assert!(sim.remove_status(p.id, stage));
    assert!(!sim.remove_status(p.id, 142), "won and lost stay");
    let v: Value = t.get("/api/v4/leads/pipelines").await.json().await.unwrap();
    let served = v["_embedded"]["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == p.id)
        .unwrap()
        .clone();
    assert_eq!(served["name"], "Resellers");
    let st = ids(served["_embedded"]["statuses"].as_array().unwrap());
    assert!(!st.contains(&stage) && st.contains(&142));

    let id = sim
        .add_custom_field(Entity::Leads, "Loyalty level", kommo_sim::FieldType::Select)
        .unwrap();
    assert!(sim
        .add_custom_field(Entity::Tasks, "x", kommo_sim::FieldType::Text)
        .is_none());
    let all = [
        t.page("leads/custom_fields", "page=1").await,
        t.page("leads/custom_fields", "page=2").await,
    ];
    let field = all
        .iter()
        .flat_map(|v| v["_embedded"]["custom_fields"].as_array().unwrap().clone())
        .find(|f| f["id"] == id)
        .expect("new definition served");
    assert_eq!(
        (field["name"].as_str(), field["type"].as_str()),
        (Some("Loyalty level"), Some("select"))
    );
    assert!(field["enums"].as_array().is_some_and(|e| !e.is_empty()));
    // The snapshot taken before the changes is unchanged; creations keep working.
    assert_eq!(r.users.len(), 10);
    assert_eq!(sim.create(Entity::Leads, 5).len(), 5);
    t.server.stop().await;
}

#[tokio::test]
async fn mutator_restores_merges_moves_and_links() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let h = sim.start_mutator(MutatorConfig {
        ops_per_sec: 400,
        delete_ratio: 0.2,
        create_ratio: 0.0,
        restore_ratio: 0.15,
        merge_ratio: 0.1,
        move_ratio: 0.2,
        link_ratio: 0.15,
        unlink_ratio: 0.1,
        seed: 11,
        ..MutatorConfig::default()
    });
    wait_for(|| {
        let s = h.stats();
        s.restores > 2 && s.merges > 2 && s.moves > 2 && s.links > 2 && s.unlinks > 2
    })
    .await;
    let stats = h.stop().await;
    let events = sim.events();
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count() as u64;
    let restored: u64 = ["lead_restored", "contact_restored", "company_restored"]
        .iter()
        .map(|k| count(k))
        .sum();
    assert_eq!(restored, stats.restores);
    assert_eq!(count("entity_merged"), stats.merges);
    assert_eq!(count("entity_unlinked"), stats.unlinks);
    assert!(count("entity_linked") >= stats.links, "merges relink too");
    assert!(
        sim.stage_moves().len() as u64 >= stats.moves,
        "edits move leads too"
    );
    let merged: usize = [Entity::Contacts, Entity::Companies]
        .iter()
        .map(|e| sim.merged_ids(*e).len())
        .sum();
    assert_eq!(merged as u64, stats.merges);
    for e in Entity::ALL {
        let live: std::collections::HashSet<i64> = ids(&sim.dump(e)).into_iter().collect();
        assert!(sim.merged_ids(e).iter().all(|id| !live.contains(id)), "{e}");
        assert!(
            sim.deleted_ids(e).iter().all(|id| !live.contains(id)),
            "{e}"
        );
    }
    // Links only join live entities.
    for l in sim.lead_contacts() {
        assert!(sim.stage_of(l.0).is_some());
    }
    t.server.stop().await;
}

#[tokio::test]
async fn control_endpoints_drive_the_event_driven_changes() {
    let t = T::new(small()).await;
    let sim = t.sim();
    let (_, v) = t
        .post(
            "/_sim/settings",
            json!({"restore_bumps_updated_at": false, "link_bumps_updated_at": true}),
        )
        .await;
    assert_eq!(
        (
            v["restore_bumps_updated_at"].as_bool(),
            v["link_bumps_updated_at"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert!(!sim.restore_bumps_updated_at() && sim.link_bumps_updated_at());

    let leads = ids(&sim.dump(Entity::Leads));
    let contacts = ids(&sim.dump(Entity::Contacts));
    let (_, v) = t
        .post(
            "/_sim/mutate",
            json!({"op": "delete", "entity": "leads", "ids": [leads[0]]}),
        )
        .await;
    assert_eq!(v["ids"], json!([leads[0]]));
    let (_, v) = t
        .post(
            "/_sim/mutate",
            json!({"op": "restore", "entity": "leads", "ids": [leads[0]]}),
        )
        .await;
    assert_eq!(v["ids"], json!([leads[0]]));
    let (_, v) = t
        .post(
            "/_sim/mutate",
            json!({"op": "merge", "entity": "contacts", "from": contacts[0], "into": contacts[1]}),
        )
        .await;
    assert_eq!(v["ids"], json!([contacts[0]]));
    let p = &sim.reference().pipelines[2];
    let (_, v) = t
        .post(
            "/_sim/mutate",
            json!({"op": "move", "entity": "leads", "ids": [leads[1]], "pipeline_id": p.id, "status_id": p.statuses[0].id}),
        )
        .await;
    assert_eq!(v["ids"], json!([leads[1]]));
    let (_, v) = t
        .post(
            "/_sim/mutate",
            json!({"op": "link", "lead_id": leads[2], "contact_id": contacts[5]}),
        )
        .await;
    assert_eq!(v["ok"], true);
    let (s, _) = t
        .post("/_sim/mutate", json!({"op": "merge", "entity": "contacts"}))
        .await;
    assert_eq!(s, 400);

    let (_, v) = t
        .post(
            "/_sim/reference",
            json!({"op": "rename_pipeline", "id": p.id, "name": "X"}),
        )
        .await;
    assert_eq!(v["ok"], true);
    let (_, v) = t
        .post(
            "/_sim/reference",
            json!({"op": "add_custom_field", "entity": "contacts", "name": "Nick", "type": "text"}),
        )
        .await;
    assert!(v["id"].is_i64());
    let (s, _) = t
        .post(
            "/_sim/reference",
            json!({"op": "add_custom_field", "entity": "contacts", "name": "N", "type": "blob"}),
        )
        .await;
    assert_eq!(s, 400);

    let truth: Value = t
        .http
        .get(format!("{}/_sim/truth", t.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        truth["merges"]["contacts"],
        json!([[contacts[0], contacts[1]]])
    );
    assert_eq!(truth["restored_ids"]["leads"], json!([leads[0]]));
    assert!(truth["stage_moves"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["lead_id"] == leads[1]));
    assert!(truth["links"]["lead_contacts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["lead_id"] == leads[2] && l["contact_id"] == contacts[5]));
    let d: Value = t
        .http
        .get(format!(
            "{}/_sim/dump/leads?with=contacts",
            t.server.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(d["items"][0]["_embedded"]["contacts"].is_array());
    let h: Value = t
        .http
        .get(format!("{}/_sim/health", t.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["link_bumps_updated_at"], true);
    t.server.stop().await;
}
