//! File-descriptor awareness: raise the soft RLIMIT_NOFILE to the hard limit at start, and size
//! (or check) the global connection cap against it.

use std::fmt;

/// What the daemon may open: the soft limit after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit to the hard limit (allowed without privileges).
pub fn raise_nofile() -> std::io::Result<FdLimits> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(FdLimits {
        soft_before: before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// The configured cap does not fit the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapTooHigh {
    pub wanted: u64,
    pub reserve: u64,
    pub limit: u64,
}

impl fmt::Display for CapTooHigh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections.max = {} needs {} file descriptors ({} connections + {} reserved for \
             listeners, upstream, PostgreSQL and Redis sockets), but RLIMIT_NOFILE allows only {}. \
             Raise the limit (systemd: LimitNOFILE= in systemd/gpuproxyd.service; otherwise \
             install systemd/limits.conf as /etc/security/limits.d/gpuproxyd.conf, or `ulimit -n`), \
             lower connections.max (at most {} fits), or start with --clamp-to-fd-limit",
            self.wanted,
            self.wanted + self.reserve,
            self.wanted,
            self.reserve,
            self.limit,
            self.limit.saturating_sub(self.reserve)
        )
    }
}

/// The global cap to use: `configured` (0 = as many as the limit allows), checked against the
/// limit minus the reserve. Over the limit it is an error unless `clamp`.
pub fn size_cap(configured: u64, reserve: u64, limit: u64, clamp: bool) -> Result<u64, CapTooHigh> {
    let fits = limit.saturating_sub(reserve);
    if configured == 0 {
        return Ok(fits);
    }
    if configured <= fits || clamp {
        return Ok(configured.min(fits));
    }
    Err(CapTooHigh {
        wanted: configured,
        reserve,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing() {
        assert_eq!(size_cap(0, 1024, 20_000, false), Ok(18_976));
        assert_eq!(size_cap(10_000, 1024, 20_000, false), Ok(10_000));
        assert_eq!(size_cap(100_000, 1024, 20_000, true), Ok(18_976));
        let e = size_cap(100_000, 1024, 20_000, false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("100000") && msg.contains("20000") && msg.contains("18976"),
            "{msg}"
        );
        assert!(
            msg.contains("LimitNOFILE") && msg.contains("limits.conf"),
            "{msg}"
        );
    }

    #[test]
    fn raise_reaches_the_hard_limit() {
        let l = raise_nofile().unwrap();
        assert_eq!(l.soft, l.hard);
    }
}
