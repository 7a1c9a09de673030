//! The per-stream cursor as stored in `sync_state.cursor`: what a walk has proven stored.
//!
//! Everything with `updated_at <= through` is stored, except inside the open `windows`. A
//! window is a *closed* range of `updated_at`: its upper end lies at least `lag` seconds
//! behind the server's clock at the run that opened it, so no entity can enter it; an entity
//! edited again leaves it (its new `updated_at` is newer) and is taken by a later run. So a
//! window's list can only shrink while it is walked. [`Position`] says how far each window's
//! walk has come, with exactly the data that walk needs.
//!
//! The stored form is versioned. Version 1 (a bag of optional fields with sentinels) still
//! loads: [`StoredCursor::into_current`] migrates it.

use serde::{Deserialize, Serialize};

/// What is stored in `sync_state.cursor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum StoredCursor {
    #[serde(rename = "1")]
    V1(v1::Cursor),
    #[serde(rename = "2")]
    V2(Cursor),
}

impl StoredCursor {
    /// The cursor in today's form.
    pub fn into_current(self) -> Cursor {
        match self {
            StoredCursor::V1(c) => c.migrate(),
            StoredCursor::V2(c) => c,
        }
    }
}

impl From<Cursor> for StoredCursor {
    fn from(c: Cursor) -> Self {
        StoredCursor::V2(c)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Unix seconds, server time: everything with `updated_at` up to this is stored, except
    /// inside `windows`. `None` before the first run.
    pub through: Option<i64>,
    /// Windows still being walked, with their progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// How this stream is walked on this account; a walk that found a parameter not
    /// honoured remembers it, so later runs do not ask again.
    #[serde(default)]
    pub plan: Plan,
    /// The server's clock at the first answer of the run that last moved `through`. Every
    /// later edit shows a newer `updated_at`: an item older than this cannot have raced a
    /// page of a resumed window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probed_at: Option<i64>,
    /// The server's clock minus this machine's at the first answer of the last run. A server
    /// may run ahead or behind, but steadily: a run whose skew jumps from this is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<i64>,
}

impl Cursor {
    /// Everything with `updated_at` up to this is stored (`None`: nothing is proven yet).
    pub fn synced_up_to(&self) -> Option<i64> {
        let through = self.through?;
        Some(
            self.windows
                .iter()
                .map(|w| w.from - 1)
                .fold(through, i64::min),
        )
    }
}

/// How a stream is walked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "walk", rename_all = "snake_case")]
pub enum Plan {
    /// The stream's own keyset walk (see [`crate::source::WalkKind`]).
    #[default]
    Keyset,
    /// Each window by id with page offsets: the keyset's order or filter is not honoured.
    ById { because: String },
    /// From the newest down, without filters: `filter[updated_at]` is not honoured.
    Descending { because: String },
}

/// A closed window of `updated_at` (inclusive unix seconds) and how far its walk has come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub from: i64,
    pub to: i64,
    pub at: Position,
}

/// Where the walk of one window stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "walk", rename_all = "snake_case")]
pub enum Position {
    /// Keyset on `updated_at`: everything in the window before `key.second` is stored.
    UpdatedAt { key: Key },
    /// Keyset on `created_at` inside the window; `None`: from the beginning.
    CreatedAt { key: Option<Key> },
    /// A crowded `updated_at` second (too many entities for the keyset to pass) and the
    /// seconds between the keyset's position and it, walked by id with page offsets: the
    /// page that found the crowd does not prove what lies before it unless the API sorted
    /// it, and the walk by id proves its own order. Everything in the window before `since`
    /// is stored; when `[since, second]` is done, the keyset goes on after `second`.
    UpdatedSecond {
        since: i64,
        second: i64,
        by_id: ById,
    },
    /// The same for a crowded `created_at` second inside the window (`since: None`: from
    /// the first `created_at`); then the `created_at` keyset goes on after it.
    CreatedSecond {
        since: Option<i64>,
        second: i64,
        by_id: ById,
    },
    /// The whole window by id with page offsets (the fallback when a keyset's parameters
    /// are not honoured).
    ById { by_id: ById },
    /// The whole window from the newest entity down, without filters (the fallback when
    /// `filter[updated_at]` is not honoured).
    Descending { floor: Option<Key>, offset: u64 },
}

/// A keyset position: every entity whose key is below `second` is stored, and so are the
/// ones at `second` whose ids are in `seen` (ascending walks). For [`Position::Descending`]
/// it reads the other way: every entity above `second` is stored, and those in `seen` at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub second: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<i64>,
}

impl Key {
    pub fn at(second: i64) -> Key {
        Key {
            second,
            seen: Vec::new(),
        }
    }
}

/// Progress of a walk by id over a closed list (pages chosen by offset).
///
/// Every entity of the list with id up to `tail` is stored; `next_offset` is where the item
/// after `tail` stood in the list when last seen (the list can only shrink, so it stands
/// there or earlier now).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ById {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<i64>,
    #[serde(default)]
    pub next_offset: u64,
    /// Which range ends the walk asks for exactly (known inclusive), fixed when the walk by
    /// offset starts: its offsets count in that one list, and a walk resumed by a later run
    /// must ask for the same list, not one that learned a bound meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactEnds>,
}

/// Range ends known to be inclusive, asked for exactly rather than one second wider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExactEnds {
    pub updated_from: bool,
    pub updated_to: bool,
    pub created_from: bool,
    pub created_to: bool,
}

/// The first stored form, kept to load cursors written by earlier versions.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    use super::{Key, Position, Window};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Cursor {
        /// -1 before the first run.
        pub watermark: i64,
        #[serde(default)]
        pub pending: Vec<Segment>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Segment {
        pub from: i64,
        pub to: i64,
        /// `Some(-1)`: a `created_at` walk from the beginning.
        #[serde(default)]
        pub created_from: Option<i64>,
        #[serde(default)]
        pub seen: Vec<i64>,
        /// A page-number pass over one second; its state is not carried over.
        #[serde(default)]
        pub second: Option<serde_json::Value>,
    }

    impl Cursor {
        /// Today's form. A segment keeps its progress where the meaning is the same (an
        /// `updated_at` keyset, a `created_at` keyset); a page-number pass over one second
        /// restarts that second (re-reading is harmless: an unchanged row is not rewritten).
        pub fn migrate(self) -> super::Cursor {
            if self.watermark < 0 {
                return super::Cursor::default();
            }
            let windows = self
                .pending
                .into_iter()
                .map(|s| {
                    let at = match (s.created_from, s.second) {
                        (None, _) => Position::UpdatedAt {
                            key: Key {
                                second: s.from,
                                seen: s.seen,
                            },
                        },
                        (Some(c), None) if c >= 0 => Position::CreatedAt {
                            key: Some(Key {
                                second: c,
                                seen: s.seen,
                            }),
                        },
                        (Some(c), Some(_)) if c >= 0 => Position::CreatedSecond {
                            since: Some(c),
                            second: c,
                            by_id: Default::default(),
                        },
                        (Some(_), _) => Position::CreatedAt { key: None },
                    };
                    Window {
                        from: s.from,
                        to: s.to,
                        at,
                    }
                })
                .collect();
            super::Cursor {
                through: Some(self.watermark),
                windows,
                plan: Default::default(),
                probed_at: None,
                clock_skew: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_v2_cursor_round_trips_with_its_version() {
        let c = Cursor {
            through: Some(500),
            windows: vec![
                Window {
                    from: 10,
                    to: 500,
                    at: Position::UpdatedAt {
                        key: Key {
                            second: 40,
                            seen: vec![7, 9],
                        },
                    },
                },
                Window {
                    from: 1,
                    to: 9,
                    at: Position::UpdatedSecond {
                        since: 3,
                        second: 5,
                        by_id: ById {
                            tail: Some(77),
                            next_offset: 250,
                            exact: Some(ExactEnds {
                                updated_from: true,
                                ..ExactEnds::default()
                            }),
                        },
                    },
                },
            ],
            plan: Plan::ById {
                because: "order[updated_at] is not honoured".into(),
            },
            probed_at: Some(800),
            clock_skew: Some(-2),
        };
        let v = serde_json::to_value(StoredCursor::from(c.clone())).unwrap();
        assert_eq!(v["version"], "2");
        assert_eq!(v["windows"][0]["at"]["walk"], "updated_at");
        let back: StoredCursor = serde_json::from_value(v).unwrap();
        assert_eq!(back.into_current(), c);
    }

    #[test]
    fn a_stored_v1_cursor_still_loads() {
        let stored = json!({
            "version": "1",
            "watermark": 1000,
            "pending": [
                {"from": 100, "to": 400, "seen": [3, 4]},
                {"from": 401, "to": 700, "created_from": -1},
                {"from": 701, "to": 900, "created_from": 55, "seen": [8]},
                {"from": 901, "to": 1000, "created_from": 60, "seen": [1, 2],
                 "second": {"page": 3, "limit": 250, "found_new": true, "last_pass_size": null}}
            ]
        });
        let c = serde_json::from_value::<StoredCursor>(stored)
            .unwrap()
            .into_current();
        assert_eq!(c.through, Some(1000));
        assert_eq!(c.plan, Plan::Keyset);
        let at: Vec<&Position> = c.windows.iter().map(|w| &w.at).collect();
        assert_eq!(
            at,
            vec![
                &Position::UpdatedAt {
                    key: Key {
                        second: 100,
                        seen: vec![3, 4]
                    }
                },
                &Position::CreatedAt { key: None },
                &Position::CreatedAt {
                    key: Some(Key {
                        second: 55,
                        seen: vec![8]
                    })
                },
                &Position::CreatedSecond {
                    since: Some(60),
                    second: 60,
                    by_id: ById::default()
                },
            ]
        );
        assert_eq!(c.synced_up_to(), Some(99));
    }

    #[test]
    fn a_v1_cursor_before_the_first_run_is_a_fresh_cursor() {
        let stored = json!({"version": "1", "watermark": -1, "pending": []});
        let c = serde_json::from_value::<StoredCursor>(stored)
            .unwrap()
            .into_current();
        assert_eq!(c, Cursor::default());
        assert_eq!(c.synced_up_to(), None);
    }
}
