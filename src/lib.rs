//! sipis: SIP Instance Server.
pub use sipis_parser as parser;
