//! Hookline's pure domain: ids, signatures, retry schedules, response classification,
//! routing and address rules. Nothing here does IO or reads the clock: time and
//! randomness are always passed in, so every function can be table-tested.

pub mod classify;
pub mod delivery;
pub mod exact;
pub mod id;
pub mod inbound;
pub mod queue_url;
pub mod retry;
pub mod routing;
pub mod signature;
pub mod ssrf;

/// Milliseconds since the Unix epoch. The one time type of the domain.
pub type UnixMs = i64;
