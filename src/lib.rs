//! kommo-sync mirrors a Kommo CRM account into PostgreSQL, incrementally and politely.
//!
//! # Layout
//! - [`config`]: settings from `config/default.toml`, `--config` and `KOMMO_SYNC__*`; the
//!   only reader of the environment.
//! - [`source`]: what the engine needs from a CRM (pages in an `updated_at` window).
//! - [`kommo`]: the Kommo implementation of it: HTTP client, rate limit and back-off,
//!   HAL pages.
//! - [`sync`]: the source-agnostic part: cursor and walk ([`sync::cursor`]), one run of a
//!   stream ([`sync::engine`]), cron schedule ([`sync::scheduler`]).
//! - [`store`]: every SQL statement: entity upserts, custom field values, sync bookkeeping.
//! - [`tokens`]: where a source keeps its OAuth token pair (a trait the app wires in).
//! - [`metrics`] (Prometheus) and [`server`] (`/healthz`, `/readyz`, `/metrics`).
//! - [`app`]: wiring and shutdown; [`cli`]: the commands; [`demo`]: a mirror of the
//!   built-in simulator; [`telemetry`]: logs.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod kommo;
pub mod metrics;
pub mod server;
pub mod source;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tokens;
