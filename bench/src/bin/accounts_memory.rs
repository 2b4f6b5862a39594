//! Resident memory of sipis's per-account state: N accounts loaded into
//! the engines of S shards plus the shared-port router, as `sipis serve`
//! holds them (the store's own cache aside).
//!
//! `cargo run --release -p sipis-bench --bin accounts_memory -- 1000000 2`

use sipis::runtime::{shard_of, Router};
use sipis::{AccountConfig, AccountSecret, Engine, EngineConfig, Registrar};
use std::time::Instant;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let shards: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let before = rss_kib();
    let now = Instant::now();
    let mut engines: Vec<Engine> = (0..shards)
        .map(|i| {
            Engine::new(
                EngineConfig {
                    via: format!("192.0.2.10:{}", 5061 + i),
                    contact_host: format!("192.0.2.10:{}", 5061 + i),
                    seed: i as u64,
                    ..EngineConfig::default()
                },
                now,
            )
        })
        .collect();
    let router = Router::new(shards, 5061);
    let registrar: std::net::SocketAddr = "192.0.2.1:5060".parse().unwrap();
    let t = Instant::now();
    for id in 1..=n {
        let cfg = AccountConfig {
            id,
            aor: format!("sip:+1415555{id:07}@voip.provider.example"),
            auth_user: format!("+1415555{id:07}"),
            secret: AccountSecret::Password("s3cr3t-Pa55w0rd".into()),
            registrar: Some(Registrar::new("sip:voip.provider.example", registrar, None)),
            expires: 3600,
            token: format!("{:016x}", id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        };
        router.insert(&cfg);
        engines[shard_of(id, shards)].add_account(now, cfg, None);
    }
    // Drain what the engines queued (the first rate-limited REGISTERs).
    for e in &mut engines {
        while e.poll_transmit().is_some() {}
        while e.poll_event().is_some() {}
    }
    let after = rss_kib();
    let per = (after - before) as f64 * 1024.0 / n as f64;
    println!(
        "accounts={n} shards={shards} load_time={:.1}s rss_before={} MiB rss_after={} MiB per_account={per:.0} B",
        t.elapsed().as_secs_f64(),
        before / 1024,
        after / 1024
    );
    std::hint::black_box(&engines);
}
