//! Hookline's in-process integration tests: one binary, one harness.

mod api;
mod dashboard;
mod delivery;
mod harness;
mod inbound;
mod operational;
mod ordering;
mod retention;
mod signing;
mod statistics;
