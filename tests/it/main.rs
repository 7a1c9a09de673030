//! Integration tests: the daemon against the Kommo simulator and a real PostgreSQL.
//! Each test makes its own database (dropped afterwards), so they run in parallel.

mod bad_input;
mod cli;
mod crash;
mod exactness;
mod helpers;
mod oauth;
mod politeness;
mod schema;
mod service;
mod steady_state;
