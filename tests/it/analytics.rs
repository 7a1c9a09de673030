//! The analysts' guide (`docs/analytics.md`) answers its questions right.
//!
//! Every query of the guide is read from the guide itself (between `<!-- query: NAME -->` and
//! the end of the `sql` block after it) and run exactly as written, so the guide and this test
//! cannot drift. One account is set up so that every question has a non-trivial answer
//! (stage moves hours apart, deletions old and recent, restores, a tombstone, a deleted contact
//! that was a lead's only one, a deleted company with open leads, duplicate phones written
//! differently, deleted overdue tasks). Each answer is then compared with the one computed
//! from the simulator's own state: its dumps, reference data, links, stage moves, deletions
//! and event log; never from the database.

use std::collections::{BTreeMap, BTreeSet};

use kommo_sim::{Entity, SimConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Column, PgPool, Row, ValueRef};

use crate::helpers::*;

const GUIDE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/analytics.md"));

/// Every query the guide has, in the order it has them; each is checked below.
const QUERIES: [&str; 14] = [
    "leads_per_stage",
    "won_revenue_per_user",
    "funnel_per_pipeline",
    "average_time_in_stage",
    "overdue_tasks_per_user",
    "leads_without_contacts",
    "duplicate_phones",
    "won_revenue_by_lead_source",
    "leads_deleted_last_7_days",
    "lost_by_reason",
    "companies_open_leads",
    "win_rate_per_pipeline",
    "open_leads_without_open_task",
    "leads_per_tag",
];

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
const WON: i64 = 142;
const LOST: i64 = 143;
/// The leads' "Lead source" select field in the simulated account.
const LEAD_SOURCE: &str = "Lead source";

/// (name, SQL) of every `<!-- query: NAME -->` marker of the guide, in order.
fn guide_queries() -> Vec<(&'static str, &'static str)> {
    const MARK: &str = "<!-- query: ";
    let mut out = Vec::new();
    let mut rest = GUIDE;
    while let Some(i) = rest.find(MARK) {
        rest = &rest[i + MARK.len()..];
        let end = rest.find(" -->").expect("a query marker ends with -->");
        let name = rest[..end].trim();
        rest = &rest[end + " -->".len()..];
        let open = rest
            .find("```sql\n")
            .unwrap_or_else(|| panic!("{name}: no sql block"));
        assert!(
            rest[..open].trim().is_empty(),
            "{name}: the sql block must follow its marker"
        );
        rest = &rest[open + "```sql\n".len()..];
        let close = rest
            .find("\n```")
            .unwrap_or_else(|| panic!("{name}: sql block not closed"));
        out.push((name, &rest[..close]));
        rest = &rest[close..];
    }
    out
}

fn query(name: &str) -> &'static str {
    guide_queries()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("docs/analytics.md has no query {name}"))
        .1
}

#[test]
fn the_guide_has_each_query_once_and_each_is_checked() {
    let names: Vec<&str> = guide_queries().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, QUERIES.to_vec());
    for (name, sql) in guide_queries() {
        assert!(
            sql.trim_start().starts_with("SELECT") || sql.trim_start().starts_with("WITH"),
            "{name}"
        );
        assert!(
            sql.trim_end().ends_with(';'),
            "{name}: one statement, ended by ;"
        );
    }
}

/// A query's answer as text, exactly as psql would print it: the query runs through the
/// simple protocol (no parameters, text results), so any column type can be read.
struct Answer {
    name: &'static str,
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

/// Queries compared so far, so that the test proves it checked every query of the guide.
static ASKED: std::sync::Mutex<BTreeSet<&'static str>> = std::sync::Mutex::new(BTreeSet::new());

async fn answer(pool: &PgPool, name: &'static str) -> Answer {
    ASKED.lock().unwrap().insert(name);
    let rows: Vec<PgRow> = sqlx::raw_sql(query(name))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let columns = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
        .unwrap_or_default();
    let rows = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let v = r.try_get_raw(i).unwrap();
                    (!v.is_null()).then(|| v.as_str().unwrap().to_string())
                })
                .collect()
        })
        .collect();
    Answer {
        name,
        columns,
        rows,
    }
}

impl Answer {
    /// Asserts the columns, and that there is something to compare.
    fn expect_columns(&self, want: &[&str]) {
        assert!(!self.rows.is_empty(), "{}: no rows", self.name);
        assert_eq!(self.columns, want, "{}: columns", self.name);
    }

    fn col(&self, c: &str) -> usize {
        self.columns
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{}: no column {c}", self.name))
    }

    fn text(&self, row: usize, c: &str) -> Option<String> {
        self.rows[row][self.col(c)].clone()
    }

    fn int(&self, row: usize, c: &str) -> Option<i64> {
        self.text(row, c)
            .map(|s| s.parse().unwrap_or_else(|_| panic!("{c}: {s}")))
    }

    fn num(&self, row: usize, c: &str) -> Option<f64> {
        self.text(row, c)
            .map(|s| s.parse().unwrap_or_else(|_| panic!("{c}: {s}")))
    }

    /// A sum of prices (whole numbers here, whatever scale numeric prints).
    fn money(&self, row: usize, c: &str) -> Option<i64> {
        self.num(row, c).map(|x| {
            assert_eq!(x.fract(), 0.0, "{c}: {x}");
            x as i64
        })
    }

    /// A timestamptz (the session's time zone is UTC) as unix seconds.
    fn time(&self, row: usize, c: &str) -> Option<i64> {
        self.text(row, c).map(|s| {
            chrono::DateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%#z")
                .unwrap_or_else(|e| panic!("{c}: {s}: {e}"))
                .timestamp()
        })
    }

    /// A bigint[] such as `{1,2,3}`.
    fn ids(&self, row: usize, c: &str) -> Vec<i64> {
        let s = self.text(row, c).unwrap();
        let inner = s.trim_start_matches('{').trim_end_matches('}');
        inner
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().unwrap())
            .collect()
    }

    fn map<T>(&self, f: impl Fn(&Answer, usize) -> T) -> Vec<T> {
        (0..self.rows.len()).map(|i| f(self, i)).collect()
    }
}

/// (pipeline name, stage name, stays, average in days) of one stage.
type StageAverage = (Option<String>, Option<String>, i64, f64);

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("an entity has an id")
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The values of a custom field (by code) of an entity as the API shows it.
fn field_values(e: &Value, pick: impl Fn(&Value) -> bool) -> Vec<&Value> {
    e["custom_fields_values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| pick(f))
        .flat_map(|f| f["values"].as_array().into_iter().flatten())
        .collect()
}

fn phones(contact: &Value) -> Vec<String> {
    field_values(contact, |f| f["field_code"] == "PHONE")
        .into_iter()
        .filter_map(|v| v["value"].as_str().map(str::to_string))
        .collect()
}

/// A copy of a contact with its phone values replaced, as a person editing it would leave it.
fn with_phones(contact: &Value, values: Vec<Value>, updated_at: i64) -> Value {
    let mut c = contact.clone();
    for f in c["custom_fields_values"].as_array_mut().unwrap() {
        if f["field_code"] == "PHONE" {
            f["values"] = Value::Array(values.clone());
        }
    }
    c["updated_at"] = json!(updated_at);
    c
}

fn phone_values(contact: &Value) -> Vec<Value> {
    contact["custom_fields_values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field_code"] == "PHONE")
        .unwrap()["values"]
        .as_array()
        .unwrap()
        .clone()
}

fn is_open(lead: &Value) -> bool {
    !matches!(lead["status_id"].as_i64(), Some(WON | LOST))
}

/// Prices are whole numbers in the simulated account, so sums compare exactly.
fn price(lead: &Value) -> i64 {
    lead["price"].as_i64().expect("a whole price")
}

fn live_ids(sim: &kommo_sim::Sim, e: Entity) -> Vec<i64> {
    sim.dump_with(e, kommo_sim::With::NONE)
        .iter()
        .map(id)
        .collect()
}

async fn db_now(pool: &PgPool) -> f64 {
    sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_question_of_the_analytics_guide_gets_the_simulators_answer() {
    // The simulator's clock runs 12 days behind the database's: the first deletions are
    // "12 days ago" for `now()`, the later ones (after the clock jumps 7.7 days) about 4.5.
    // The daemon refuses a server clock that jumps between runs unless told it may.
    let t = spawn(
        SimConfig {
            clock_offset_secs: -12 * DAY,
            ..small_account()
        },
        &[("KOMMO_SYNC__SYNC__MAX_CLOCK_JUMP_SECS", "2592000")],
    )
    .await;
    let sim = t.sim.sim();
    let r = sim.reference();
    let mut rng = StdRng::seed_from_u64(20261203);

    // ------------------------------------------------------------------ the account's story
    // Before the first sync: duplicate phones, stamped a minute back so the first run takes
    // them. A has a phone; B has the same digits written without spaces; C has it as a second
    // phone; D has it too but is deleted later; E has its own number twice.
    let contacts0 = sim.dump(Entity::Contacts);
    let links0 = sim.links();
    // A lead whose only contact will be deleted: it then has no contact, though the mirror's
    // lead_contacts still lists the link (the lead itself does not change).
    let mut contacts_of: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for l in &links0.lead_contacts {
        contacts_of.entry(l.lead_id).or_default().push(l.contact_id);
    }
    let (orphaned_lead, only_contact) = contacts_of
        .iter()
        .find(|(_, cs)| cs.len() == 1)
        .map(|(l, cs)| (*l, cs[0]))
        .expect("some lead has exactly one contact");
    let with_phone: Vec<&Value> = contacts0
        .iter()
        .filter(|c| id(c) != only_contact && !phones(c).is_empty())
        .take(5)
        .collect();
    let [ca, cb, cc, cd, ce] = with_phone[..] else {
        panic!("five contacts with phones")
    };
    let stamp = sim.now() - 60;
    let a_phone = phone_values(ca)[0].clone();
    let a_number = a_phone["value"].as_str().unwrap().to_string();
    let mut b_phone = a_phone.clone();
    b_phone["value"] = json!(a_number.replace(' ', ""));
    assert_ne!(b_phone["value"], a_phone["value"], "written differently");
    sim.put_raw(Entity::Contacts, with_phones(cb, vec![b_phone], stamp));
    let mut c_values = phone_values(cc);
    c_values.push(a_phone.clone());
    sim.put_raw(Entity::Contacts, with_phones(cc, c_values, stamp));
    sim.put_raw(
        Entity::Contacts,
        with_phones(cd, vec![a_phone.clone()], stamp),
    );
    let e_phone = phone_values(ce)[0].clone();
    sim.put_raw(
        Entity::Contacts,
        with_phones(ce, vec![e_phone.clone(), e_phone], stamp),
    );
    let (ca, cb, cc, cd, ce) = (id(ca), id(cb), id(cc), id(cd), id(ce));

    t.sync().await;

    let leads0 = sim.dump(Entity::Leads);
    let names0: BTreeMap<i64, Option<String>> = leads0
        .iter()
        .map(|l| (id(l), l["name"].as_str().map(str::to_string)))
        .collect();
    let mut ids: Vec<i64> = leads0
        .iter()
        .map(id)
        .filter(|&l| l != orphaned_lead)
        .collect();
    ids.shuffle(&mut rng);
    let old_deleted = ids[0..6].to_vec();
    let movers = ids[6..66].to_vec();
    let recent_deleted = vec![ids[66], ids[67], movers[0], movers[25]];

    // Phase 1, 12 days ago: deletions, and the only contact of a lead.
    sim.delete(Entity::Leads, &old_deleted);
    sim.delete(Entity::Contacts, &[only_contact]);
    // Three overdue open tasks deleted: they must not count as overdue.
    let deleted_tasks: Vec<i64> = sim
        .dump(Entity::Tasks)
        .iter()
        .filter(|t| t["is_completed"] == json!(false))
        .filter(|t| t["complete_till"].as_i64().unwrap() < sim.now())
        .take(3)
        .map(id)
        .collect();
    assert_eq!(deleted_tasks.len(), 3);
    sim.delete(Entity::Tasks, &deleted_tasks);

    // Four rounds of stage moves, hours apart; each mover moves one to three times, now and
    // then into another pipeline, into won or lost.
    let move_to = |sim: &kommo_sim::Sim, lead: i64, rng: &mut StdRng| {
        let (p, s) = sim.stage_of(lead).expect("a live lead");
        let others: Vec<i64> = r
            .pipelines
            .iter()
            .map(|x| x.id)
            .filter(|&x| x != p)
            .collect();
        let target = if rng.gen_bool(0.25) {
            *others.choose(rng).unwrap()
        } else {
            p
        };
        let stages: Vec<i64> = r
            .pipeline(target)
            .unwrap()
            .statuses
            .iter()
            .map(|x| x.id)
            .filter(|&x| target != p || x != s)
            .collect();
        assert!(sim.move_lead(lead, target, *stages.choose(rng).unwrap()));
    };
    for round in 0..4 {
        sim.advance_clock(9 * HOUR + round as i64 * 1800);
        for &lead in movers.iter().skip(round * 10).take(30) {
            move_to(&sim, lead, &mut rng);
        }
    }

    // Phase 2, about 4.5 days ago.
    sim.advance_clock(6 * DAY);
    sim.delete(Entity::Leads, &recent_deleted);
    assert_eq!(sim.restore(Entity::Leads, &old_deleted[..3]).len(), 3);
    sim.advance_clock(60);
    // Deleted, restored and deleted again: the newest deletion counts.
    sim.delete(Entity::Leads, &old_deleted[2..3]);
    sim.delete(Entity::Contacts, &[cd]);
    // A company with an open lead, deleted: its leads still list it.
    let leads_now = sim.dump(Entity::Leads);
    let open_now: BTreeSet<i64> = leads_now.iter().filter(|l| is_open(l)).map(id).collect();
    let (_, gone_company) = *sim
        .links()
        .lead_companies
        .iter()
        .find(|(l, _)| open_now.contains(l))
        .expect("an open lead with a company");
    sim.delete(Entity::Companies, &[gone_company]);
    // Links changed without the lead's updated_at moving (the simulator's default): one lead
    // without contacts gets one, another loses its only one. Only the event log tells.
    let lc = sim.links();
    let linked_now: BTreeSet<i64> = lc.lead_contacts.iter().map(|l| l.lead_id).collect();
    let spared: BTreeSet<i64> = old_deleted.iter().chain(&recent_deleted).copied().collect();
    let gains_contact = *live_ids(&sim, Entity::Leads)
        .iter()
        .find(|l| !linked_now.contains(l) && !spared.contains(l) && **l != orphaned_lead)
        .expect("a lead without contacts");
    let some_contact = live_ids(&sim, Entity::Contacts)[0];
    assert!(sim.link(gains_contact, some_contact));
    let mut count: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for l in &lc.lead_contacts {
        count.entry(l.lead_id).or_default().push(l.contact_id);
    }
    let (loses_contact, its_contact) = count
        .iter()
        .find(|(l, cs)| cs.len() == 1 && **l != orphaned_lead && **l != gains_contact)
        .map(|(l, cs)| (*l, cs[0]))
        .unwrap();
    assert!(sim.unlink(loses_contact, its_contact));
    // New tasks, due from a few days ago to a week ahead of the database's now.
    sim.create(Entity::Tasks, 30);
    let fresh = sim.create(Entity::Leads, 4);
    // Created and deleted between two runs: a tombstone, known only by its id.
    let ghost = sim.create(Entity::Leads, 1);
    sim.delete(Entity::Leads, &ghost);
    sim.advance_clock(2 * HOUR);
    for &lead in &fresh[..2] {
        move_to(&sim, lead, &mut rng);
    }

    t.let_lag_pass();
    t.sync().await;
    t.let_lag_pass();
    t.sync().await;

    // ------------------------------------------------------------------ the simulator's truth
    let leads = sim.dump(Entity::Leads);
    let contacts = sim.dump(Entity::Contacts);
    let companies = sim.dump(Entity::Companies);
    let tasks = sim.dump(Entity::Tasks);
    let links = sim.links();
    let moves = sim.stage_moves();
    let user_name = |u: i64| {
        r.users
            .iter()
            .find(|x| x.id == u)
            .map(|x| x.name.to_string())
    };
    let pipeline_name = |p: i64| r.pipeline(p).map(|x| x.name.to_string());
    let status_name = |p: i64, s: i64| {
        r.pipeline(p)
            .and_then(|x| x.statuses.iter().find(|y| y.id == s))
            .map(|y| y.name.to_string())
    };
    let stage = |l: &Value| {
        (
            l["pipeline_id"].as_i64().unwrap(),
            l["status_id"].as_i64().unwrap(),
        )
    };
    let live_leads: BTreeSet<i64> = leads.iter().map(id).collect();
    assert!(live_leads.contains(&old_deleted[0]) && !live_leads.contains(&old_deleted[2]));

    // Our own pool: the session's time zone is UTC, so times print as "... +00".
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!(
            "{}?options=-c%20search_path%3Dkommo%20-c%20TimeZone%3DUTC",
            t.db.url
        ))
        .await
        .unwrap();

    // (1) leads per stage: the live leads' current stages.
    {
        let mut want: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
        for l in &leads {
            let w = want.entry(stage(l)).or_default();
            w.0 += 1;
            w.1 += price(l);
        }
        let want: Vec<_> = want
            .into_iter()
            .map(|((p, s), (n, v))| (p, pipeline_name(p), s, status_name(p, s), n, v))
            .collect();
        let got = answer(&pool, "leads_per_stage").await;
        got.expect_columns(&[
            "pipeline_id",
            "pipeline_name",
            "status_id",
            "status_name",
            "leads",
            "total_price",
        ]);
        let got = sorted(got.map(|a, i| {
            (
                a.int(i, "pipeline_id").unwrap(),
                a.text(i, "pipeline_name"),
                a.int(i, "status_id").unwrap(),
                a.text(i, "status_name"),
                a.int(i, "leads").unwrap(),
                a.money(i, "total_price").unwrap(),
            )
        }));
        assert!(want.len() > 3);
        assert_eq!(got, want, "leads_per_stage");
    }

    // (2) won revenue per responsible user.
    {
        let mut want: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for l in leads.iter().filter(|l| l["status_id"] == json!(WON)) {
            let w = want
                .entry(l["responsible_user_id"].as_i64().unwrap())
                .or_default();
            w.0 += 1;
            w.1 += price(l);
        }
        let want: Vec<_> = want
            .into_iter()
            .map(|(u, (n, v))| (u, user_name(u), n, v))
            .collect();
        let got = answer(&pool, "won_revenue_per_user").await;
        got.expect_columns(&[
            "responsible_user_id",
            "responsible_user_name",
            "won_leads",
            "won_revenue",
        ]);
        let rows = got.map(|a, i| {
            (
                a.int(i, "responsible_user_id").unwrap(),
                a.text(i, "responsible_user_name"),
                a.int(i, "won_leads").unwrap(),
                a.money(i, "won_revenue").unwrap(),
            )
        });
        assert!(
            rows.windows(2).all(|w| w[0].3 >= w[1].3),
            "by revenue, highest first"
        );
        assert!(want.len() > 3);
        assert_eq!(sorted(rows), want, "won_revenue_per_user");
    }

    // Stage history of each live lead, from the simulator's log of moves: its first stage (the
    // one its first move left, else where it is) from its created_at, then one stay per move.
    let mut moves_of: BTreeMap<i64, Vec<&kommo_sim::StageMove>> = BTreeMap::new();
    for m in &moves {
        moves_of.entry(m.lead_id).or_default().push(m);
    }
    let history = |l: &Value| -> Vec<(i64, (i64, i64))> {
        let ms = moves_of.get(&id(l)).map(Vec::as_slice).unwrap_or(&[]);
        let first = ms
            .first()
            .map(|m| (m.from_pipeline, m.from_status))
            .unwrap_or_else(|| stage(l));
        let mut h = vec![(l["created_at"].as_i64().unwrap(), first)];
        h.extend(ms.iter().map(|m| (m.at, (m.to_pipeline, m.to_status))));
        h
    };
    assert!(moves.len() >= 120, "{} moves", moves.len());
    assert!(
        moves.iter().any(|m| m.from_pipeline != m.to_pipeline),
        "some moves change pipeline"
    );

    // (3) funnel: live leads that ever entered each stage, every stage of the reference data
    // in funnel order (pipeline sort, stage sort).
    {
        let mut reached: BTreeMap<(i64, i64), BTreeSet<i64>> = BTreeMap::new();
        for l in &leads {
            for (_, s) in history(l) {
                reached.entry(s).or_default().insert(id(l));
            }
        }
        let mut pipelines: Vec<_> = r.pipelines.iter().collect();
        pipelines.sort_by_key(|p| (p.sort, p.id));
        let mut want = Vec::new();
        for p in pipelines {
            let mut stages: Vec<_> = p.statuses.iter().collect();
            stages.sort_by_key(|s| (s.sort, s.id));
            for s in stages {
                let n = reached.get(&(p.id, s.id)).map_or(0, |x| x.len() as i64);
                want.push((
                    p.id,
                    Some(p.name.to_string()),
                    s.id,
                    Some(s.name.to_string()),
                    n,
                ));
            }
        }
        let got = answer(&pool, "funnel_per_pipeline").await;
        got.expect_columns(&[
            "pipeline_id",
            "pipeline_name",
            "status_id",
            "status_name",
            "leads_reached",
        ]);
        let got = got.map(|a, i| {
            (
                a.int(i, "pipeline_id").unwrap(),
                a.text(i, "pipeline_name"),
                a.int(i, "status_id").unwrap(),
                a.text(i, "status_name"),
                a.int(i, "leads_reached").unwrap(),
            )
        });
        // A lead that moved counts in every stage it passed: more than the leads there now.
        let total: i64 = want.iter().map(|w| w.4).sum();
        assert!(
            total > leads.len() as i64,
            "{total} vs {} leads",
            leads.len()
        );
        assert_eq!(got, want, "funnel_per_pipeline (in funnel order)");
    }

    // (4) average time in stage: finished stays only, per stage the lead was in; the guide
    // rounds to 0.01 day, so the answer is within 0.005 day of the exact average.
    {
        let mut stays: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
        for l in &leads {
            for w in history(l).windows(2) {
                stays.entry(w[0].1).or_default().push(w[1].0 - w[0].0);
            }
        }
        let got = answer(&pool, "average_time_in_stage").await;
        got.expect_columns(&[
            "pipeline_id",
            "pipeline_name",
            "status_id",
            "status_name",
            "stays",
            "avg_days",
        ]);
        let got: BTreeMap<(i64, i64), StageAverage> = got
            .map(|a, i| {
                (
                    (
                        a.int(i, "pipeline_id").unwrap(),
                        a.int(i, "status_id").unwrap(),
                    ),
                    (
                        a.text(i, "pipeline_name"),
                        a.text(i, "status_name"),
                        a.int(i, "stays").unwrap(),
                        a.num(i, "avg_days").unwrap(),
                    ),
                )
            })
            .into_iter()
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            stays.keys().collect::<Vec<_>>(),
            "average_time_in_stage: stages"
        );
        assert!(stays.len() > 5);
        for ((p, s), d) in &stays {
            let exact = d.iter().sum::<i64>() as f64 / d.len() as f64 / DAY as f64;
            let (pn, sn, n, avg) = &got[&(*p, *s)];
            assert_eq!(
                (pn, sn, *n),
                (&pipeline_name(*p), &status_name(*p, *s), d.len() as i64)
            );
            assert!(
                (avg - exact).abs() <= 0.005 + 1e-9,
                "average_time_in_stage {p}/{s}: {avg} vs {exact}"
            );
        }
        // The moves are hours apart: some stays are short, some stages average under a day.
        assert!(stays.values().flatten().any(|&x| x < DAY));
    }

    // (5) overdue tasks per user. `is_overdue` compares with the database's now(), so the
    // expectation uses the database's clock too (read just before and after the query; the
    // simulator's clock is 12 days behind it): open live tasks whose deadline has passed.
    {
        let overdue = |now: f64| {
            let mut by: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
            for t in &tasks {
                let till = t["complete_till"].as_i64().unwrap();
                if t["is_completed"] != json!(true) && (till as f64) < now {
                    let u = t["responsible_user_id"].as_i64().unwrap();
                    let w = by.entry(u).or_insert((0, i64::MAX));
                    w.0 += 1;
                    w.1 = w.1.min(till);
                }
            }
            by.into_iter()
                .map(|(u, (n, oldest))| (u, user_name(u), n, oldest))
                .collect::<Vec<_>>()
        };
        let before = db_now(&pool).await;
        let got = answer(&pool, "overdue_tasks_per_user").await;
        let after = db_now(&pool).await;
        got.expect_columns(&[
            "responsible_user_id",
            "responsible_user_name",
            "overdue_tasks",
            "oldest_deadline",
        ]);
        let got = sorted(got.map(|a, i| {
            (
                a.int(i, "responsible_user_id").unwrap(),
                a.text(i, "responsible_user_name"),
                a.int(i, "overdue_tasks").unwrap(),
                a.time(i, "oldest_deadline").unwrap(),
            )
        }));
        let (w0, w1) = (overdue(before), overdue(after));
        assert!(!w0.is_empty());
        let open_not_due = tasks.iter().any(|t| {
            t["is_completed"] == json!(false) && t["complete_till"].as_i64().unwrap() as f64 > after
        });
        assert!(open_not_due, "some open tasks are not due yet");
        assert!(
            got == w0 || got == w1,
            "overdue_tasks_per_user: {got:?}\nwant {w0:?}"
        );
    }

    // (6) leads without contacts: live leads none of whose live contacts is linked.
    {
        let linked: BTreeSet<i64> = links.lead_contacts.iter().map(|l| l.lead_id).collect();
        let want: Vec<_> = leads
            .iter()
            .filter(|l| !linked.contains(&id(l)))
            .map(|l| {
                let (p, s) = stage(l);
                (
                    id(l),
                    l["name"].as_str().map(str::to_string),
                    pipeline_name(p),
                    status_name(p, s),
                    user_name(l["responsible_user_id"].as_i64().unwrap()),
                )
            })
            .collect();
        assert!(
            want.iter().any(|w| w.0 == orphaned_lead),
            "its only contact was deleted"
        );
        assert!(
            want.iter().any(|w| w.0 == loses_contact),
            "its only contact was unlinked"
        );
        assert!(
            want.iter().all(|w| w.0 != gains_contact),
            "it was given a contact"
        );
        let got = answer(&pool, "leads_without_contacts").await;
        got.expect_columns(&[
            "id",
            "name",
            "pipeline_name",
            "status_name",
            "responsible_user_name",
        ]);
        let got = got.map(|a, i| {
            (
                a.int(i, "id").unwrap(),
                a.text(i, "name"),
                a.text(i, "pipeline_name"),
                a.text(i, "status_name"),
                a.text(i, "responsible_user_name"),
            )
        });
        assert_eq!(got, want, "leads_without_contacts (by id)");
    }

    // (7) duplicate phones: digits of every phone of every live contact, kept where more than
    // one contact has them.
    {
        let mut by: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for ct in &contacts {
            for p in phones(ct) {
                let dg = digits(&p);
                if !dg.is_empty() {
                    by.entry(dg).or_default().insert(id(ct));
                }
            }
        }
        let want: Vec<_> = by
            .into_iter()
            .filter(|(_, cs)| cs.len() > 1)
            .map(|(p, cs)| (p, cs.len() as i64, cs.into_iter().collect::<Vec<_>>()))
            .collect();
        let ours = want
            .iter()
            .find(|w| w.0 == digits(&a_number))
            .expect("A's number is shared");
        assert_eq!(ours.2, sorted(vec![ca, cb, cc]), "D is deleted");
        // E's number twice, on E alone, is no duplicate.
        let e_phones = phones(contacts.iter().find(|x| id(x) == ce).unwrap());
        assert_eq!(e_phones.len(), 2);
        assert!(want.iter().all(|w| w.0 != digits(&e_phones[0])));
        let got = answer(&pool, "duplicate_phones").await;
        got.expect_columns(&["phone_digits", "contacts", "contact_ids"]);
        let got = sorted(got.map(|a, i| {
            (
                a.text(i, "phone_digits").unwrap(),
                a.int(i, "contacts").unwrap(),
                a.ids(i, "contact_ids"),
            )
        }));
        assert_eq!(got, want, "duplicate_phones");
    }

    // (8) won revenue by the "Lead source" option, labelled as the field's definition labels
    // the option the lead holds (by enum_id), "(not set)" for won leads without one.
    {
        let def = r.fields[Entity::Leads.index()]
            .iter()
            .find(|f| f.name == LEAD_SOURCE)
            .expect("the account has a Lead source field");
        let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for l in leads.iter().filter(|l| l["status_id"] == json!(WON)) {
            let label = field_values(l, |f| f["field_id"] == json!(def.id))
                .first()
                .map(|v| {
                    let e = v["enum_id"].as_i64().unwrap();
                    def.enums
                        .iter()
                        .find(|o| o.id == e)
                        .unwrap()
                        .value
                        .to_string()
                })
                .unwrap_or_else(|| "(not set)".to_string());
            let w = want.entry(label).or_default();
            w.0 += 1;
            w.1 += price(l);
        }
        let want: Vec<_> = want.into_iter().map(|(k, (n, v))| (k, n, v)).collect();
        assert!(want.len() > 3 && want.iter().any(|w| w.0 == "(not set)"));
        let got = answer(&pool, "won_revenue_by_lead_source").await;
        got.expect_columns(&["lead_source", "won_leads", "won_revenue"]);
        let got = sorted(got.map(|a, i| {
            (
                a.text(i, "lead_source").unwrap(),
                a.int(i, "won_leads").unwrap(),
                a.money(i, "won_revenue").unwrap(),
            )
        }));
        assert_eq!(got, want, "won_revenue_by_lead_source");
    }

    // (9) leads deleted in the last 7 days, for the database's now(): the simulator's deleted
    // leads with the time of their newest lead_deleted event (the simulator's clock), kept
    // when within 7 days of the database's now. The name is the one the lead had when the
    // mirror last saw it (the dump after the first run, leads are not renamed here); the
    // tombstone never was seen, so it has none.
    {
        let mut deleted_at: BTreeMap<i64, i64> = BTreeMap::new();
        for ev in sim.events() {
            if ev.kind == "lead_deleted" {
                let at = deleted_at.entry(ev.entity_id).or_insert(ev.created_at);
                *at = (*at).max(ev.created_at);
            }
        }
        let now = db_now(&pool).await;
        let mut want: Vec<_> = sim
            .deleted_ids(Entity::Leads)
            .into_iter()
            .map(|l| (l, names0.get(&l).cloned().flatten(), deleted_at[&l]))
            .filter(|w| w.2 as f64 >= now - 7.0 * DAY as f64)
            .collect();
        want.sort_by_key(|w| (-w.2, w.0));
        let ids: BTreeSet<i64> = want.iter().map(|w| w.0).collect();
        assert!(ids.contains(&old_deleted[2]) && ids.contains(&ghost[0]));
        assert!(recent_deleted.iter().all(|l| ids.contains(l)));
        assert!(
            old_deleted[3..].iter().all(|l| !ids.contains(l)),
            "deleted 12 days ago"
        );
        assert!(want.iter().any(|w| w.0 == ghost[0] && w.1.is_none()));
        let got = answer(&pool, "leads_deleted_last_7_days").await;
        got.expect_columns(&["id", "name", "deleted_at"]);
        let got = got.map(|a, i| {
            (
                a.int(i, "id").unwrap(),
                a.text(i, "name"),
                a.time(i, "deleted_at").unwrap(),
            )
        });
        assert_eq!(got, want, "leads_deleted_last_7_days (newest first)");
    }

    // (10) lost leads by loss reason.
    {
        let mut want: BTreeMap<Option<i64>, (i64, i64)> = BTreeMap::new();
        for l in leads.iter().filter(|l| l["status_id"] == json!(LOST)) {
            let w = want.entry(l["loss_reason_id"].as_i64()).or_default();
            w.0 += 1;
            w.1 += price(l);
        }
        let want: Vec<_> = want
            .into_iter()
            .map(|(k, (n, v))| {
                let name = match k {
                    Some(k) => r
                        .loss_reasons
                        .iter()
                        .find(|x| x.0 == k)
                        .unwrap()
                        .1
                        .to_string(),
                    None => "(no reason given)".to_string(),
                };
                (k, name, n, v)
            })
            .collect();
        assert!(want.len() > 2 && want.iter().any(|w| w.0.is_none()));
        let got = answer(&pool, "lost_by_reason").await;
        got.expect_columns(&["loss_reason_id", "loss_reason", "lost_leads", "lost_value"]);
        let got = sorted(got.map(|a, i| {
            (
                a.int(i, "loss_reason_id"),
                a.text(i, "loss_reason").unwrap(),
                a.int(i, "lost_leads").unwrap(),
                a.money(i, "lost_value").unwrap(),
            )
        }));
        assert_eq!(got, want, "lost_by_reason");
    }

    // (11) live companies with their open live leads, from the leads' company links.
    {
        let company_names: BTreeMap<i64, Option<String>> = companies
            .iter()
            .map(|c| (id(c), c["name"].as_str().map(str::to_string)))
            .collect();
        let by_id: BTreeMap<i64, &Value> = leads.iter().map(|l| (id(l), l)).collect();
        let mut want: BTreeMap<i64, (i64, i64, Vec<i64>)> = BTreeMap::new();
        for &(lead, company) in &links.lead_companies {
            let Some(l) = by_id.get(&lead) else { continue };
            if !is_open(l) || !company_names.contains_key(&company) {
                continue;
            }
            let w = want.entry(company).or_default();
            w.0 += 1;
            w.1 += price(l);
            w.2.push(lead);
        }
        assert!(!want.contains_key(&gone_company));
        assert!(links
            .lead_companies
            .iter()
            .any(|(l, c)| *c == gone_company && open_now.contains(l)));
        let want: Vec<_> = want
            .into_iter()
            .map(|(c, (n, v, ls))| (c, company_names[&c].clone(), n, v, sorted(ls)))
            .collect();
        assert!(want.len() > 10);
        let got = answer(&pool, "companies_open_leads").await;
        got.expect_columns(&[
            "company_id",
            "company_name",
            "open_leads",
            "open_value",
            "lead_ids",
        ]);
        let got = sorted(got.map(|a, i| {
            (
                a.int(i, "company_id").unwrap(),
                a.text(i, "company_name"),
                a.int(i, "open_leads").unwrap(),
                a.money(i, "open_value").unwrap(),
                a.ids(i, "lead_ids"),
            )
        }));
        assert_eq!(got, want, "companies_open_leads");
    }

    // (12) win rate per pipeline: won / (won + lost) of the live leads in it, in percent; the
    // guide rounds to 0.1, so the answer is within 0.05 of the exact rate.
    {
        let mut want: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for l in &leads {
            let w = want.entry(stage(l).0).or_default();
            match stage(l).1 {
                WON => w.0 += 1,
                LOST => w.1 += 1,
                _ => {}
            }
        }
        let got = answer(&pool, "win_rate_per_pipeline").await;
        got.expect_columns(&[
            "pipeline_id",
            "pipeline_name",
            "won",
            "lost",
            "win_rate_pct",
        ]);
        let got = got.map(|a, i| {
            (
                a.int(i, "pipeline_id").unwrap(),
                a.text(i, "pipeline_name"),
                a.int(i, "won").unwrap(),
                a.int(i, "lost").unwrap(),
                a.num(i, "win_rate_pct"),
            )
        });
        assert_eq!(
            got.iter()
                .map(|g| (g.0, g.1.clone(), g.2, g.3))
                .collect::<Vec<_>>(),
            want.iter()
                .map(|(p, (w, l))| (*p, pipeline_name(*p), *w, *l))
                .collect::<Vec<_>>(),
            "win_rate_per_pipeline"
        );
        for (g, (won, lost)) in got.iter().zip(want.values()) {
            let exact = 100.0 * *won as f64 / (won + lost) as f64;
            let rate = g.4.expect("every pipeline has closed leads");
            assert!(
                (rate - exact).abs() <= 0.05 + 1e-9,
                "{}: {rate} vs {exact}",
                g.0
            );
        }
    }

    // (13) open live leads without an open live task.
    {
        let busy: BTreeSet<i64> = tasks
            .iter()
            .filter(|t| t["entity_type"] == "leads" && t["is_completed"] != json!(true))
            .filter_map(|t| t["entity_id"].as_i64())
            .collect();
        assert!(!busy.is_empty());
        let want: Vec<_> = leads
            .iter()
            .filter(|l| is_open(l) && !busy.contains(&id(l)))
            .map(|l| {
                let (p, s) = stage(l);
                (
                    id(l),
                    l["name"].as_str().map(str::to_string),
                    pipeline_name(p),
                    status_name(p, s),
                    user_name(l["responsible_user_id"].as_i64().unwrap()),
                )
            })
            .collect();
        assert!(want.len() < open_now.len());
        let got = answer(&pool, "open_leads_without_open_task").await;
        got.expect_columns(&[
            "id",
            "name",
            "pipeline_name",
            "status_name",
            "responsible_user_name",
        ]);
        let got = got.map(|a, i| {
            (
                a.int(i, "id").unwrap(),
                a.text(i, "name"),
                a.text(i, "pipeline_name"),
                a.text(i, "status_name"),
                a.text(i, "responsible_user_name"),
            )
        });
        assert_eq!(got, want, "open_leads_without_open_task (by id)");
    }

    // (14) leads and value per tag, by the tag's name in the reference data.
    {
        let tag_names: BTreeMap<i64, &str> = r.tags[Entity::Leads.index()]
            .iter()
            .map(|g| (g.id, g.name))
            .collect();
        let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for l in &leads {
            for g in l["_embedded"]["tags"].as_array().into_iter().flatten() {
                let name = tag_names[&g["id"].as_i64().unwrap()].to_string();
                let w = want.entry(name).or_default();
                w.0 += 1;
                w.1 += price(l);
            }
        }
        let want: Vec<_> = want.into_iter().map(|(k, (n, v))| (k, n, v)).collect();
        assert!(want.len() > 3);
        let got = answer(&pool, "leads_per_tag").await;
        got.expect_columns(&["tag_name", "leads", "total_price"]);
        let got = sorted(got.map(|a, i| {
            (
                a.text(i, "tag_name").unwrap(),
                a.int(i, "leads").unwrap(),
                a.money(i, "total_price").unwrap(),
            )
        }));
        assert_eq!(got, want, "leads_per_tag");
    }
    pool.close().await;
    let asked = ASKED.lock().unwrap().clone();
    assert_eq!(
        asked,
        QUERIES.into_iter().collect(),
        "every query is compared"
    );
}
