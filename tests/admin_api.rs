//! The admin HTTP API over real TCP (and TLS) on 127.0.0.1, against a mock
//! `AdminApi` backed by a HashMap.

use sipis::http::{
    AccountList, AccountUpdate, AccountView, AdminApi, AdminConfig, AdminServer, ApiError,
    DeviceList, DeviceRequest, DeviceView, ErrorBody, Health, HttpError, ImportResult, Liveness,
    NewAccountRequest, OnConflict, Readiness, ReadyStatus, RegState, ShardsHealth, StatusView,
    StoreHealth, StoreState, TlsFiles,
};
use sipis::store::{AccountRecord, DeviceRecord};
use sipis::AccountId;
use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cr3t-admin-token";
const PASSWORD: &str = "Pa55w0rd-never-shown";
const HA1: &str = "0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------- mock API

#[derive(Default)]
struct Db {
    next_id: AccountId,
    accounts: BTreeMap<AccountId, AccountRecord>,
    devices: HashMap<AccountId, BTreeMap<String, DeviceRecord>>,
}

#[derive(Default)]
struct MockApi {
    db: Mutex<Db>,
    unhealthy: AtomicBool,
    calls: AtomicU64,
}

impl MockApi {
    fn view(rec: &AccountRecord) -> AccountView {
        let status = if rec.enabled {
            StatusView::pending()
        } else {
            StatusView::disabled()
        };
        AccountView::from_record(rec, status)
    }

    fn insert(db: &mut Db, new: NewAccountRequest) -> Result<AccountRecord, ApiError> {
        if db.accounts.values().any(|a| a.aor == new.aor) {
            return Err(ApiError::conflict(format!("aor {} exists", new.aor)));
        }
        db.next_id += 1;
        let id = db.next_id;
        let rec = new
            .into_new_account(format!("tok{id}"))
            .unwrap()
            .with_id(id);
        db.accounts.insert(id, rec.clone());
        Ok(rec)
    }
}

impl AdminApi for MockApi {
    fn create_account(&self, new: NewAccountRequest) -> Result<AccountView, ApiError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut db = self.db.lock().unwrap();
        Self::insert(&mut db, new).map(|r| Self::view(&r))
    }

    fn update_account(
        &self,
        id: AccountId,
        update: AccountUpdate,
    ) -> Result<AccountView, ApiError> {
        let mut db = self.db.lock().unwrap();
        let rec = db
            .accounts
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("no such account"))?;
        update.apply(rec);
        Ok(Self::view(rec))
    }

    fn delete_account(&self, id: AccountId) -> Result<(), ApiError> {
        let mut db = self.db.lock().unwrap();
        db.devices.remove(&id);
        db.accounts
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ApiError::not_found("no such account"))
    }

    fn get_account(&self, id: AccountId) -> Result<AccountView, ApiError> {
        if id == 666 {
            panic!("the mock panics on account 666");
        }
        if id == 503 {
            return Err(ApiError::unavailable("store unavailable"));
        }
        let db = self.db.lock().unwrap();
        db.accounts
            .get(&id)
            .map(Self::view)
            .ok_or_else(|| ApiError::not_found("no such account"))
    }

    fn list_accounts(&self, after: AccountId, limit: usize) -> Result<Vec<AccountView>, ApiError> {
        let db = self.db.lock().unwrap();
        Ok(db
            .accounts
            .range(after + 1..)
            .take(limit)
            .map(|(_, a)| Self::view(a))
            .collect())
    }

    /// `aor,auth_user,password` rows after a header line; all or nothing;
    /// an existing AOR fails, is skipped or takes the row's fields.
    fn import_accounts(
        &self,
        csv: &[u8],
        on_conflict: OnConflict,
    ) -> Result<ImportResult, ApiError> {
        let text = std::str::from_utf8(csv).map_err(|_| ApiError::bad_request("not UTF-8"))?;
        let mut rows = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .skip(1)
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 3 {
                return Err(ApiError::bad_request(format!(
                    "line {}: 3 fields expected",
                    n + 1
                )));
            }
            let req = NewAccountRequest {
                aor: f[0].into(),
                auth_user: f[1].into(),
                password: Some(f[2].into()),
                ha1: None,
                registrar: None,
                outbound_proxy: None,
                expires: 3600,
                enabled: true,
            };
            req.validate()
                .map_err(|e| ApiError::bad_request(format!("line {}: {}", n + 1, e.message)))?;
            rows.push(req);
        }
        let mut db = self.db.lock().unwrap();
        let mut scratch = Db {
            next_id: db.next_id,
            accounts: db.accounts.clone(),
            devices: HashMap::new(),
        };
        let mut result = ImportResult::default();
        for r in rows.iter().cloned() {
            let existing = scratch.accounts.values_mut().find(|a| a.aor == r.aor);
            match (existing, on_conflict) {
                (None, _) | (Some(_), OnConflict::Fail) => {
                    Self::insert(&mut scratch, r)?;
                    result.created += 1;
                }
                (Some(_), OnConflict::Skip) => {
                    result.skipped += 1;
                    result.skipped_aors.push(r.aor);
                }
                (Some(a), OnConflict::Update) => {
                    a.auth_user = r.auth_user.clone();
                    a.secret = r.secret().unwrap();
                    result.updated += 1;
                }
            }
        }
        db.next_id = scratch.next_id;
        db.accounts = scratch.accounts;
        result.imported = result.created + result.updated;
        Ok(result)
    }

    fn put_device(
        &self,
        id: AccountId,
        device: &str,
        req: DeviceRequest,
    ) -> Result<DeviceView, ApiError> {
        let mut db = self.db.lock().unwrap();
        if !db.accounts.contains_key(&id) {
            return Err(ApiError::not_found("no such account"));
        }
        let rec = req.into_record(id, device, 1_700_000_000);
        let view = DeviceView::from(&rec);
        db.devices
            .entry(id)
            .or_default()
            .insert(device.to_string(), rec);
        Ok(view)
    }

    fn delete_device(&self, id: AccountId, device: &str) -> Result<(), ApiError> {
        let mut db = self.db.lock().unwrap();
        db.devices
            .get_mut(&id)
            .and_then(|d| d.remove(device))
            .map(|_| ())
            .ok_or_else(|| ApiError::not_found("no such device"))
    }

    fn list_devices(&self, id: AccountId) -> Result<Vec<DeviceView>, ApiError> {
        let db = self.db.lock().unwrap();
        if !db.accounts.contains_key(&id) {
            return Err(ApiError::not_found("no such account"));
        }
        Ok(db
            .devices
            .get(&id)
            .map(|d| d.values().map(DeviceView::from).collect())
            .unwrap_or_default())
    }

    fn health(&self) -> Health {
        let ok = !self.unhealthy.load(Ordering::Relaxed);
        Health {
            ok,
            version: sipis::VERSION.into(),
            shards_alive: if ok { 2 } else { 1 },
            shards_total: 2,
            store_available: true,
            uptime_secs: 5,
        }
    }

    fn ready(&self) -> Readiness {
        let ok = !self.unhealthy.load(Ordering::Relaxed);
        Readiness {
            status: if ok {
                ReadyStatus::Ready
            } else {
                ReadyStatus::NotReady
            },
            version: sipis::VERSION.into(),
            uptime_secs: 5,
            shards: ShardsHealth { alive: 2, total: 2 },
            store: StoreHealth {
                state: if ok { StoreState::Up } else { StoreState::Down },
                unavailable_secs: (!ok).then_some(31),
                pending_saves: 0,
                pending_outcomes: 0,
            },
            registrars: Default::default(),
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let n = self.db.lock().unwrap().accounts.len();
        sipis::metrics::gauge(out, "sipis_accounts", "Provisioned accounts.", &[], n);
    }
}

// ------------------------------------------------------------ test client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.text()))
    }
    fn error(&self) -> String {
        self.json::<ErrorBody>().error
    }
    /// Everything the client saw, for secret checks.
    fn raw(&self) -> String {
        let mut s = format!("{}\n", self.status);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        s + &self.text()
    }
}

struct Client<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
}

fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Client { s, buf: Vec::new() }
}

fn request(method: &str, path: &str, token: Option<&str>, body: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some((ct, b)) = body {
        r.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    if let Some((_, b)) = body {
        r.extend_from_slice(b);
    }
    r
}

impl<S: Read + Write> Client<S> {
    fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).unwrap();
        self.s.flush().unwrap();
    }

    /// Reads one response; `None` if the server closed first.
    fn try_read(&mut self) -> Option<Resp> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let status = r.code.unwrap();
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while self.buf.len() < n + len {
                    if !self.fill() {
                        panic!("connection closed inside a body");
                    }
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                if status == 100 {
                    continue;
                }
                return Some(Resp {
                    status,
                    headers,
                    body,
                });
            }
            if !self.fill() {
                assert!(self.buf.is_empty(), "closed inside a response head");
                return None;
            }
        }
    }

    fn read(&mut self) -> Resp {
        self.try_read()
            .expect("connection closed before a response")
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    fn call(&mut self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Resp {
        self.send(&request(method, path, Some(TOKEN), body));
        self.read()
    }

    fn get(&mut self, path: &str) -> Resp {
        self.call("GET", path, None)
    }

    fn json(&mut self, method: &str, path: &str, json: &str) -> Resp {
        self.call(method, path, Some(("application/json", json.as_bytes())))
    }

    /// True when the server closed the connection (EOF or reset).
    fn closed(&mut self) -> bool {
        !self.fill()
    }
}

// ----------------------------------------------------------------- harness

fn config() -> AdminConfig {
    let mut cfg = AdminConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.token = Some(TOKEN.into());
    cfg
}

fn start_with(cfg: AdminConfig) -> (AdminServer, Arc<MockApi>) {
    let api = Arc::new(MockApi::default());
    let server = AdminServer::start(cfg, api.clone()).unwrap();
    (server, api)
}

fn start() -> (AdminServer, Arc<MockApi>) {
    start_with(config())
}

fn alice(n: u32) -> String {
    format!(
        r#"{{"aor":"sip:alice{n}@example.com","auth_user":"alice{n}","password":"{PASSWORD}","registrar":"sip:example.com"}}"#
    )
}

// ------------------------------------------------------------------- tests

#[test]
fn account_routes() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());

    let r = c.json("POST", "/accounts", &alice(1));
    assert_eq!(r.status, 201, "{}", r.text());
    let a: AccountView = r.json();
    assert_eq!(
        r.header("Location"),
        Some(format!("/accounts/{}", a.id).as_str())
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(a.aor, "sip:alice1@example.com");
    assert_eq!(a.auth_user, "alice1");
    assert_eq!(a.registrar.as_deref(), Some("sip:example.com"));
    assert_eq!(a.outbound_proxy, None);
    assert_eq!((a.expires, a.enabled), (3600, true));
    assert_eq!(a.token, format!("tok{}", a.id));
    assert_eq!(a.status.state, RegState::Pending);
    // The exact JSON shape.
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "aor",
            "auth_user",
            "enabled",
            "expires",
            "id",
            "outbound_proxy",
            "registrar",
            "status",
            "token"
        ]
    );
    assert_eq!(
        v["status"],
        serde_json::json!({"state":"pending","expires_in":null,"retry_in":null,"last_error":null})
    );

    let r = c.get(&format!("/accounts/{}", a.id));
    assert_eq!(r.status, 200);
    assert_eq!(r.json::<AccountView>(), a);

    // Duplicate AOR: the API's conflict.
    let r = c.json("POST", "/accounts", &alice(1));
    assert_eq!(r.status, 409);
    assert!(r.error().contains("exists"));

    // PATCH: partial, null removes the registrar, disabled shows.
    let r = c.json(
        "PATCH",
        &format!("/accounts/{}", a.id),
        r#"{"registrar":null,"enabled":false,"expires":120,"ha1":"0123456789ABCDEF0123456789ABCDEF"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let b: AccountView = r.json();
    assert_eq!(
        (b.registrar.as_deref(), b.enabled, b.expires),
        (None, false, 120)
    );
    assert_eq!(b.aor, a.aor);
    assert_eq!(b.status.state, RegState::Disabled);
    let r = c.json("PATCH", &format!("/accounts/{}", a.id), "{}");
    assert_eq!(r.status, 200);
    let r = c.json("PATCH", "/accounts/9999", r#"{"enabled":true}"#);
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "no such account");
    let r = c.json("PATCH", &format!("/accounts/{}", a.id), r#"{"expires":10}"#);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("\"expires\""), "{}", r.error());
    let r = c.json("PATCH", &format!("/accounts/{}", a.id), r#"{"aor":null}"#);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("null"), "{}", r.error());

    // Validation of POST.
    for (body, needle) in [
        (
            r#"{"aor":"sip:b@x","auth_user":"b"}"#,
            "\"password\" or \"ha1\"",
        ),
        (
            &format!(r#"{{"aor":"sip:b@x","auth_user":"b","password":"p","ha1":"{HA1}"}}"#),
            "exclusive",
        ),
        (
            r#"{"aor":"mailto:b@x","auth_user":"b","password":"p"}"#,
            "\"aor\"",
        ),
        (
            r#"{"aor":"sip:b@x","auth_user":"b","password":"p","registrar":"b@x"}"#,
            "\"registrar\"",
        ),
        (
            r#"{"aor":"sip:b@x","auth_user":"b","password":"p","expires":100000}"#,
            "\"expires\"",
        ),
        (
            r#"{"aor":"sip:b@x","auth_user":"b","password":"p","enabled":"yes"}"#,
            "invalid type",
        ),
        (r#"{"aor":"sip:b@x","auth_user":"b","password":"p""#, "EOF"),
        ("", "EOF"),
        (r#"{"auth_user":"b","password":"p"}"#, "missing field `aor`"),
    ] {
        let r = c.json("POST", "/accounts", body);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.error().contains(needle), "{body}: {}", r.error());
    }
    // Wrong media type.
    let r = c.call(
        "POST",
        "/accounts",
        Some(("application/x-www-form-urlencoded", b"a=b")),
    );
    assert_eq!(r.status, 415);

    // Ids that are not numbers are not resources.
    assert_eq!(c.get("/accounts/abc").status, 404);
    // The API's errors pass through; a panic is a 500 and the server lives on.
    let r = c.get("/accounts/503");
    assert_eq!((r.status, r.error().as_str()), (503, "store unavailable"));
    let r = c.get("/accounts/666");
    assert_eq!((r.status, r.error().as_str()), (500, "internal error"));
    assert_eq!(c.get(&format!("/accounts/{}", a.id)).status, 200);

    let r = c.call("DELETE", &format!("/accounts/{}", a.id), None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("Content-Length"), None);
    assert_eq!(c.get(&format!("/accounts/{}", a.id)).status, 404);
    assert_eq!(
        c.call("DELETE", &format!("/accounts/{}", a.id), None)
            .status,
        404
    );
    server.shutdown();
}

#[test]
fn list_pages() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    for n in 0..5 {
        assert_eq!(c.json("POST", "/accounts", &alice(n)).status, 201);
    }
    let r = c.get("/accounts?limit=2");
    assert_eq!(r.status, 200);
    let page: AccountList = r.json();
    assert_eq!(
        page.accounts.iter().map(|a| a.id).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(page.next_after, Some(2));
    let page: AccountList = c.get("/accounts?after=2&limit=2").json();
    assert_eq!(
        page.accounts.iter().map(|a| a.id).collect::<Vec<_>>(),
        [3, 4]
    );
    let page: AccountList = c.get("/accounts?after=4&limit=2").json();
    assert_eq!(page.accounts.iter().map(|a| a.id).collect::<Vec<_>>(), [5]);
    assert_eq!(page.next_after, None);
    let page: AccountList = c.get("/accounts").json();
    assert_eq!(page.accounts.len(), 5);
    assert_eq!(c.get("/accounts?limit=1000").status, 200);
    for q in ["limit=1001", "limit=0", "limit=x", "after=-1", "offset=3"] {
        let r = c.get(&format!("/accounts?{q}"));
        assert_eq!(r.status, 400, "{q}");
        let key = q.split('=').next().unwrap();
        assert!(r.error().contains(key), "{q}: {}", r.error());
    }
    server.shutdown();
}

#[test]
fn device_routes() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    let a: AccountView = c.json("POST", "/accounts", &alice(1)).json();
    let base = format!("/accounts/{}/devices", a.id);

    let r = c.get(&base);
    assert_eq!(r.status, 200);
    assert_eq!(r.json::<DeviceList>().devices, vec![]);

    let r = c.json(
        "PUT",
        &format!("{base}/iphone"),
        r#"{"provider":"apns","prid":"abc123","param":"T.com.x.voip"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d: DeviceView = r.json();
    assert_eq!(
        d,
        DeviceView {
            device: "iphone".into(),
            provider: "apns".into(),
            prid: "abc123".into(),
            param: Some("T.com.x.voip".into()),
            updated_unix: 1_700_000_000
        }
    );
    // Replace; a second one with an escaped name.
    assert_eq!(
        c.json(
            "PUT",
            &format!("{base}/iphone"),
            r#"{"provider":"fcm","prid":"zz"}"#
        )
        .status,
        200
    );
    assert_eq!(
        c.json(
            "PUT",
            &format!("{base}/pixel%3A7"),
            r#"{"provider":"fcm","prid":"p"}"#
        )
        .status,
        200
    );
    let list: DeviceList = c.get(&base).json();
    assert_eq!(list.devices.len(), 2);
    assert_eq!(list.devices[0].provider, "fcm");
    assert_eq!(list.devices[1].device, "pixel:7");

    let r = c.json(
        "PUT",
        &format!("{base}/x"),
        r#"{"provider":"gcm","prid":"p"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("\"provider\""));
    let r = c.json(
        "PUT",
        &format!("{base}/x"),
        r#"{"provider":"fcm","prid":"p","token":"t"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("unknown field `token`"), "{}", r.error());
    let r = c.json(
        "PUT",
        &format!("{base}/bad%20name"),
        r#"{"provider":"fcm","prid":"p"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("device name"));
    let r = c.json(
        "PUT",
        "/accounts/77/devices/x",
        r#"{"provider":"fcm","prid":"p"}"#,
    );
    assert_eq!(r.status, 404);
    assert_eq!(c.get("/accounts/77/devices").status, 404);

    assert_eq!(
        c.call("DELETE", &format!("{base}/iphone"), None).status,
        204
    );
    assert_eq!(
        c.call("DELETE", &format!("{base}/iphone"), None).status,
        404
    );
    assert_eq!(c.get(&base).json::<DeviceList>().devices.len(), 1);
    server.shutdown();
}

#[test]
fn import_route() {
    let (server, api) = start();
    let mut c = connect(server.local_addr());
    let csv = "aor,auth_user,password\nsip:a@x,a,pa\nsip:b@x,b,pb\n";
    let r = c.call(
        "POST",
        "/accounts/import",
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json::<ImportResult>(),
        ImportResult {
            imported: 2,
            created: 2,
            ..ImportResult::default()
        }
    );
    // All or nothing: the duplicate on line 3 stops the whole file.
    let csv = "aor,auth_user,password\nsip:c@x,c,pc\nsip:a@x,a,pa\n";
    let r = c.call(
        "POST",
        "/accounts/import",
        Some(("text/csv; charset=utf-8", csv.as_bytes())),
    );
    assert_eq!(r.status, 409);
    let r = c.call(
        "POST",
        "/accounts/import",
        Some(("text/csv", b"h\nnot-a-uri,a,p\n")),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("line 2"), "{}", r.error());
    assert_eq!(api.db.lock().unwrap().accounts.len(), 2);
    let r = c.call(
        "POST",
        "/accounts/import",
        Some(("application/json", b"[]")),
    );
    assert_eq!(r.status, 415);
    assert_eq!(c.get("/accounts/import").status, 405);

    // on_conflict=skip: the existing row stays, the new one is created.
    let csv = "aor,auth_user,password\nsip:c@x,c,pc\nsip:a@x,a2,changed\n";
    let r = c.call(
        "POST",
        "/accounts/import?on_conflict=skip",
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"imported": 1, "created": 1, "updated": 0, "skipped": 1,
                           "skipped_aors": ["sip:a@x"]})
    );
    let auth_of = |aor: &str| {
        api.db
            .lock()
            .unwrap()
            .accounts
            .values()
            .find(|a| a.aor == aor)
            .map(|a| a.auth_user.clone())
    };
    assert_eq!(auth_of("sip:a@x").as_deref(), Some("a"));
    // on_conflict=update: the existing account takes the row's fields.
    let csv = "aor,auth_user,password\nsip:a@x,a2,changed\n";
    let r = c.call(
        "POST",
        "/accounts/import?on_conflict=update",
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json::<ImportResult>();
    assert_eq!((got.imported, got.created, got.updated), (1, 0, 1));
    assert_eq!(auth_of("sip:a@x").as_deref(), Some("a2"));
    assert_eq!(api.db.lock().unwrap().accounts.len(), 3);
    let r = c.call(
        "POST",
        "/accounts/import?on_conflict=merge",
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("fail, skip, update"), "{}", r.error());
    server.shutdown();
}

#[test]
fn health_and_metrics() {
    let (server, api) = start();
    let mut c = connect(server.local_addr());
    // No token needed for the health check.
    c.send(&request("GET", "/health", None, None));
    let r = c.read();
    assert_eq!(r.status, 200);
    let h: Health = r.json();
    assert!(h.ok);
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
    // Liveness and readiness need no token either.
    c.send(&request("GET", "/health/live", None, None));
    let r = c.read();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json::<Liveness>(),
        Liveness {
            status: "live".into(),
            version: env!("CARGO_PKG_VERSION").into()
        }
    );
    c.send(&request("GET", "/health/ready", None, None));
    let r = c.read();
    assert_eq!(r.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["shards"], serde_json::json!({"alive": 2, "total": 2}));
    assert_eq!(body["store"]["state"], "up");
    assert_eq!(
        (h.shards_alive, h.shards_total, h.store_available),
        (2, 2, true)
    );
    api.unhealthy.store(true, Ordering::Relaxed);
    c.send(&request("GET", "/health", None, None));
    let r = c.read();
    assert_eq!(r.status, 503);
    assert!(!r.json::<Health>().ok);
    c.send(&request("GET", "/health/ready", None, None));
    let r = c.read();
    assert_eq!(r.status, 503);
    let ready: Readiness = r.json();
    assert_eq!(ready.status, ReadyStatus::NotReady);
    assert_eq!(ready.store.state, StoreState::Down);
    // Liveness does not follow readiness: the process still serves.
    c.send(&request("GET", "/health/live", None, None));
    assert_eq!(c.read().status, 200);
    c.send(&request(
        "POST",
        "/health",
        None,
        Some(("application/json", b"{}")),
    ));
    let r = c.read();
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET")));

    c.json("POST", "/accounts", &alice(1));
    let r = c.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    assert!(text.starts_with("# HELP sipis_accounts Provisioned accounts.\n# TYPE sipis_accounts gauge\nsipis_accounts 1\n"), "{text}");
    assert!(text.contains("sipis_admin_connections 1\n"), "{text}");
    assert!(
        text.contains("sipis_admin_responses_total{code=\"201\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("sipis_admin_responses_total{code=\"503\"} 2\n"),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE sipis_admin_responses_total counter")
            .count(),
        1
    );
    // Metrics need the token.
    c.send(&request("GET", "/metrics", None, None));
    assert_eq!(c.read().status, 401);
    server.shutdown();
}

#[test]
fn secret_never_in_any_response() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    let mut seen = String::new();
    let r = c.json("POST", "/accounts", &alice(1));
    seen += &r.raw();
    let a: AccountView = r.json();
    let r = c.json(
        "POST",
        "/accounts",
        &format!(r#"{{"aor":"sip:h@x","auth_user":"h","ha1":"{HA1}"}}"#),
    );
    assert_eq!(r.status, 201);
    seen += &r.raw();
    let csv = format!("aor,auth_user,password\nsip:csv@x,csv,{PASSWORD}x\n");
    seen += &c
        .call(
            "POST",
            "/accounts/import",
            Some(("text/csv", csv.as_bytes())),
        )
        .raw();
    for path in [
        "/accounts",
        &format!("/accounts/{}", a.id),
        "/accounts/2",
        "/accounts/3",
        "/metrics",
        "/health",
    ] {
        seen += &c.get(path).raw();
    }
    seen += &c
        .json(
            "PATCH",
            &format!("/accounts/{}", a.id),
            &format!(r#"{{"password":"{PASSWORD}2"}}"#),
        )
        .raw();
    // Errors echo nothing of the secret either.
    seen += &c.json("POST", "/accounts", &alice(1)).raw();
    seen += &c
        .json(
            "POST",
            "/accounts",
            &format!(r#"{{"aor":"x","auth_user":"h","password":"{PASSWORD}"}}"#),
        )
        .raw();
    seen += &c
        .json(
            "POST",
            "/accounts",
            &format!(
                r#"{{"aor":"sip:q@x","auth_user":"h","ha1":"{HA1}","password":"{PASSWORD}"}}"#
            ),
        )
        .raw();
    assert!(seen.contains("alice1"), "{seen}");
    assert!(!seen.contains(PASSWORD), "{seen}");
    assert!(!seen.contains(HA1), "{seen}");
    assert!(!seen.contains("\"password\":"), "{seen}");
    assert!(!seen.contains("\"ha1\":"), "{seen}");
    server.shutdown();
}

#[test]
fn bearer_token() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    c.send(&request("GET", "/accounts", None, None));
    let r = c.read();
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(r.error(), "missing bearer token");
    for auth in [
        "Bearer wrong".to_string(),
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Basic {TOKEN}"),
        "Bearer".to_string(),
        String::new(),
    ] {
        c.send(format!("GET /accounts HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n").as_bytes());
        let r = c.read();
        assert_eq!(r.status, 401, "{auth}");
        assert!(r.header("WWW-Authenticate").is_some());
    }
    c.send(format!("GET /accounts HTTP/1.1\r\nAuthorization: bearer  {TOKEN} \r\n\r\n").as_bytes());
    assert_eq!(c.read().status, 200);
    assert_eq!(c.get("/accounts").status, 200);
    // Unknown paths are not revealed without the token either.
    c.send(&request("GET", "/nope", None, None));
    assert_eq!(c.read().status, 401);
    // A refused request with an unread body closes the connection.
    c.send(&request(
        "POST",
        "/accounts",
        Some("bad"),
        Some(("application/json", &[b' '; 100_000])),
    ));
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (401, Some("close")));
    assert!(c.closed());

    // Without a token (loopback only) everything is open.
    let mut cfg = config();
    cfg.token = None;
    let (open, _) = start_with(cfg);
    let mut c = connect(open.local_addr());
    c.send(&request("GET", "/accounts", None, None));
    assert_eq!(c.read().status, 200);
    open.shutdown();
    server.shutdown();
}

#[test]
fn unknown_paths_and_methods() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    for path in [
        "/",
        "/nope",
        "/accounts/",
        "/accounts/1/devices/a/b",
        "/Accounts",
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.error().contains("no such resource"));
    }
    for (method, path, allow) in [
        ("PUT", "/accounts", "GET, POST"),
        ("POST", "/accounts/1", "GET, PATCH, DELETE"),
        ("DELETE", "/metrics", "GET"),
        ("GET", "/accounts/1/devices/x", "PUT, DELETE"),
        ("POST", "/accounts/1/devices", "GET"),
        ("HEAD", "/accounts", "GET, POST"),
    ] {
        c.send(&request(method, path, Some(TOKEN), None));
        let r = c.read();
        assert_eq!(
            (r.status, r.header("Allow")),
            (405, Some(allow)),
            "{method} {path}"
        );
    }
    assert_eq!(c.get("/accounts/1/devices/%zz").status, 400);
    // Still one healthy connection after all that.
    assert_eq!(c.get("/accounts").status, 200);
    server.shutdown();
}

#[test]
fn keep_alive_100_requests_on_one_connection() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    for n in 0..100 {
        let r = if n % 2 == 0 {
            c.json("POST", "/accounts", &alice(n))
        } else {
            c.get("/accounts?limit=1")
        };
        assert_eq!(r.status, if n % 2 == 0 { 201 } else { 200 }, "request {n}");
        assert_eq!(r.header("Connection"), None);
    }
    let page: AccountList = c.get("/accounts?limit=1000").json();
    assert_eq!(page.accounts.len(), 50);
    server.shutdown();
}

#[test]
fn pipelined_requests_answered_in_order() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    let mut batch = Vec::new();
    batch.extend(request(
        "POST",
        "/accounts",
        Some(TOKEN),
        Some(("application/json", alice(1).as_bytes())),
    ));
    batch.extend(request("GET", "/accounts/1", Some(TOKEN), None));
    batch.extend(request("GET", "/nope", Some(TOKEN), None));
    batch.extend(request(
        "PUT",
        "/accounts/1/devices/d",
        Some(TOKEN),
        Some(("application/json", br#"{"provider":"fcm","prid":"p"}"#)),
    ));
    batch.extend(request("GET", "/health", None, None));
    batch.extend(request("DELETE", "/accounts/1", Some(TOKEN), None));
    batch.extend(request("GET", "/accounts/1", Some(TOKEN), None));
    // One write, and byte by byte.
    c.send(&batch);
    let expect = [201, 200, 404, 200, 200, 204, 404];
    let got: Vec<u16> = (0..expect.len()).map(|_| c.read().status).collect();
    assert_eq!(got, expect);
    let mut slow = connect(server.local_addr());
    let two = [
        request("GET", "/health", None, None),
        request("GET", "/accounts", Some(TOKEN), None),
    ]
    .concat();
    for b in &two {
        slow.send(std::slice::from_ref(b));
    }
    assert_eq!(slow.read().json::<Health>().shards_total, 2);
    assert_eq!(slow.read().json::<AccountList>().accounts.len(), 0);
    // After `Connection: close` the rest of the pipeline is not answered.
    let mut c = connect(server.local_addr());
    let batch = [
        b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        request("GET", "/health", None, None),
    ]
    .concat();
    c.send(&batch);
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(c.try_read().is_none());
    server.shutdown();
}

#[test]
fn limits() {
    let mut cfg = config();
    cfg.max_body_bytes = 1024;
    cfg.max_import_bytes = 4096;
    let (server, _api) = start_with(cfg);
    let addr = server.local_addr();

    // Oversized header.
    let mut c = connect(addr);
    let big = "x".repeat(9000);
    c.send(
        format!("GET /accounts HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nX-Big: {big}\r\n\r\n")
            .as_bytes(),
    );
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (431, Some("close")));
    assert!(c.closed());
    // Too many header lines.
    let mut c = connect(addr);
    let many: String = (0..150).map(|i| format!("X-{i}: y\r\n")).collect();
    c.send(format!("GET /health HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(c.read().status, 431);

    // Oversized body, refused from its Content-Length alone.
    let mut c = connect(addr);
    c.send(format!("POST /accounts HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1025\r\n\r\n").as_bytes());
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (413, Some("close")));
    assert!(r.error().contains("1025"));
    assert!(c.closed());
    // The import route has its own, larger limit.
    let mut c = connect(addr);
    let csv = format!("aor,auth_user,password\n{}", "sip:a@x,a,p\n".repeat(200));
    assert_eq!(csv.len(), 2423);
    let r = c.call(
        "POST",
        "/accounts/import",
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(r.status, 409, "{}", r.text()); // through the limit, to the API
    let csv = "x".repeat(4097);
    assert_eq!(
        c.call(
            "POST",
            "/accounts/import",
            Some(("text/csv", csv.as_bytes()))
        )
        .status,
        413
    );

    // A body without Content-Length.
    let mut c = connect(addr);
    c.send(format!("POST /accounts HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\r\n{{}}").as_bytes());
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (411, Some("close")));
    assert!(c.closed());
    // Chunked bodies are not supported; other codings are not implemented.
    let mut c = connect(addr);
    c.send(format!("PUT /accounts/1/devices/d HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n").as_bytes());
    assert_eq!(c.read().status, 411);
    let mut c = connect(addr);
    c.send(b"POST /accounts HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_eq!(c.read().status, 501);
    // Conflicting lengths, garbage.
    let mut c = connect(addr);
    c.send(b"POST /accounts HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}");
    assert_eq!(c.read().status, 400);
    let mut c = connect(addr);
    c.send(b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n");
    let r = c.read();
    assert_eq!(r.status, 400);
    assert!(r.error().contains("malformed"));

    // A body just under the limit is fine, and `Expect: 100-continue` works.
    let mut c = connect(addr);
    let body = format!(
        r#"{{"aor":"sip:e@x","auth_user":"e","password":"{}"}}"#,
        "p".repeat(900)
    );
    c.send(format!("POST /accounts HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len()).as_bytes());
    let mut interim = [0u8; 25];
    c.s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(body.as_bytes());
    assert_eq!(c.read().status, 201);
    server.shutdown();
}

#[test]
fn unknown_json_field_names_it() {
    let (server, _api) = start();
    let mut c = connect(server.local_addr());
    let r = c.json(
        "POST",
        "/accounts",
        r#"{"aor":"sip:a@x","auth_user":"a","passwrd":"p"}"#,
    );
    assert_eq!(r.status, 400);
    let e = r.error();
    assert!(e.contains("unknown field `passwrd`"), "{e}");
    assert!(e.contains("expected one of"), "{e}");
    assert!(e.contains("line 1 column"), "{e}");
    let a: AccountView = c.json("POST", "/accounts", &alice(1)).json();
    let r = c.json(
        "PATCH",
        &format!("/accounts/{}", a.id),
        r#"{"enable":false}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("unknown field `enable`"),
        "{}",
        r.error()
    );
    let r = c.json(
        "PATCH",
        &format!("/accounts/{}", a.id),
        r#"{"expires":"60"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("invalid type: string \"60\""),
        "{}",
        r.error()
    );
    server.shutdown();
}

#[test]
fn connection_cap_answers_503() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let (server, _api) = start_with(cfg);
    let addr = server.local_addr();
    let mut a = connect(addr);
    let mut b = connect(addr);
    assert_eq!(a.get("/accounts").status, 200);
    assert_eq!(b.get("/accounts").status, 200);
    let mut c = connect(addr);
    c.send(&request("GET", "/accounts", Some(TOKEN), None));
    let r = c.read();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(r.error().contains("too many"));
    assert!(c.closed());
    // The two served connections keep working.
    assert_eq!(a.get("/health").status, 200);
    // Once one closes, a new connection is served again.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = connect(addr);
        let r = d.get("/metrics");
        if r.status == 200 {
            assert!(
                r.text().contains("sipis_admin_connections_rejected_total "),
                "{}",
                r.text()
            );
            assert!(!r
                .text()
                .contains("sipis_admin_connections_rejected_total 0\n"));
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            Instant::now() < deadline,
            "the closed connection was never released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
}

#[test]
fn idle_and_slow_connections_are_closed() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(300);
    cfg.read_timeout = Duration::from_millis(600);
    let (server, _api) = start_with(cfg);
    let addr = server.local_addr();

    // Idle after a request: closed silently, after the idle timeout.
    let mut c = connect(addr);
    assert_eq!(c.get("/health").status, 200);
    let t = Instant::now();
    assert!(c.try_read().is_none());
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // Idle from the start.
    let mut c = connect(addr);
    let t = Instant::now();
    assert!(c.try_read().is_none());
    assert!(t.elapsed() >= Duration::from_millis(250));

    // A request that started but does not finish: 408.
    let mut c = connect(addr);
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n");
    let t = Instant::now();
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (408, Some("close")));
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(c.closed());
    // Same for a body that does not arrive.
    let mut c = connect(addr);
    c.send(format!("POST /accounts HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 10\r\n\r\n{{").as_bytes());
    assert_eq!(c.read().status, 408);
    server.shutdown();
}

#[test]
fn connection_close_and_http_1_0() {
    let (server, _api) = start();
    let addr = server.local_addr();
    let mut c = connect(addr);
    c.send(
        format!(
            "GET /accounts HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(c.closed());
    let mut c = connect(addr);
    c.send(b"GET /health HTTP/1.0\r\n\r\n");
    let r = c.read();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(c.closed());
    let mut c = connect(addr);
    c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read().header("Connection"), None);
    c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read().status, 200);
    server.shutdown();
}

#[test]
fn shutdown_closes_connections_and_joins() {
    let (server, _api) = start();
    let addr = server.local_addr();
    let mut c = connect(addr);
    assert_eq!(c.get("/health").status, 200);
    let t = Instant::now();
    server.shutdown();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(c.closed());
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn refuses_to_listen_openly_without_token() {
    let api = Arc::new(MockApi::default());
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let mut cfg = AdminConfig::new(listen.parse().unwrap());
        cfg.token = None;
        let err = AdminServer::start(cfg, api.clone()).unwrap_err();
        assert!(matches!(err, HttpError::Config(_)), "{err:?}");
        assert!(err.to_string().contains("admin.token"), "{err}");
    }
    let mut cfg = AdminConfig::new("0.0.0.0:0".parse().unwrap());
    cfg.token = Some("  ".into());
    assert!(AdminServer::start(cfg.clone(), api.clone())
        .unwrap_err()
        .to_string()
        .contains("admin.token"));
    cfg.token = Some(TOKEN.into());
    let server = AdminServer::start(cfg, api.clone()).unwrap();
    assert!(server.local_addr().ip().is_unspecified());
    let mut c = connect(SocketAddr::from((
        [127, 0, 0, 1],
        server.local_addr().port(),
    )));
    assert_eq!(c.get("/accounts").status, 200);
    server.shutdown();
}

// --------------------------------------------------------------------- TLS

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sipis-admin-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rustls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[test]
fn tls_round_trip() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = temp_dir("tls");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    std::fs::write(&files.key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = config();
    cfg.tls = Some(files);
    cfg.max_connections = 1;
    let (server, _api) = start_with(cfg);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client_cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(rustls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tls_connect = || {
        let tcp = TcpStream::connect(server.local_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn =
            rustls::ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap())
                .unwrap();
        Client {
            s: rustls::StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        }
    };
    let mut c = tls_connect();
    let r = c.json("POST", "/accounts", &alice(1));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.get("/accounts");
    assert_eq!(r.status, 200);
    assert_eq!(r.json::<AccountList>().accounts.len(), 1);
    c.send(&request("GET", "/health", None, None));
    assert_eq!(c.read().status, 200);
    // Over the cap, the 503 is served over TLS too.
    let mut d = tls_connect();
    d.send(&request("GET", "/health", None, None));
    assert_eq!(d.read().status, 503);
    // Plain HTTP on the TLS port gets no HTTP answer.
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    let mut p = TcpStream::connect(server.local_addr()).unwrap();
    p.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    p.write_all(&request("GET", "/health", None, None)).unwrap();
    let mut got = Vec::new();
    let _ = p.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_file_errors_name_the_file() {
    let dir = temp_dir("tlsbad");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let other_key = dir.join("other-key.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    std::fs::write(&other_key, other.key_pair.serialize_pem()).unwrap();
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let missing = dir.join("missing.pem");
    let api = Arc::new(MockApi::default());
    let cases = [
        (missing.clone(), key.clone(), missing.clone(), "cannot read"),
        (
            cert.clone(),
            missing.clone(),
            missing.clone(),
            "cannot read",
        ),
        (
            garbage.clone(),
            key.clone(),
            garbage.clone(),
            "no CERTIFICATE",
        ),
        (
            cert.clone(),
            garbage.clone(),
            garbage.clone(),
            "no PRIVATE KEY",
        ),
        (key.clone(), key.clone(), key.clone(), "no CERTIFICATE"),
        (
            cert.clone(),
            other_key.clone(),
            other_key.clone(),
            "unusable key",
        ),
    ];
    for (cert, key, blamed, problem) in cases {
        let mut cfg = config();
        cfg.tls = Some(TlsFiles { cert, key });
        let err = AdminServer::start(cfg, api.clone()).unwrap_err();
        match &err {
            HttpError::Tls { path, problem: p } => {
                assert_eq!(path, &blamed, "{err}");
                assert!(p.contains(problem), "{err}");
            }
            e => panic!("{e:?}"),
        }
        assert!(
            err.to_string().contains(&blamed.display().to_string()),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------- a real sipis behind it

#[path = "support/postgres.rs"]
mod pg;
#[path = "support/ports.rs"]
mod ports;

/// `sipis` in this process (`Server::start`) with one shard, its admin API
/// wanting [`TOKEN`], and `store` as its `[store]` section.
fn real_server(name: &str, store: &str) -> (sipis::runtime::Server, PathBuf) {
    let dir = temp_dir(&format!("real-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = ports::free_udp_port_run(2);
    let toml = format!(
        r#"
[server]
bind = "127.0.0.1"
public_host = "127.0.0.1"
sip_port = {port}
shards = 1
data_dir = "{dir}"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"
{store}
"#,
        dir = dir.display(),
        admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    );
    let cfg = sipis::config::Config::from_toml_str(&toml).expect("valid config");
    let server = sipis::runtime::Server::start(&cfg).expect("sipis starts");
    (server, dir)
}

fn json_of(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// Polls `GET /health/ready` until `pred` holds on (status, body).
fn wait_ready(
    c: &mut Client<TcpStream>,
    within: Duration,
    what: &str,
    pred: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = Instant::now() + within;
    loop {
        c.send(&request("GET", "/health/ready", None, None));
        let r = c.read();
        let body = json_of(&r);
        if pred(r.status, &body) {
            return body;
        }
        assert!(Instant::now() < until, "{what}: last {} {body}", r.status);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn real_server_health_import_modes_and_enable_keep_devices() {
    let (server, dir) = real_server("embedded", "");
    let addr = server.admin_addr().unwrap();
    let mut c = connect(addr);

    // Live and ready, without a token; the version in each.
    c.send(&request("GET", "/health/live", None, None));
    let r = c.read();
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r)["version"], env!("CARGO_PKG_VERSION"));
    c.send(&request("GET", "/health", None, None));
    let r = c.read();
    assert_eq!(
        json_of(&r)["version"],
        env!("CARGO_PKG_VERSION"),
        "{}",
        r.text()
    );

    // A registrar nobody answers at: its account retries.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let registrar = format!("sip:{}", silent.local_addr().unwrap());
    let host = silent.local_addr().unwrap().to_string();
    let csv = format!(
        "aor,auth_user,password,registrar,expires\n\
         sip:a@x.example,a,pa,{registrar},300\n\
         sip:b@x.example,b,pb,,300\n"
    );
    let r = c.call(
        "POST",
        "/accounts/import",
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json_of(&r),
        serde_json::json!({"imported": 2, "created": 2, "updated": 0, "skipped": 0,
                           "skipped_aors": []})
    );
    let accounts = c.get("/accounts").json::<AccountList>().accounts;
    let (a, b) = (accounts[0].clone(), accounts[1].clone());
    assert_eq!(
        (a.aor.as_str(), b.aor.as_str()),
        ("sip:a@x.example", "sip:b@x.example")
    );

    let ready = wait_ready(&mut c, Duration::from_secs(10), "ready", |s, b| {
        s == 200 && b["registrars"][&host]["accounts"] == 1
    });
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["shards"], serde_json::json!({"alive": 1, "total": 1}));
    assert_eq!(ready["store"]["state"], "up");
    assert_eq!(ready["version"], env!("CARGO_PKG_VERSION"));
    // Only the registrar with an account; no user or secret anywhere.
    assert_eq!(ready["registrars"].as_object().unwrap().len(), 1);
    let text = ready.to_string();
    for secret in ["pa", "pb", "sip:a@x.example", &a.token] {
        assert!(!text.contains(&format!("\"{secret}\"")), "{text}");
    }

    // The same AOR again: fail (409, nothing written), skip, update.
    let again = "aor,auth_user,password,expires\n\
                 sip:b@x.example,b2,pb2,600\n\
                 sip:c@x.example,c,pc,300\n";
    let r = c.call(
        "POST",
        "/accounts/import",
        Some(("text/csv", again.as_bytes())),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("sip:b@x.example"), "{}", r.error());
    assert_eq!(c.get("/accounts").json::<AccountList>().accounts.len(), 2);
    let r = c.call(
        "POST",
        "/accounts/import?on_conflict=skip",
        Some(("text/csv", again.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json_of(&r),
        serde_json::json!({"imported": 1, "created": 1, "updated": 0, "skipped": 1,
                           "skipped_aors": ["sip:b@x.example"]})
    );
    let got = c.get(&format!("/accounts/{}", b.id)).json::<AccountView>();
    assert_eq!((got.auth_user.as_str(), got.expires), ("b", 300));
    let r = c.call(
        "POST",
        "/accounts/import?on_conflict=update",
        Some((
            "text/csv",
            b"aor,auth_user,password,expires,enabled\nsip:b@x.example,b2,pb2,600,false\n",
        )),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json_of(&r),
        serde_json::json!({"imported": 1, "created": 0, "updated": 1, "skipped": 0,
                           "skipped_aors": []})
    );
    let got = c.get(&format!("/accounts/{}", b.id)).json::<AccountView>();
    assert_eq!(
        (
            got.auth_user.as_str(),
            got.expires,
            got.enabled,
            got.token.as_str()
        ),
        ("b2", 600, false, b.token.as_str())
    );
    assert_eq!(got.status.state, RegState::Disabled);

    // A device survives disable and enable.
    let r = c.json(
        "PUT",
        &format!("/accounts/{}/devices/iphone", a.id),
        r#"{"provider":"apns","prid":"0123abcd","param":"TEAM.com.example.voip"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.json(
        "PATCH",
        &format!("/accounts/{}", a.id),
        r#"{"enabled":false}"#,
    );
    assert_eq!(r.json::<AccountView>().status.state, RegState::Disabled);
    let ready = wait_ready(&mut c, Duration::from_secs(10), "registrar gone", |_, b| {
        b["registrars"].as_object().is_some_and(|m| m.is_empty())
    });
    assert_eq!(ready["status"], "ready");
    let r = c.json(
        "PATCH",
        &format!("/accounts/{}", a.id),
        r#"{"enabled":true}"#,
    );
    assert_ne!(r.json::<AccountView>().status.state, RegState::Disabled);
    let devs = c
        .get(&format!("/accounts/{}/devices", a.id))
        .json::<DeviceList>();
    assert_eq!(devs.devices.len(), 1);
    assert_eq!(devs.devices[0].prid, "0123abcd");

    let metrics = c.get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "sipis_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    drop(c);
    server.stop(false);

    // The stored rows, read back from the database file.
    let mut store = sipis::store::SqliteStore::open(&dir.join("sipis.db")).unwrap();
    use sipis::store::Store;
    let rows = store.list_accounts(0, 10).unwrap();
    let row = |aor: &str| rows.iter().find(|r| r.aor == aor).unwrap().clone();
    assert_eq!(rows.len(), 3);
    let b_row = row("sip:b@x.example");
    assert_eq!((b_row.id, b_row.token.as_str()), (b.id, b.token.as_str()));
    assert_eq!(b_row.secret, sipis::AccountSecret::Password("pb2".into()));
    assert_eq!((b_row.expires, b_row.enabled), (600, false));
    assert_eq!(row("sip:c@x.example").auth_user, "c");
}

/// PostgreSQL stopped under a running sipis: `/health/ready` says
/// `buffering` (200) at first, `down` (503) past the grace, `up` once it
/// is back; `/health/live` answers 200 throughout.
#[test]
fn real_server_ready_follows_a_postgresql_outage() {
    let Some(pg) = pg::dedicated() else { return };
    let url = pg.create_database(&pg::db_name("health_ready"));
    let (server, _dir) = real_server(
        "pg",
        &format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n"),
    );
    let mut c = connect(server.admin_addr().unwrap());
    let body = wait_ready(&mut c, Duration::from_secs(10), "up", |s, b| {
        s == 200 && b["store"]["state"] == "up"
    });
    assert_eq!(body["store"]["unavailable_secs"], serde_json::Value::Null);

    pg.stop();
    let t0 = Instant::now();
    let body = wait_ready(&mut c, Duration::from_secs(20), "buffering", |s, b| {
        s == 200 && b["store"]["state"] == "buffering"
    });
    assert_eq!(body["status"], "ready");
    wait_ready(
        &mut c,
        sipis::http::STORE_GRACE + Duration::from_secs(20),
        "down",
        |s, b| s == 503 && b["store"]["state"] == "down" && b["status"] == "not_ready",
    );
    assert!(t0.elapsed() >= sipis::http::STORE_GRACE - Duration::from_secs(1));
    c.send(&request("GET", "/health/live", None, None));
    assert_eq!(c.read().status, 200);

    pg.start();
    wait_ready(&mut c, Duration::from_secs(30), "up again", |s, b| {
        s == 200 && b["store"]["state"] == "up"
    });
    drop(c);
    server.stop(false);
}
