//! Parse a message and read the fields a proxy needs (top Via branch, From
//! tag, To tag, Call-ID, CSeq, Contact URI, Content-Length): sipis-parser
//! against rsip doing the same work, in the same run.
//!
//! `cargo bench -p sipis-parser --bench parse`; figures in bench/RESULTS.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rsip::prelude::*;
use sipis_parser::{parse, EMPTY_HEADER};

const MESSAGES: &[(&str, &[u8])] = &[
    (
        "invite_sdp",
        include_bytes!("../testdata/realistic/invite_sdp.sip"),
    ),
    (
        "register_auth",
        include_bytes!("../testdata/realistic/register_auth.sip"),
    ),
    (
        "401_challenge",
        include_bytes!("../testdata/realistic/401_challenge.sip"),
    ),
    (
        "200_invite_rr_sdp",
        include_bytes!("../testdata/realistic/200_invite_rr_sdp.sip"),
    ),
    ("ack", include_bytes!("../testdata/realistic/ack.sip")),
    ("bye", include_bytes!("../testdata/realistic/bye.sip")),
];

/// The proxy's fields with sipis-parser; returns a value derived from every
/// field so nothing is optimised away.
fn sipis_fields(buf: &[u8]) -> usize {
    let mut headers = [EMPTY_HEADER; 64];
    let msg = parse(buf, &mut headers).expect("parse");
    let via = msg.top_via().expect("via");
    let branch = via.branch().expect("branch");
    let from_tag = msg.from().expect("from").tag().expect("from tag");
    let to_tag = msg.to().expect("to").tag().map_or(0, <[u8]>::len);
    let call_id = msg.call_id().expect("call-id");
    let cseq = msg.cseq().expect("cseq");
    let contact = match msg.contacts().next() {
        Some(c) => c.expect("contact").addr().map_or(0, |a| a.uri.raw.len()),
        None => 0,
    };
    let cl = msg.content_length().unwrap_or(0);
    branch.len()
        + from_tag.len()
        + to_tag
        + call_id.len()
        + cseq.seq as usize
        + contact
        + cl as usize
}

/// The same fields with rsip.
fn rsip_fields(buf: &[u8]) -> usize {
    let msg = rsip::SipMessage::try_from(buf).expect("parse");
    let via = msg.via_header().expect("via").typed().expect("via typed");
    let branch = via.branch().expect("branch").to_string();
    let from = msg
        .from_header()
        .expect("from")
        .typed()
        .expect("from typed");
    let from_tag = from.tag().expect("from tag").to_string();
    let to = msg.to_header().expect("to").typed().expect("to typed");
    let to_tag = to.tag().map_or(0, |t| t.to_string().len());
    let call_id = msg.call_id_header().expect("call-id").value().to_string();
    let cseq = msg.cseq_header().expect("cseq").seq().expect("seq");
    let contact = match msg.contact_header() {
        Ok(c) => c.uri().expect("contact uri").to_string().len(),
        Err(_) => 0,
    };
    let cl = msg
        .headers()
        .iter()
        .find_map(|h| match h {
            rsip::Header::ContentLength(l) => Some(l.length().expect("length")),
            _ => None,
        })
        .unwrap_or(0);
    branch.len() + from_tag.len() + to_tag + call_id.len() + cseq as usize + contact + cl as usize
}

fn bench(c: &mut Criterion) {
    // Both parsers must agree on what they read, or the comparison is void.
    for (name, m) in MESSAGES {
        assert_eq!(sipis_fields(m), rsip_fields(m), "{name}: parsers disagree");
    }

    let mut mix = c.benchmark_group("proxy_fields/mix");
    mix.throughput(Throughput::Elements(MESSAGES.len() as u64));
    mix.bench_function("sipis", |b| {
        b.iter(|| {
            MESSAGES
                .iter()
                .map(|(_, m)| sipis_fields(black_box(m)))
                .sum::<usize>()
        })
    });
    mix.bench_function("rsip", |b| {
        b.iter(|| {
            MESSAGES
                .iter()
                .map(|(_, m)| rsip_fields(black_box(m)))
                .sum::<usize>()
        })
    });
    mix.finish();

    for (name, m) in MESSAGES {
        let mut g = c.benchmark_group(format!("proxy_fields/{name}"));
        g.throughput(Throughput::Bytes(m.len() as u64));
        g.bench_function("sipis", |b| b.iter(|| sipis_fields(black_box(m))));
        g.bench_function("rsip", |b| b.iter(|| rsip_fields(black_box(m))));
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
