//! A real DNS server for the tests: Debian's `unbound`, serving one zone
//! file (NAPTR, SRV, A...) authoritatively on 127.0.0.1 and a free port,
//! in the foreground, as the test's user, with nothing but that zone
//! (no recursion anywhere: the machine has no network).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str =
    "unbound is not installed: run `apt-get install unbound` (or bash .ci/run)";

/// A running unbound; dropping it stops it.
pub struct Unbound {
    child: Option<Child>,
    pub addr: SocketAddr,
    zone_name: String,
    dir: PathBuf,
}

impl Unbound {
    /// Serves `zone` (a zone file's text, `$ORIGIN` included) for
    /// `zone_name` on 127.0.0.1 and a free port.
    pub fn start(zone_name: &str, zone: &str) -> Unbound {
        let port = crate::ports::free_udp_port_run(1);
        let dir = std::env::temp_dir().join(format!("sipis-unbound-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut u = Unbound {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            zone_name: zone_name.to_owned(),
            dir,
        };
        u.run(zone);
        u
    }

    /// Serves `zone` instead (the server is started again on the same
    /// address with the new file: what an operator's zone change does).
    pub fn replace_zone(&mut self, zone: &str) {
        self.stop();
        self.run(zone);
    }

    fn run(&mut self, zone: &str) {
        let zone_file = self.dir.join("zone");
        std::fs::write(&zone_file, zone).unwrap();
        let conf = self.dir.join("unbound.conf");
        let port = self.addr.port();
        std::fs::write(
            &conf,
            format!(
                r#"server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 1
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: ""
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    num-threads: 1
remote-control:
    control-enable: no
auth-zone:
    name: "{name}."
    zonefile: "{zone}"
    for-downstream: yes
    for-upstream: no
    fallback-enabled: no
"#,
                dir = self.dir.display(),
                name = self.zone_name.trim_end_matches('.'),
                zone = zone_file.display(),
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/unbound", "/usr/local/sbin/unbound"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let log = std::fs::File::create(self.dir.join("unbound.log")).unwrap();
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run unbound: {e}"));
        self.child = Some(child);
        // Up when it answers an SOA query for the zone.
        let end = Instant::now() + Duration::from_secs(10);
        while !self.answers_soa() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("unbound exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "unbound not answering within 10 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers_soa(&self) -> bool {
        let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in self.zone_name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 6, 0, 1]);
        if s.send_to(&q, self.addr).is_err() {
            return false;
        }
        let mut buf = [0u8; 1500];
        // An authoritative answer without error, with a record.
        matches!(s.recv(&mut buf), Ok(n) if n > 12 && buf[3] & 0x0f == 0 && buf[2] & 0x04 != 0 && buf[7] > 0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
