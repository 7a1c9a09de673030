//! Integration tests: the daemon against the Kommo simulator and a real PostgreSQL.
//! Each test makes its own database (dropped afterwards). Tests that run a simulator take
//! turns (see `helpers::spawn`): they measure request timing against a one-second window.

mod analytics;
mod bad_input;
mod behaviours;
mod bookkeeping;
mod cli;
mod crash;
mod deletions;
mod exactness;
mod helpers;
mod oauth;
mod politeness;
mod reconcile;
mod reference;
mod schema;
mod service;
mod spacing;
mod steady_state;
