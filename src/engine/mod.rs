//! The sans-IO SIP engine: plain data structures driven by inputs that carry
//! `now`, drained through `poll_*` outputs. No sockets, no clock, no async.

pub(crate) mod digest;
pub(crate) mod wheel;
