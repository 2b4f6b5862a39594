//! `sipis`, the server binary: `serve`, `mediator`, `check-config` and the
//! `account` and `device` commands (see `sipis --help`). Exit status: 0 success, 1 failure,
//! 2 bad configuration or usage.

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use sipis::config::{Config, ConfigError};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit status for a configuration with problems (clap uses 2 for usage
/// errors too).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args.config),
        Command::Mediator(args) => mediator(&args.config),
        Command::CheckConfig(args) => check_config(&args.file),
        Command::Account(args) => api_command(cli::account(args)),
        Command::Device(args) => api_command(cli::device(args)),
    }
}

/// The exit status of an admin API command; its error on stderr.
fn api_command(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads `path` and runs the file checks; every problem is printed as
/// `<path>: <problem>`.
fn load_checked(path: &Path) -> Result<Config, Vec<String>> {
    let problems: Vec<String> = match Config::load(path) {
        Ok(config) => {
            let mut problems = config.check();
            // The mediator's own look into its key files (a P-256 .p8 key,
            // a usable service-account key), for keys not already found
            // wrong by the configuration's checks.
            for (key, message) in sipis::push::mediator::check_files(&config.mediator) {
                if !problems.iter().any(|p| p.key().as_deref() == Some(&key)) {
                    problems.push(ConfigError::Invalid { key, message });
                }
            }
            if problems.is_empty() {
                return Ok(config);
            }
            problems.iter().map(ConfigError::to_string).collect()
        }
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    };
    Err(problems
        .into_iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect())
}

fn report(problems: &[String]) -> ExitCode {
    let n = problems.len();
    eprintln!(
        "{n} problem{} in the configuration:",
        if n == 1 { "" } else { "s" }
    );
    for p in problems {
        eprintln!("{p}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn check_config(path: &Path) -> ExitCode {
    match load_checked(path) {
        Ok(config) => {
            println!("ok: {}", config.summary());
            ExitCode::SUCCESS
        }
        Err(problems) => report(&problems),
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match load_checked(path) {
        Ok(c) => c,
        Err(problems) => return report(&problems),
    };
    let level = init_logging(&config);
    let n = config.shard_count();
    // The start banner goes to the log (journald, a file), not only to a
    // terminal.
    tracing::info!(
        "sipis {}: starting {n} shard{}: {}",
        env!("CARGO_PKG_VERSION"),
        if n == 1 { "" } else { "s" },
        config.summary(),
    );
    if config.mediator.in_process {
        tracing::info!(
            "push mediator in process on {} (this node calls it directly)",
            config.mediator.listen
        );
    }
    let path = path.to_path_buf();
    let reload = move |server: &sipis::runtime::Server| match load_checked(&path) {
        // SIGHUP: what can change without a restart.
        Ok(new) => {
            let lvl = new.log.level.as_str();
            match level(lvl) {
                Ok(()) => tracing::info!("SIGHUP: {}: log level {lvl}", path.display()),
                Err(e) => tracing::warn!("SIGHUP: log level not changed: {e}"),
            }
            server.reload_with(&new);
        }
        Err(problems) => tracing::error!(
            "SIGHUP: {} refused, nothing reloaded: {}",
            path.display(),
            problems.join("; ")
        ),
    };
    match sipis::runtime::serve_with(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sipis mediator`: only the push mediator, until SIGTERM/SIGINT.
fn mediator(path: &Path) -> ExitCode {
    let config = match load_checked(path) {
        Ok(c) => c,
        Err(problems) => return report(&problems),
    };
    let m = &config.mediator;
    if m.apns.is_none() && m.fcm.is_none() {
        return report(&[format!(
            "{}: mediator: needs [mediator.apns] or [mediator.fcm]: the mediator would \
             have nothing to push to",
            path.display()
        )]);
    }
    let _level = init_logging(&config);
    match run_mediator(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_mediator(config: &Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let m = &config.mediator;
    let handle = sipis::push::mediator::start(m)?;
    let services: Vec<&str> = [("APNs", m.apns.is_some()), ("FCM", m.fcm.is_some())]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
    println!(
        "sipis {} push mediator ({}) on {}",
        env!("CARGO_PKG_VERSION"),
        services.join(", "),
        handle.local_addr()
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("push mediator shutting down");
    handle.shutdown();
    Ok(())
}

/// Sets the log level while running (SIGHUP).
type LevelReload = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// `tracing` to stderr at `[log] level`, as text or JSON lines; `RUST_LOG`
/// overrides the level for debugging. Colours only on a terminal (and not
/// with `NO_COLOR`): a log file or journald gets plain text. Returns how to
/// change the level later.
fn init_logging(config: &Config) -> LevelReload {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        sipis::config::LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = builder.try_init();
            Box::new(move |level| {
                handle
                    .reload(EnvFilter::new(level))
                    .map_err(|e| e.to_string())
            })
        }
        sipis::config::LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = builder.try_init();
            Box::new(move |level| {
                handle
                    .reload(EnvFilter::new(level))
                    .map_err(|e| e.to_string())
            })
        }
    }
}
