//! One sipis per data directory and per port: a second `sipis serve` with
//! the same configuration refuses to start instead of sharing the ports
//! (SO_REUSEPORT would let it) and splitting the traffic with the first.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;

/// An exclusive lock on `<data_dir>/sipis.lock` (flock), held while the
/// server runs; the file names the holder's pid.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<InstanceLock, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create data_dir {}: {e}", data_dir.display()))?;
        let path = data_dir.join("sipis.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(format!(
                "another sipis is running with data_dir {} ({} is locked{}); stop it first",
                data_dir.display(),
                path.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {holder}")
                }
            ));
        }
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = writeln!(file, "{}", std::process::id());
        Ok(InstanceLock { _file: file })
    }
}

/// Fails if another process listens on `addr` (UDP and, when `tcp`, TCP).
/// The probe binds without SO_REUSEPORT, which a port shared by a running
/// sipis refuses.
pub fn port_free(addr: SocketAddr, tcp: bool) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let in_use = |proto: &str, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "{proto} {addr} is in use: another sipis (or SIP server) listens there; \
                 a second one would share the port (SO_REUSEPORT) and split the traffic"
            )
        } else {
            format!("cannot bind {proto} {addr}: {e}")
        }
    };
    UdpSocket::bind(addr).map_err(|e| in_use("UDP", e))?;
    if tcp {
        TcpListener::bind(addr).map_err(|e| in_use("TCP", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("sipis-lock-{}", std::process::id()));
        let first = InstanceLock::acquire(&dir).unwrap();
        let e = InstanceLock::acquire(&dir).err().unwrap();
        assert!(e.contains("another sipis is running"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        assert!(InstanceLock::acquire(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_port_held_with_reuseport_is_reported_in_use() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let e = port_free(addr, false).unwrap_err();
        assert!(e.contains("in use"), "{e}");
    }
}
