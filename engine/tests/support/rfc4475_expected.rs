//! What RFC 4475 expects a UAS to answer to its torture messages, shared by
//! the engine's table test (`engine/tests/rfc4475.rs`) and the live-server
//! one (`tests/rfc4475_live.rs`).

/// (message, status codes expected, in order). An INVITE or REGISTER for a
/// user sipis does not serve is processed like any other: `100` + `480`
/// (no reachable device), a `401` challenge.
pub const EXPECTED: &[(&str, &[u16])] = &[
    // §3.1.1: valid messages, processed.
    // An INVITE with a To-tag: in a dialog sipis does not know (481).
    ("wsinv", &[481]),
    ("intmeth", &[501]),
    ("esc01", &[100, 480]),
    ("escnull", &[401]),
    ("esc02", &[501]),
    ("lwsdisp", &[200]),
    ("longreq", &[100, 480]),
    ("dblreq", &[401]),
    ("semiuri", &[200]),
    ("transports", &[200]),
    ("mpart01", &[501]),
    ("unreason", &[]), // a response: nothing to answer
    ("noreason", &[]),
    // §3.1.2: invalid messages, 400 (505 for the version) where routable.
    ("clerr", &[400]),
    ("quotbal", &[400]),
    ("lwsruri", &[400]),
    ("lwsstart", &[400]),
    ("trws", &[400]),
    ("badaspec", &[400]),
    ("badvers", &[505]),
    ("insuf", &[400]),
    ("mcl01", &[400]),
    // §3.3: an RFC 2543 INVITE (no branch) is a transaction all the same.
    ("inv2543", &[100, 480]),
    // §3.4: application-layer semantics.
    ("unkscm", &[416]),
    ("novelsc", &[416]),
    ("bext01", &[420]),
];
