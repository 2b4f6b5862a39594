//! A throwaway Kamailio registrar for the end-to-end tests.
//!
//! [`Kamailio::start`] writes `kamailio/registrar.cfg` (digest auth without
//! a database: user X's password is `pw-X`; in-memory usrloc) into a temp
//! dir, starts `kamailio -DD -E` (in the foreground, with its worker
//! processes: two UDP receivers) on a free UDP port of 127.0.0.1 with its
//! stderr in `<dir>/kamailio.log`, and waits for its RPC to answer.
//! [`Kamailio::start_config`] does the same with another configuration
//! template (`kamailio/provider.cfg`: registrar and proxy) and more
//! placeholders; [`check_config`] runs `kamailio -c` on one. Dropping
//! the handle stops it (SIGTERM, then SIGKILL) and removes the dir; the
//! process also gets SIGTERM if the test thread dies (`PR_SET_PDEATHSIG`).
//!
//! The test reads Kamailio's state through Kamailio's own RPC, JSON-RPC over
//! the `jsonrpcs` FIFO ([`Kamailio::rpc`]): `ul.dump` ([`Kamailio::dump`]),
//! `stats.get_statistics` ([`Kamailio::stats`]), `pv.shvGet`
//! ([`Kamailio::shv`]). Not `kamcmd`: its replies stop at 128 KB, and the
//! dump of 10 000 bindings is about 9 MB.
//!
//! Kamailio not installed: [`Kamailio::start`] panics saying how to
//! install it (the test fails, it does not skip).

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str =
    "Kamailio is not installed: run `apt-get install kamailio kamailio-tls-modules` \
     (or `bash .ci/run`, which installs every peer the end-to-end tests use)";

/// The registrar of [`Kamailio::start`].
pub const REGISTRAR_CONFIG: &str = include_str!("kamailio/registrar.cfg");

/// Where Debian (and most distributions) put the modules.
const MODULE_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/lib/kamailio/modules",
];

/// Modules a configuration loads (its `loadmodule "x.so"` lines).
fn modules_of(config: &str) -> Vec<&str> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("loadmodule"))
        .filter_map(|rest| {
            let name = rest.trim().trim_matches('"');
            name.strip_suffix(".so")
        })
        .collect()
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A running Kamailio.
pub struct Kamailio {
    child: Child,
    dir: PathBuf,
    port: u16,
    rpc_seq: u32,
    /// Its processes (`core.psx`): pid and what it does.
    procs: Vec<(u32, String)>,
}

/// One contact of the location table, as `ul.dump` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub address: String,
    pub call_id: String,
    pub cseq: u64,
    pub expires: i64,
    pub user_agent: String,
}

/// Kamailio's location table: AoR (`user@domain`) → its contacts.
pub type Location = BTreeMap<String, Vec<Binding>>;

impl Kamailio {
    /// Starts the registrar (`kamailio/registrar.cfg`); panics (with
    /// [`INSTALL_HINT`] if Kamailio is missing) if it does not answer its
    /// RPC within 20 s.
    pub fn start() -> Kamailio {
        Kamailio::start_config("registrar.cfg", REGISTRAR_CONFIG, &[])
    }

    /// Starts an instance of the configuration `template` (written to
    /// `<dir>/<name>`): `@PORT@`, `@DIR@` and `@MPATH@` are replaced as for
    /// the registrar, then each `(placeholder, value)` of `vars`.
    pub fn start_config(name: &str, template: &str, vars: &[(&str, String)]) -> Kamailio {
        Kamailio::start_config_on(free_udp_port(), name, template, vars)
    }

    /// As [`Kamailio::start_config`], on UDP port `port` (a restart of a
    /// stopped instance on its port).
    pub fn start_config_on(
        port: u16,
        name: &str,
        template: &str,
        vars: &[(&str, String)],
    ) -> Kamailio {
        let bin = find_binary().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let dir = std::env::temp_dir().join(format!(
            "sipis-kam-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create Kamailio temp dir");
        let cfg_path = write_config(&dir, port, name, template, vars);
        let log = std::fs::File::create(dir.join("kamailio.log")).expect("create Kamailio log");

        let mut cmd = Command::new(&bin);
        cmd.arg("-f")
            .arg(&cfg_path)
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            // Stay in the foreground (our child) but fork the workers (a
            // single -D would run one receiver in the main process and
            // ignore -n), log to stderr (the file).
            .args(["-DD", "-E"])
            // Debian's default allocator is a slow debugging one.
            .args(["-x", "tlsf", "-X", "tlsf"])
            // Shared 256 MB; private 128 MB per process: the jsonrpcs process
            // builds the whole ul.dump reply (10 000 bindings: a JSON tree
            // and ~9 MB of text) in private memory, which -M 32 only just
            // holds. Pages are only touched when used.
            .args(["-m", "256", "-M", "128"])
            .args(["-n", "2"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Stop Kamailio if the test dies without running Drop.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
        let mut k = Kamailio {
            child,
            dir,
            port,
            rpc_seq: 0,
            procs: Vec::new(),
        };
        k.wait_ready(Duration::from_secs(20));
        let psx = k.rpc("core.psx", &[], Duration::from_secs(10));
        k.procs = psx
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let pid = p.get("PID")?.as_u64()? as u32;
                Some((pid, p.get("DSC")?.as_str()?.to_string()))
            })
            .collect();
        assert!(!k.procs.is_empty(), "core.psx: {psx}");
        k
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Kamailio exited at start-up ({status}); log:\n{}",
                    self.log_tail(60)
                );
            }
            if self.dir.join("rpc.fifo").exists() {
                if let Ok(v) = self.try_rpc("core.version", &[], Duration::from_secs(2)) {
                    eprintln!(
                        "kamailio: {} on udp:127.0.0.1:{}, pid {}, dir {}",
                        v.as_str().unwrap_or("?").trim(),
                        self.port,
                        self.pid(),
                        self.dir.display()
                    );
                    return;
                }
            }
            if Instant::now() > end {
                panic!(
                    "Kamailio did not answer its RPC within {timeout:?}; log:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits (up to `timeout`) for `user@kam.test` to have a binding in
    /// `ul.dump`; returns its first.
    pub fn wait_binding(&mut self, user: &str, timeout: Duration) -> Binding {
        let end = Instant::now() + timeout;
        loop {
            let loc = self.dump();
            if let Some(b) = loc.get(&format!("{user}@kam.test")).and_then(|v| v.first()) {
                return b.clone();
            }
            assert!(
                Instant::now() < end,
                "{user} never registered at Kamailio: {loc:?}\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Calls a Kamailio RPC method; panics on error or after `timeout`.
    pub fn rpc(&mut self, method: &str, params: &[Value], timeout: Duration) -> Value {
        match self.try_rpc(method, params, timeout) {
            Ok(v) => v,
            Err(e) => panic!("Kamailio RPC {method}: {e}; log:\n{}", self.log_tail(40)),
        }
    }

    /// JSON-RPC over the jsonrpcs FIFO: make a reply FIFO (1 MB pipe
    /// buffer, or Kamailio's writer keeps sleeping on a full 64 KB one),
    /// open it for reading, write the request, read until Kamailio closes
    /// the reply.
    pub fn try_rpc(
        &mut self,
        method: &str,
        params: &[Value],
        timeout: Duration,
    ) -> Result<Value, String> {
        self.rpc_seq += 1;
        let name = format!("reply-{}", self.rpc_seq);
        let reply_path = self.dir.join(&name);
        let _ = std::fs::remove_file(&reply_path);
        let c_path = std::ffi::CString::new(reply_path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            return Err(format!(
                "mkfifo {}: {}",
                reply_path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let result = (|| {
            let mut reply = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&reply_path)
                .map_err(|e| format!("open reply FIFO: {e}"))?;
            // SAFETY: fcntl on an fd we own; failure only costs speed.
            unsafe { libc::fcntl(reply.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
            let req = json!({
                "jsonrpc": "2.0",
                "method": method,
                "params": params,
                "reply_name": name,
                "id": self.rpc_seq,
            });
            let mut line = serde_json::to_vec(&req).unwrap();
            line.push(b'\n');
            // Non-blocking: a Kamailio that is gone must not hang us.
            let mut fifo = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(self.dir.join("rpc.fifo"))
                .map_err(|e| format!("open rpc.fifo: {e}"))?;
            fifo.write_all(&line)
                .map_err(|e| format!("write rpc.fifo: {e}"))?;
            drop(fifo);

            let end = Instant::now() + timeout;
            let mut body = Vec::with_capacity(1 << 16);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match reply.read(&mut buf) {
                    Ok(0) if !body.is_empty() => break,
                    Ok(0) => {}
                    Ok(n) => {
                        body.extend_from_slice(&buf[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("read reply FIFO: {e}")),
                }
                if Instant::now() > end {
                    return Err(format!(
                        "no complete reply within {timeout:?} ({} bytes read)",
                        body.len()
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let v: Value = serde_json::from_slice(&body).map_err(|e| {
                format!(
                    "reply is not JSON ({e}): {:.300}",
                    String::from_utf8_lossy(&body)
                )
            })?;
            if let Some(err) = v.get("error") {
                return Err(format!("error reply: {err}"));
            }
            v.get("result")
                .cloned()
                .ok_or_else(|| format!("reply without result: {v:.300}"))
        })();
        let _ = std::fs::remove_file(&reply_path);
        result
    }

    /// Statistics by name (`group:name`), e.g. `usrloc:location_contacts`.
    pub fn stats(&mut self, names: &[&str]) -> BTreeMap<String, i64> {
        // The RPC takes bare names (or `group:` for a whole group) and
        // answers "group:name = value".
        let params: Vec<Value> = names
            .iter()
            .map(|n| json!(n.split_once(':').map_or(*n, |(_, bare)| bare)))
            .collect();
        let v = self.rpc("stats.get_statistics", &params, Duration::from_secs(10));
        let mut out = BTreeMap::new();
        for line in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Some((k, val)) = line.split_once(" = ") {
                if let Ok(n) = val.trim().parse() {
                    out.insert(k.trim().to_string(), n);
                }
            }
        }
        for n in names {
            assert!(out.contains_key(*n), "Kamailio has no statistic {n}: {v}");
        }
        out
    }

    /// One statistic.
    pub fn stat(&mut self, name: &str) -> i64 {
        self.stats(&[name])[name]
    }

    /// An integer shared variable (`$shv(name)`).
    pub fn shv(&mut self, name: &str) -> i64 {
        let v = self.rpc("pv.shvGet", &[json!(name)], Duration::from_secs(10));
        let item = match &v {
            Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        item.get("value")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("pv.shvGet {name}: unexpected reply {v}"))
    }

    /// The whole location table (`ul.dump`).
    pub fn dump(&mut self) -> Location {
        let v = self.rpc("ul.dump", &[], Duration::from_secs(60));
        parse_dump(&v).unwrap_or_else(|e| panic!("cannot read ul.dump: {e}: {v:.500}"))
    }

    /// CPU time (user + system) of Kamailio's processes in clock ticks:
    /// `(sip, rpc)`, where `rpc` is the processes serving the test's RPC
    /// (the jsonrpcs FIFO and ctl handlers) and `sip` all the others
    /// (receivers, timers, main).
    pub fn cpu_ticks(&self) -> (u64, u64) {
        let (mut sip, mut rpc) = (0, 0);
        for (pid, dsc) in &self.procs {
            let t = proc_cpu_ticks(*pid).unwrap_or(0);
            if dsc.contains("JSONRPCS") || dsc.contains("ctl handler") {
                rpc += t;
            } else {
                sip += t;
            }
        }
        (sip, rpc)
    }

    /// Kamailio's processes (`core.psx`): pid and description.
    pub fn processes(&self) -> &[(u32, String)] {
        &self.procs
    }

    /// The last `lines` lines of Kamailio's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("kamailio.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kamailio.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let main = self.pid();
        let children = children_of(main);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(main as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Children that outlived their parent (they normally exit with it).
        for pid in children {
            if proc_cpu_ticks(pid).is_some() {
                // SAFETY: pids of processes Kamailio (our child) forked.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kamailio log (last 40 lines) ---\n{}\n---",
                self.log_tail(40)
            );
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ul.dump`'s JSON: `{"Domains": [{"Domain": {"Domain": "location",
/// "AoRs": [{"Info": {"AoR": .., "Contacts": [{"Contact": {..}}]}}]}}]}`.
pub fn parse_dump(v: &Value) -> Result<Location, String> {
    let mut out = Location::new();
    let domains = v
        .get("Domains")
        .and_then(Value::as_array)
        .ok_or("no Domains")?;
    for d in domains {
        let d = d.get("Domain").ok_or("no Domain")?;
        if d.get("Domain").and_then(Value::as_str) != Some("location") {
            continue;
        }
        let Some(aors) = d.get("AoRs").and_then(Value::as_array) else {
            continue;
        };
        for a in aors {
            let info = a.get("Info").ok_or("AoRs item without Info")?;
            let aor = info
                .get("AoR")
                .and_then(Value::as_str)
                .ok_or("Info without AoR")?;
            let mut contacts = Vec::new();
            for c in info
                .get("Contacts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let c = c.get("Contact").ok_or("Contacts item without Contact")?;
                let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                contacts.push(Binding {
                    address: s("Address"),
                    call_id: s("Call-ID"),
                    cseq: c
                        .get("CSeq")
                        .and_then(Value::as_u64)
                        .ok_or("Contact without CSeq")?,
                    expires: c.get("Expires").and_then(Value::as_i64).unwrap_or(-1),
                    user_agent: s("User-Agent"),
                });
            }
            if out.insert(aor.to_string(), contacts).is_some() {
                return Err(format!("AoR {aor} listed twice"));
            }
        }
    }
    Ok(out)
}

/// Writes `template` as `<dir>/<name>` with its placeholders replaced
/// (see [`Kamailio::start_config`]); panics if Kamailio's modules or one
/// the template loads are missing.
fn write_config(
    dir: &Path,
    port: u16,
    name: &str,
    template: &str,
    vars: &[(&str, String)],
) -> PathBuf {
    let mpath = find_module_dir().unwrap_or_else(|| {
        panic!("Kamailio's modules (registrar.so, ...) not found; {INSTALL_HINT}")
    });
    for m in modules_of(template) {
        assert!(
            mpath.join(format!("{m}.so")).exists(),
            "Kamailio module {m}.so missing in {}; {INSTALL_HINT}",
            mpath.display()
        );
    }
    let mut cfg = template
        .replace("@PORT@", &port.to_string())
        .replace("@DIR@", dir.to_str().expect("utf-8 temp dir"))
        .replace("@MPATH@", mpath.to_str().expect("utf-8 module dir"));
    for (k, v) in vars {
        cfg = cfg.replace(k, v);
    }
    // Placeholders are @UPPER_CASE@; no other text of a config is (but
    // comments, which name them).
    let code = cfg
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') || l.trim_start().starts_with("#!"));
    for line in code {
        for (i, _) in line.match_indices('@') {
            let rest = &line[i + 1..];
            let len = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(rest.len());
            assert!(
                len == 0 || !rest[len..].starts_with('@'),
                "placeholder @{}@ of {name} not replaced: {line}",
                &rest[..len]
            );
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, cfg).expect("write Kamailio config");
    path
}

/// `kamailio -c -f` on `template` written as for [`Kamailio::start_config`]
/// (in a temp dir, on a free port): `Ok(output)` if Kamailio accepts it,
/// `Err(output)` if not.
pub fn check_config(name: &str, template: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let bin = find_binary().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
    let dir = std::env::temp_dir().join(format!(
        "sipis-kam-check-{}-{}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create Kamailio temp dir");
    let path = write_config(&dir, free_udp_port(), name, template, vars);
    let out = Command::new(&bin)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("kamailio -c exited with {}:\n{text}", out.status))
    }
}

/// `SIPIS_KAMAILIO` if set (a Kamailio installed elsewhere), else the
/// usual places, else `PATH`.
fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SIPIS_KAMAILIO") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let fixed = [
        "/usr/sbin/kamailio",
        "/usr/local/sbin/kamailio",
        "/usr/bin/kamailio",
    ];
    if let Some(p) = fixed.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kamailio"))
        .find(|p| p.is_file())
}

fn find_module_dir() -> Option<PathBuf> {
    if let Some(d) = MODULE_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("registrar.so").is_file())
    {
        return Some(d);
    }
    // Elsewhere: ask dpkg where the package put registrar.so.
    let out = Command::new("dpkg")
        .args(["-L", "kamailio"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("/modules/registrar.so"))
        .and_then(|l| Path::new(l).parent().map(Path::to_path_buf))
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
    s.local_addr().unwrap().port()
}

/// utime + stime of a process, in clock ticks; `None` if it is gone.
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from the text of a `/proc/.../stat` file.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`/proc/*/stat` unit).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}
