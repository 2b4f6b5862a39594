//! The command line: clap definitions and the account commands, which are
//! a small client of a running server's admin API (`src/http`).

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use sipis::config::{Config, DEFAULT_CONFIG_PATH};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable that overrides the admin token of the configuration
/// (so it need not appear on a command line, where `ps` shows it).
pub const TOKEN_ENV: &str = "SIPIS_ADMIN_TOKEN";

#[derive(Debug, Parser)]
#[command(
    name = "sipis",
    version,
    about = "sipis — SIP Instance Server: keeps sleeping mobile softphones reachable",
    long_about = "sipis — SIP Instance Server: keeps sleeping mobile softphones reachable.\n\n\
        It registers at each user's VoIP provider on the phone's behalf, wakes the phone \
        with a push when a call arrives and relays the call to it.\n\n\
        Exit status: 0 success, 1 failure (server or admin API), 2 bad configuration \
        or usage.",
    after_help = "Example configuration with every key and its default: tuning/sipis.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: load and validate the configuration, then start one
    /// shard per core
    #[command(long_about = "Run the server.\n\n\
        Loads and validates the configuration (the same checks as check-config, \
        exit status 2 if any fails), prints which shards and ports start, then runs \
        until stopped. The phones' port (server.sip_port) is shared by every shard \
        (SO_REUSEPORT); shard i also listens on sip_port + 1 + i for its upstream \
        traffic.")]
    Serve(ServeArgs),

    /// Run only the push mediator ([mediator] of the configuration)
    #[command(long_about = "Run only the push mediator.\n\n\
        Loads and validates the configuration (the same checks as check-config, \
        exit status 2 if any fails), loads the APNs key and the FCM service account \
        of [mediator.apns] and [mediator.fcm], then serves the unified push protocol \
        (POST /push, GET /health, GET /metrics) on mediator.listen until SIGTERM or \
        SIGINT. sipis instances point push.mediator_url at it. `sipis serve` runs the \
        same mediator in its own process when mediator.in_process is true.")]
    Mediator(ServeArgs),

    /// Validate a configuration file without starting anything
    #[command(
        long_about = "Validate a configuration file without starting anything.\n\n\
        Checks every key (unknown keys, types, ranges, keys that must go together) and \
        the files it names: TLS certificate and key readable, token file readable, \
        data directory writable or creatable, the APNs .p8 key a P-256 PKCS#8 key, the \
        FCM service account complete with a usable RSA key. Prints \"ok: <summary>\" and exits 0, or \
        lists every problem, each naming its key, and exits 2. File access is checked \
        as the user running it: `sudo -u sipis sipis check-config FILE` sees what the \
        service will see."
    )]
    CheckConfig(CheckConfigArgs),

    /// Manage upstream accounts through a running server's admin API
    #[command(
        long_about = "Manage upstream accounts through a running server's admin API.\n\n\
        The API address defaults to http(s)://<admin.listen> of the configuration \
        (a wildcard listen address becomes loopback), the bearer token to admin.token \
        or admin.token_file; the environment variable SIPIS_ADMIN_TOKEN overrides it. \
        Errors of the API are printed and the exit status is 1."
    )]
    Account(AccountArgs),

    /// Manage an account's push devices through a running server's admin API
    #[command(
        long_about = "Manage an account's push devices through a running server's admin API.\n\n\
        A device is a phone's push target (RFC 8599: provider, prid, param) under a name \
        unique within its account. Phones registering with pn-* parameters create their \
        own; these commands list, set and remove them. Address, token and errors as for \
        `sipis account`."
    )]
    Device(DeviceArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file to check
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// How to reach the admin API (shared by `account` and `device`).
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Configuration file giving the admin address and token [default:
    /// /etc/sipis/sipis.toml, if it exists]
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Admin API base URL, e.g. http://127.0.0.1:8080 [default: from admin.listen]
    #[arg(long, value_name = "URL", global = true)]
    pub admin: Option<String>,

    /// Print the API's JSON instead of a summary or table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AccountArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    #[command(subcommand)]
    pub action: AccountCommand,
}

#[derive(Debug, Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    #[command(subcommand)]
    pub action: DeviceCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List an account's devices (GET /accounts/ID/devices)
    List {
        /// Account id, as `account list` shows it
        account: u64,
    },
    /// Create or replace a device (PUT /accounts/ID/devices/NAME)
    Put(PutDeviceArgs),
    /// Remove a device (DELETE /accounts/ID/devices/NAME); calls no longer
    /// push it
    Remove {
        /// Account id
        account: u64,
        /// Device name
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct PutDeviceArgs {
    /// Account id
    pub account: u64,
    /// Device name: 1 to 128 of A-Z a-z 0-9 - . _ ~ : @ +
    pub name: String,
    /// Push service (RFC 8599 pn-provider)
    #[arg(long, value_parser = ["apns", "fcm", "webpush"])]
    pub provider: String,
    /// Push token (pn-prid)
    #[arg(long)]
    pub prid: String,
    /// pn-param: APNs <TeamID>.<bundle id>(.voip), FCM project id
    #[arg(long)]
    pub param: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Provision an account (POST /accounts); prints its id, Contact token
    /// and registration state
    Add(AddArgs),
    /// List accounts by id, a page at a time (GET /accounts)
    List(ListArgs),
    /// Show one account, its registration state and its devices
    /// (GET /accounts/ID, GET /accounts/ID/devices)
    Show {
        /// Account id, as `account list` shows it
        id: u64,
    },
    /// Change an account's fields (PATCH /accounts/ID); only those given
    /// change. A new password, registrar or expiry registers it afresh
    Update(UpdateArgs),
    /// Stop registering an account and calling its phones; kept with its
    /// devices (PATCH /accounts/ID {"enabled":false})
    Disable {
        /// Account id
        id: u64,
    },
    /// Register an account again after `disable` (PATCH /accounts/ID
    /// {"enabled":true})
    Enable {
        /// Account id
        id: u64,
    },
    /// Remove an account (DELETE /accounts/ID); sipis unregisters it first
    Remove {
        /// Account id, as `account list` shows it
        id: u64,
    },
    /// Bulk-provision accounts from a CSV file (POST /accounts/import,
    /// text/csv); "-" reads standard input. All or nothing
    Import {
        /// CSV file, with the columns the admin API documents
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
        /// A row whose AOR is already provisioned: fail the whole import,
        /// skip the row, or update that account (its id and Contact token
        /// stay)
        #[arg(long, value_name = "MODE", default_value = "fail",
              value_parser = ["fail", "skip", "update"])]
        on_conflict: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").args(["password", "ha1"])))]
#[command(group(clap::ArgGroup::new("reg").args(["registrar", "no_registrar"])))]
#[command(group(clap::ArgGroup::new("proxy").args(["outbound_proxy", "no_outbound_proxy"])))]
pub struct UpdateArgs {
    /// Account id
    pub id: u64,
    /// New address of record
    #[arg(long)]
    pub aor: Option<String>,
    /// New digest user name
    #[arg(long)]
    pub auth_user: Option<String>,
    /// New digest password; "-" reads it from standard input
    #[arg(long)]
    pub password: Option<String>,
    /// New HA1 in hex instead of a password
    #[arg(long)]
    pub ha1: Option<String>,
    /// New registrar URI
    #[arg(long)]
    pub registrar: Option<String>,
    /// Remove the registrar: proxy mode, nothing registered
    #[arg(long)]
    pub no_registrar: bool,
    /// New outbound proxy URI
    #[arg(long)]
    pub outbound_proxy: Option<String>,
    /// Remove the outbound proxy
    #[arg(long)]
    pub no_outbound_proxy: bool,
    /// New binding lifetime in seconds
    #[arg(long)]
    pub expires: Option<u32>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["password", "ha1"])))]
pub struct AddArgs {
    /// Address of record, e.g. sip:alice@provider.example
    #[arg(long)]
    pub aor: String,
    /// Digest user name at the provider
    #[arg(long)]
    pub auth_user: String,
    /// Digest password; "-" reads it from the first line of standard input
    /// (a password given here is visible to `ps` and the shell history)
    #[arg(long)]
    pub password: Option<String>,
    /// HA1 in hex instead of a password (MD5: 32 digits, SHA-256: 64)
    #[arg(long)]
    pub ha1: Option<String>,
    /// Registrar URI, e.g. sip:provider.example; leave out for proxy mode
    /// (the provider routes calls to sipis, nothing is registered)
    #[arg(long)]
    pub registrar: Option<String>,
    /// Outbound proxy URI, written as a Route on REGISTERs
    #[arg(long)]
    pub outbound_proxy: Option<String>,
    /// Binding lifetime in seconds [default: the server's]
    #[arg(long)]
    pub expires: Option<u32>,
    /// Create it disabled (kept, not registered)
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only accounts with an id greater than this
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub after: u64,
    /// At most this many (the server allows 1..=1000)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u32,
}

/// A client of the admin API.
struct Admin {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// Where to reach the admin API and with which token.
fn admin_client(args: &ApiArgs) -> anyhow::Result<Admin> {
    let config = match &args.config {
        Some(path) => Some(load_config(path)?),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Some(load_config(Path::new(DEFAULT_CONFIG_PATH))?)
        }
        None => None,
    };
    let base = match (&args.admin, &config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(c)) => c.admin_url(),
        (None, None) => bail!(
            "no admin API address: pass --admin URL or --config FILE \
             ({DEFAULT_CONFIG_PATH} does not exist)"
        ),
    };
    let token = match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        _ => match &config {
            Some(c) => c.admin_token()?,
            None => None,
        },
    };
    let agent = ureq::Agent::config_builder()
        // Error statuses are answers too: their `{"error": ...}` is printed.
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .user_agent(concat!("sipis-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    Ok(Admin { agent, base, token })
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| {
        let lines: Vec<String> = e.problems().iter().map(|p| format!("  {p}")).collect();
        anyhow::anyhow!("{}:\n{}", path.display(), lines.join("\n"))
    })
}

impl Admin {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let mut req = self.agent.get(self.url(path));
        for (k, v) in query {
            req = req.query(*k, v);
        }
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.call())
    }

    fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut req = self
            .agent
            .patch(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.send(body.to_string().into_bytes()))
    }

    fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut req = self
            .agent
            .put(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.send(body.to_string().into_bytes()))
    }

    fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let mut req = self.agent.delete(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.call())
    }

    fn post(
        &self,
        path: &str,
        query: &[(&str, String)],
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .agent
            .post(self.url(path))
            .header("Content-Type", content_type);
        for (k, v) in query {
            req = req.query(*k, v);
        }
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.send(body))
    }

    /// The JSON of a 2xx answer (`null` when empty), else the API's error
    /// message as the error.
    fn finish(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut resp =
            resp.with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the admin API's answer (HTTP {status})"))?;
        let json: Option<Value> = serde_json::from_str(&body).ok();
        if !(200..300).contains(&status) {
            match json
                .as_ref()
                .and_then(|j| j.get("error"))
                .and_then(Value::as_str)
            {
                Some(msg) => bail!("{msg} (HTTP {status})"),
                None => bail!(
                    "HTTP {status}: {}",
                    body.trim().chars().take(300).collect::<String>()
                ),
            }
        }
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        json.with_context(|| {
            format!("the admin API answered HTTP {status} with non-JSON: {body:.200}")
        })
    }
}

/// Runs an `account` command.
pub fn account(args: AccountArgs) -> anyhow::Result<()> {
    let admin = admin_client(&args.api)?;
    let json_out = args.api.json;
    match args.action {
        AccountCommand::Add(add) => {
            let mut body = json!({
                "aor": add.aor,
                "auth_user": add.auth_user,
                "enabled": !add.disabled,
            });
            match (add.password, add.ha1) {
                (Some(p), _) if p == "-" => body["password"] = json!(read_stdin_line()?),
                (Some(p), _) => body["password"] = json!(p),
                (None, Some(h)) => body["ha1"] = json!(h),
                (None, None) => bail!("--password or --ha1 is required"),
            }
            for (key, v) in [
                ("registrar", add.registrar),
                ("outbound_proxy", add.outbound_proxy),
            ] {
                if let Some(v) = v {
                    body[key] = json!(v);
                }
            }
            if let Some(e) = add.expires {
                body["expires"] = json!(e);
            }
            let view = admin.post(
                "/accounts",
                &[],
                "application/json",
                body.to_string().into_bytes(),
            )?;
            if json_out {
                println!("{view:#}");
            } else {
                println!(
                    "created account {} {}\n  contact token: {}\n  state: {}",
                    field(&view, "id"),
                    field(&view, "aor"),
                    field(&view, "token"),
                    state(&view)
                );
            }
        }
        AccountCommand::List(list) => {
            let answer = admin.get(
                "/accounts",
                &[
                    ("after", list.after.to_string()),
                    ("limit", list.limit.to_string()),
                ],
            )?;
            if json_out {
                println!("{answer:#}");
                return Ok(());
            }
            // `{"accounts": [...], "next_after": N}`, or a bare array.
            let (accounts, next) = match &answer {
                Value::Array(a) => (a.as_slice(), None),
                Value::Object(o) => (
                    o.get("accounts")
                        .and_then(Value::as_array)
                        .map_or(&[][..], Vec::as_slice),
                    o.get("next_after").and_then(Value::as_u64),
                ),
                _ => bail!("unexpected answer from GET /accounts: {answer}"),
            };
            print!("{}", account_table(accounts));
            if let Some(n) = next {
                eprintln!(
                    "(more: sipis account list --after {n} --limit {})",
                    list.limit
                );
            }
        }
        AccountCommand::Show { id } => {
            let view = admin.get(&format!("/accounts/{id}"), &[])?;
            let devices = admin.get(&format!("/accounts/{id}/devices"), &[])?;
            if json_out {
                println!("{:#}", json!({"account": view, "devices": devices}));
            } else {
                print!("{}", account_details(&view));
                print!("{}", device_table(devices_of(&devices)?));
            }
        }
        AccountCommand::Update(up) => {
            let mut body = json!({});
            for (key, v) in [
                ("aor", up.aor),
                ("auth_user", up.auth_user),
                ("ha1", up.ha1),
                ("registrar", up.registrar),
                ("outbound_proxy", up.outbound_proxy),
            ] {
                if let Some(v) = v {
                    body[key] = json!(v);
                }
            }
            match up.password {
                Some(p) if p == "-" => body["password"] = json!(read_stdin_line()?),
                Some(p) => body["password"] = json!(p),
                None => {}
            }
            if up.no_registrar {
                body["registrar"] = Value::Null;
            }
            if up.no_outbound_proxy {
                body["outbound_proxy"] = Value::Null;
            }
            if let Some(e) = up.expires {
                body["expires"] = json!(e);
            }
            if body.as_object().is_some_and(|o| o.is_empty()) {
                bail!(
                    "nothing to update: give --aor, --auth-user, --password, --ha1, \
                     --registrar, --no-registrar, --outbound-proxy, --no-outbound-proxy \
                     or --expires"
                );
            }
            let view = admin.patch(&format!("/accounts/{}", up.id), &body)?;
            print_account_change(json_out, "updated", &view);
        }
        AccountCommand::Disable { id } | AccountCommand::Enable { id } => {
            let enable = matches!(args.action, AccountCommand::Enable { .. });
            let view = admin.patch(&format!("/accounts/{id}"), &json!({ "enabled": enable }))?;
            print_account_change(json_out, if enable { "enabled" } else { "disabled" }, &view);
        }
        AccountCommand::Remove { id } => {
            admin.delete(&format!("/accounts/{id}"))?;
            println!("removed account {id}");
        }
        AccountCommand::Import { file, on_conflict } => {
            let csv = if file.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut v)
                    .context("reading standard input")?;
                v
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let answer = admin.post(
                "/accounts/import",
                &[("on_conflict", on_conflict)],
                "text/csv",
                csv,
            )?;
            if json_out {
                println!("{answer:#}");
            } else {
                print!("{}", import_summary(&answer));
            }
        }
    }
    Ok(())
}

/// Runs a `device` command.
pub fn device(args: DeviceArgs) -> anyhow::Result<()> {
    let admin = admin_client(&args.api)?;
    let json_out = args.api.json;
    match args.action {
        DeviceCommand::List { account } => {
            let answer = admin.get(&format!("/accounts/{account}/devices"), &[])?;
            if json_out {
                println!("{answer:#}");
            } else {
                print!("{}", device_table(devices_of(&answer)?));
            }
        }
        DeviceCommand::Put(put) => {
            let mut body = json!({ "provider": put.provider, "prid": put.prid });
            if let Some(p) = put.param {
                body["param"] = json!(p);
            }
            let path = format!(
                "/accounts/{}/devices/{}",
                put.account,
                path_segment(&put.name)
            );
            let view = admin.put(&path, &body)?;
            if json_out {
                println!("{view:#}");
            } else {
                println!(
                    "device {} of account {}: {} {}{}",
                    field(&view, "device"),
                    put.account,
                    field(&view, "provider"),
                    field(&view, "prid"),
                    match view.get("param").and_then(Value::as_str) {
                        Some(p) => format!(" ({p})"),
                        None => String::new(),
                    }
                );
            }
        }
        DeviceCommand::Remove { account, name } => {
            admin.delete(&format!(
                "/accounts/{account}/devices/{}",
                path_segment(&name)
            ))?;
            println!("removed device {name} of account {account}");
        }
    }
    Ok(())
}

/// Percent-encodes a path segment (RFC 3986 §3.3: unreserved characters
/// and `:@+` stay as they are).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@+".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_account_change(json_out: bool, what: &str, view: &Value) {
    if json_out {
        println!("{view:#}");
    } else {
        println!(
            "{what} account {} {}\n  state: {}",
            field(view, "id"),
            field(view, "aor"),
            state(view)
        );
    }
}

/// One account as `key: value` lines.
pub fn account_details(v: &Value) -> String {
    let rows = [
        ("id", field(v, "id")),
        ("aor", field(v, "aor")),
        ("auth user", field(v, "auth_user")),
        ("registrar", field(v, "registrar")),
        ("outbound proxy", field(v, "outbound_proxy")),
        ("expires", field(v, "expires")),
        ("enabled", field(v, "enabled")),
        ("contact token", field(v, "token")),
        ("state", state(v)),
    ];
    let mut out = String::new();
    for (k, val) in rows {
        out.push_str(&format!("{:<15} {val}\n", format!("{k}:")));
    }
    out
}

/// The `devices` array of a `GET /accounts/ID/devices` answer.
fn devices_of(answer: &Value) -> anyhow::Result<&[Value]> {
    answer
        .get("devices")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .with_context(|| format!("unexpected answer from the devices API: {answer}"))
}

/// The devices as an aligned table (or "no devices").
pub fn device_table(devices: &[Value]) -> String {
    if devices.is_empty() {
        return "no devices\n".to_owned();
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                field(d, "device"),
                field(d, "provider"),
                field(d, "prid"),
                field(d, "param"),
                field(d, "updated_unix"),
            ]
        })
        .collect();
    table(&["DEVICE", "PROVIDER", "PRID", "PARAM", "UPDATED"], &rows)
}

/// What an import did, one line each for created, updated and skipped.
fn import_summary(answer: &Value) -> String {
    let n = |k: &str| answer.get(k).and_then(Value::as_u64);
    let mut out = match (n("created"), n("updated"), n("skipped")) {
        (Some(c), Some(u), Some(s)) => {
            format!(
                "imported {} accounts: {c} created, {u} updated, {s} skipped\n",
                c + u
            )
        }
        _ => format!("imported {} accounts\n", field(answer, "imported")),
    };
    if let Some(aors) = answer.get("skipped_aors").and_then(Value::as_array) {
        for a in aors.iter().filter_map(Value::as_str) {
            out.push_str(&format!("  skipped (exists): {a}\n"));
        }
    }
    out
}

fn read_stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        bail!("no password on standard input");
    }
    Ok(line)
}

/// A JSON field as text, `-` if absent or null.
fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(true)) => "yes".to_owned(),
        Some(Value::Bool(false)) => "no".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// `status.state`, with the seconds it carries.
fn state(v: &Value) -> String {
    let Some(status) = v.get("status") else {
        return "-".to_owned();
    };
    let mut s = field(status, "state");
    if let Some(n) = status.get("expires_in").and_then(Value::as_u64) {
        s.push_str(&format!(" ({n}s left)"));
    }
    if let Some(n) = status.get("retry_in").and_then(Value::as_u64) {
        s.push_str(&format!(" (retry in {n}s)"));
    }
    if let Some(e) = status.get("last_error").and_then(Value::as_str) {
        s.push_str(&format!(": {e}"));
    }
    s
}

/// The accounts as an aligned text table (or "no accounts").
pub fn account_table(accounts: &[Value]) -> String {
    if accounts.is_empty() {
        return "no accounts\n".to_owned();
    }
    let header = [
        "ID",
        "AOR",
        "AUTH USER",
        "REGISTRAR",
        "EXPIRES",
        "ENABLED",
        "STATE",
    ];
    let rows: Vec<Vec<String>> = accounts
        .iter()
        .map(|a| {
            vec![
                field(a, "id"),
                field(a, "aor"),
                field(a, "auth_user"),
                field(a, "registrar"),
                field(a, "expires"),
                field(a, "enabled"),
                state(a),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// Aligned columns two spaces apart, trailing blanks trimmed.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            if i + 1 < width.len() {
                l.extend(std::iter::repeat_n(' ', width[i] - cell.chars().count()));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
