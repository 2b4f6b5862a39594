//! Registration on behalf, driven through the flow simulator: hours of
//! simulated time against a registrar that challenges, shortens expiry,
//! fails and loses packets.

mod sim;

use sim::registrar::Mode;
use sim::{Conditions, Sim, SimRegistrar};
use sipis::{
    AccountConfig, AccountSecret, Engine, EngineConfig, Event, RegError, RegStatus, Registrar,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ENGINE: &str = "127.0.0.1:5060";
const REGISTRAR: &str = "127.0.0.2:5060";

fn account(id: u64, password: &str, expires: u32) -> AccountConfig {
    AccountConfig {
        id,
        aor: format!("sip:user{id}@provider.test"),
        auth_user: format!("user{id}"),
        secret: AccountSecret::Password(password.into()),
        registrar: Some(Registrar::new(
            "sip:provider.test",
            REGISTRAR.parse().unwrap(),
            None,
        )),
        expires,
        token: format!("tok{id:08x}"),
    }
}

fn sim_with(cfg: EngineConfig) -> Sim {
    let start = Instant::now();
    let engine = Engine::new(cfg, start);
    let registrar = SimRegistrar::new(REGISTRAR.parse().unwrap(), "provider.test", start);
    Sim::new(
        engine,
        ENGINE.parse::<SocketAddr>().unwrap(),
        registrar,
        start,
    )
}

fn sim() -> Sim {
    sim_with(EngineConfig {
        via: ENGINE.into(),
        contact_host: ENGINE.into(),
        register_rate: 1000,
        register_burst: 50,
        ..EngineConfig::default()
    })
}

fn add_users(s: &mut Sim, n: u64, expires: u32) {
    for id in 1..=n {
        s.registrar
            .add_user(&format!("user{id}"), &format!("pw{id}"));
        let now = s.now;
        s.engine
            .add_account(now, account(id, &format!("pw{id}"), expires), None);
    }
}

fn aor(id: u64) -> String {
    format!("sip:user{id}@provider.test")
}

/// REGISTER arrivals at the registrar for one AOR: (seconds since start, cseq, with credentials).
fn registers(s: &Sim, id: u64) -> Vec<(f64, u32, bool)> {
    s.registrar
        .log
        .iter()
        .filter(|(_, a, _, _)| *a == aor(id))
        .map(|(t, _, c, auth)| ((*t - s.start).as_secs_f64(), *c, *auth))
        .collect()
}

#[test]
fn registers_with_digest_and_binds_the_token_contact() {
    let mut s = sim();
    add_users(&mut s, 1, 3600);
    s.run_for(Duration::from_secs(5));
    let regs = registers(&s, 1);
    // First without credentials (challenged), then with them.
    assert_eq!(
        regs.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![(1, false), (2, true)]
    );
    let live = s.registrar.live(&aor(1), s.now);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].contact, "sip:tok00000001@127.0.0.1:5060");
    assert!(matches!(
        s.engine.account_status(1),
        Some(RegStatus::Registered { granted: 3600, .. })
    ));
}

#[test]
fn refresh_happens_before_expiry_for_1h_10min_and_60s_grants() {
    for grant in [3600u32, 600, 60] {
        let mut s = sim();
        s.registrar.max_expires = grant;
        add_users(&mut s, 1, 3600);
        // Six full intervals.
        s.run_for(Duration::from_secs(u64::from(grant) * 6 + 1));
        assert!(
            s.registrar.lapses.is_empty(),
            "grant {grant}: lapses {:?}",
            s.registrar.lapses
        );
        assert_eq!(s.registrar.live(&aor(1), s.now).len(), 1, "grant {grant}");
        // One refresh per interval at least, each before the binding ended.
        let regs = registers(&s, 1);
        let creds: Vec<f64> = regs.iter().filter(|r| r.2).map(|r| r.0).collect();
        assert!(
            creds.len() >= 6,
            "grant {grant}: only {} REGISTERs",
            creds.len()
        );
        for w in creds.windows(2) {
            assert!(
                w[1] - w[0] < f64::from(grant),
                "grant {grant}: gap {} s",
                w[1] - w[0]
            );
        }
        // Refreshes re-use the nonce (nc+1): no 401 round trip after the first.
        assert_eq!(regs.iter().filter(|r| !r.2).count(), 1, "grant {grant}");
    }
}

#[test]
fn interval_too_brief_is_followed_by_register_with_min_expires() {
    let mut s = sim();
    s.registrar.min_expires = Some(1800);
    add_users(&mut s, 1, 600);
    s.run_for(Duration::from_secs(10));
    let live = s.registrar.live(&aor(1), s.now);
    assert_eq!(live.len(), 1);
    // The REGISTER after the 423 asked for Min-Expires.
    let asked: Vec<u32> = s
        .sent
        .iter()
        .filter_map(|(_, _, p)| {
            let text = std::str::from_utf8(p).ok()?;
            let line = text.lines().find(|l| l.starts_with("Expires: "))?;
            line[9..].trim().parse().ok()
        })
        .collect();
    assert_eq!(asked.first(), Some(&600));
    assert_eq!(asked.last(), Some(&1800));
    assert!(matches!(
        s.engine.account_status(1),
        Some(RegStatus::Registered { granted: 1800, .. })
    ));
}

#[test]
fn wrong_password_marks_account_failed_without_retry_storm() {
    let mut s = sim();
    s.registrar.add_user("user1", "right");
    let now = s.now;
    s.engine.add_account(now, account(1, "wrong", 3600), None);
    s.run_for(Duration::from_secs(3600));
    let regs = registers(&s, 1);
    // Challenge, one answer, rejected: two REGISTERs in an hour, not a storm.
    assert_eq!(regs.len(), 2, "{regs:?}");
    assert_eq!(
        s.engine.account_status(1),
        Some(RegStatus::Failed {
            error: RegError::Forbidden
        })
    );
    // Fixing the password revives it.
    let now = s.now;
    s.engine.update_account(now, account(1, "right", 3600));
    s.run_for(Duration::from_secs(5));
    assert!(matches!(
        s.engine.account_status(1),
        Some(RegStatus::Registered { .. })
    ));
}

#[test]
fn server_errors_back_off_exponentially_and_honour_retry_after() {
    let mut s = sim();
    s.registrar.mode = Mode::Fail(503, None);
    add_users(&mut s, 1, 3600);
    s.run_for(Duration::from_secs(1800));
    let cycles: Vec<f64> = registers(&s, 1)
        .iter()
        .filter(|r| r.2)
        .map(|r| r.0)
        .collect();
    let gaps: Vec<f64> = cycles.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    // Each gap at least half the doubled base (2 s * 2^n, jittered in its upper half), capped at 300 s.
    for (n, g) in gaps.iter().enumerate() {
        let full = (2.0 * 2f64.powi(n as i32)).min(300.0);
        assert!(
            *g >= full / 2.0 - 0.1 && *g <= full + 0.5,
            "gap {n} = {g}, expected in [{}, {full}]",
            full / 2.0
        );
    }
    assert!(matches!(
        s.engine.account_status(1),
        Some(RegStatus::Retrying {
            error: RegError::Status(503),
            ..
        })
    ));

    let mut s = sim();
    s.registrar.mode = Mode::Fail(503, Some(120));
    add_users(&mut s, 1, 3600);
    s.run_for(Duration::from_secs(200));
    let cycles: Vec<f64> = registers(&s, 1)
        .iter()
        .filter(|r| r.2)
        .map(|r| r.0)
        .collect();
    assert!(cycles.len() >= 2);
    assert!(
        cycles[1] - cycles[0] >= 120.0,
        "Retry-After ignored: {cycles:?}"
    );
}

#[test]
fn registrar_silence_times_out_and_retries_with_backoff() {
    let mut s = sim();
    s.registrar.mode = Mode::Silent;
    add_users(&mut s, 1, 3600);
    s.run_for(Duration::from_millis(32_500));
    // Timer F: the REGISTER was retransmitted (0, .5, 1.5, 3.5, 7.5, 11.5, ... every T2)
    // and the attempt failed at 32 s; the retry waits out its back-off.
    let regs = registers(&s, 1);
    assert_eq!(regs.iter().filter(|r| r.1 == 1).count(), 11, "{regs:?}");
    assert!(matches!(
        s.engine.account_status(1),
        Some(RegStatus::Retrying {
            error: RegError::Timeout,
            ..
        })
    ));
    assert_eq!(s.engine.stats().client_tx_timeouts, 1);
    s.registrar.mode = Mode::Serve;
    s.run_for(Duration::from_secs(60));
    assert!(matches!(
        s.engine.account_status(1),
        Some(RegStatus::Registered { .. })
    ));
}

#[test]
fn restart_from_saved_state_reuses_call_id_with_higher_cseq() {
    let mut s = sim();
    add_users(&mut s, 3, 3600);
    s.run_for(Duration::from_secs(10));
    let saved: Vec<_> = (1..=3)
        .map(|id| s.engine.saved_registration(id).unwrap())
        .collect();
    // The last SaveRegistration event of each account is what a store holds.
    for (i, id) in (1..=3u64).enumerate() {
        let last = s
            .events
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                Event::SaveRegistration { account, saved } if *account == id => Some(saved.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(last, saved[i]);
    }
    // A new engine (a restarted process) on the same registrar.
    let now = s.now;
    s.engine = Engine::new(
        EngineConfig {
            via: ENGINE.into(),
            contact_host: ENGINE.into(),
            seed: 99,
            ..EngineConfig::default()
        },
        now,
    );
    for (i, id) in (1..=3u64).enumerate() {
        s.engine.add_account(
            now,
            account(id, &format!("pw{id}"), 3600),
            Some(saved[i].clone()),
        );
    }
    s.run_for(Duration::from_secs(10));
    for (i, id) in (1..=3u64).enumerate() {
        let live = s.registrar.live(&aor(id), s.now);
        assert_eq!(live.len(), 1, "duplicate or missing binding for {id}");
        assert_eq!(live[0].call_id, saved[i].call_id);
        assert!(live[0].cseq > saved[i].cseq);
    }
}

#[test]
fn unregister_removes_the_binding() {
    let mut s = sim();
    add_users(&mut s, 1, 3600);
    s.run_for(Duration::from_secs(5));
    assert_eq!(s.registrar.live(&aor(1), s.now).len(), 1);
    let now = s.now;
    assert!(s.engine.unregister(now, 1));
    s.run_for(Duration::from_secs(5));
    assert!(s.registrar.live(&aor(1), s.now).is_empty());
    assert_eq!(s.engine.account_status(1), Some(RegStatus::Unregistered));
}

#[test]
fn ten_percent_loss_keeps_1000_accounts_registered_for_24_hours() {
    let mut s = sim();
    s.conditions = Conditions {
        loss: 0.10,
        duplicate: 0.02,
        delay: (Duration::from_millis(5), Duration::from_millis(80)),
    };
    s.registrar.max_expires = 600;
    add_users(&mut s, 1000, 600);
    // Let the initial registrations through (retransmissions cover the loss).
    s.run_for(Duration::from_secs(120));
    for id in 1..=1000 {
        assert_eq!(
            s.registrar.live(&aor(id), s.now).len(),
            1,
            "account {id} not bound after 2 min"
        );
    }
    s.run_for(Duration::from_secs(24 * 3600));
    assert!(
        s.registrar.lapses.is_empty(),
        "{} lapses, first {:?}",
        s.registrar.lapses.len(),
        s.registrar.lapses.first()
    );
    for id in 1..=1000 {
        assert_eq!(
            s.registrar.live(&aor(id), s.now).len(),
            1,
            "account {id} lapsed"
        );
    }
}

#[test]
fn initial_registers_of_100k_accounts_respect_the_rate_and_refreshes_stay_spread() {
    let rate = 2000;
    let mut s = sim_with(EngineConfig {
        via: ENGINE.into(),
        contact_host: ENGINE.into(),
        register_rate: rate,
        register_burst: 20,
        ..EngineConfig::default()
    });
    let n = 100_000;
    add_users(&mut s, n, 3600);
    s.run_for(Duration::from_secs(3 * 3600));
    // REGISTERs per second of simulated time, as the registrar saw them.
    let mut per_sec: BTreeMap<u64, u32> = BTreeMap::new();
    for (t, _, _, _) in &s.registrar.log {
        *per_sec.entry((*t - s.start).as_secs()).or_default() += 1;
    }
    let max = *per_sec.values().max().unwrap();
    assert!(max <= rate + 20, "peak {max}/s over the {rate}/s limit");
    // Everything bound; 2 REGISTERs each (challenge) => ~100 s at 2000/s.
    for id in (1..=n).step_by(997) {
        assert_eq!(s.registrar.live(&aor(id), s.now).len(), 1);
    }
    // Steady state (second and third hour): refreshes spread, no second
    // above a small multiple of the average.
    let steady: Vec<u32> = (3600..3 * 3600)
        .map(|sec| per_sec.get(&sec).copied().unwrap_or(0))
        .collect();
    let avg = steady.iter().sum::<u32>() as f64 / steady.len() as f64;
    let peak = *steady.iter().max().unwrap();
    // Refreshes every ~3 150 s: two per account fall in this window, each
    // one REGISTER (nonce re-used) or two (nonce expired: stale re-challenge).
    let (lo, hi) = (2.0 * n as f64 / 7200.0, 4.0 * n as f64 / 7200.0);
    assert!(
        avg >= lo && avg <= hi,
        "steady average {avg}/s outside [{lo}, {hi}]"
    );
    assert!(
        f64::from(peak) <= avg * 4.0,
        "steady-state peak {peak}/s vs average {avg}/s"
    );
    assert!(s.registrar.lapses.is_empty());
}

#[test]
fn a_registrar_that_restarts_empty_gets_every_account_back_soon_after_it_returns() {
    let mut s = sim_with(EngineConfig {
        via: ENGINE.into(),
        contact_host: ENGINE.into(),
        // The defaults: 200 REGISTERs/s, bursts of 10.
        registration: sipis::RegistrationConfig {
            keepalive: Some(Duration::from_secs(10)),
            ..Default::default()
        },
        ..EngineConfig::default()
    });
    add_users(&mut s, 1000, 3600);
    s.run_for(Duration::from_secs(30));
    let registered = |s: &Sim| {
        (1..=1000)
            .filter(|&id| {
                matches!(
                    s.engine.account_status(id),
                    Some(RegStatus::Registered { .. })
                )
            })
            .count()
    };
    assert_eq!(registered(&s), 1000);

    // The registrar goes away for a minute...
    s.registrar.mode = Mode::Silent;
    let regs_before = s.registrar.log.len();
    s.run_for(Duration::from_secs(60));
    // ...a keep-alive timed out: nobody claims a binding sipis has reason
    // to doubt, and no REGISTER storm hit the dead registrar.
    assert_eq!(registered(&s), 0, "accounts still say registered");
    assert_eq!(s.engine.stats().registrar_outages, 1);
    assert!(
        s.registrar.log.len() - regs_before < 50,
        "{} REGISTERs during the outage",
        s.registrar.log.len() - regs_before
    );
    // ...and comes back having lost every binding.
    s.registrar.bindings.clear();
    s.registrar.mode = Mode::Serve;
    let back = s.now;
    s.run_for(Duration::from_secs(15));
    let live = (1..=1000)
        .filter(|&id| !s.registrar.live(&aor(id), s.now).is_empty())
        .count();
    assert_eq!(
        live, 1000,
        "bindings at the registrar 15 s after its return"
    );
    assert_eq!(registered(&s), 1000);
    assert_eq!(s.engine.stats().registrar_recoveries, 1);
    let last = s
        .registrar
        .log
        .iter()
        .filter(|r| r.0 >= back)
        .map(|r| r.0)
        .max()
        .unwrap();
    eprintln!(
        "all 1000 registered again within {:.1} s of the registrar's return ({} OPTIONS probes)",
        (last - back).as_secs_f64(),
        s.registrar.options
    );
    assert!(last - back < Duration::from_secs(10));
}
