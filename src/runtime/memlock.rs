//! Locked memory for io_uring: each glommio executor locks its I/O memory,
//! and the default `ulimit -l` (8 MiB on Debian) is too small for several
//! shards. sipis raises `RLIMIT_MEMLOCK` itself when it may (root, or
//! `CAP_SYS_RESOURCE`), else says exactly what the operator must set
//! (see `tuning/memlock.md`).

use std::fmt;

/// The locked memory needed could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemlockError {
    pub needed: u64,
    pub soft: u64,
    pub hard: u64,
}

impl fmt::Display for MemlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring needs {} KiB of locked memory but RLIMIT_MEMLOCK is {} KiB (hard {} KiB) \
             and sipis may not raise it: run `ulimit -l unlimited` (or at least {}) before \
             starting, or set LimitMEMLOCK=infinity in the systemd unit (tuning/memlock.md)",
            self.needed / 1024,
            self.soft / 1024,
            self.hard / 1024,
            self.needed / 1024
        )
    }
}

impl std::error::Error for MemlockError {}

/// Makes sure at least `needed` bytes may be locked, raising the soft (and
/// if allowed the hard) limit. Returns the limit now in force.
pub fn ensure(needed: u64) -> Result<u64, MemlockError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(MemlockError {
            needed,
            soft: 0,
            hard: 0,
        });
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    if soft == libc::RLIM_INFINITY || soft >= needed {
        return Ok(soft);
    }
    let want = libc::rlimit {
        rlim_cur: needed,
        rlim_max: if hard == libc::RLIM_INFINITY || hard >= needed {
            hard
        } else {
            needed
        },
    };
    // SAFETY: setrlimit only reads the struct; failure is reported by errno.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } == 0 {
        return Ok(needed);
    }
    Err(MemlockError { needed, soft, hard })
}
