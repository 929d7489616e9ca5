//! systemd's notify protocol (`Type=notify`): `READY=1` once the listeners are bound and the
//! daemon serves, `STOPPING=1` when draining starts, and `WATCHDOG=1` every half of
//! `WATCHDOG_USEC` while the runtime is alive. Datagrams go to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); without it every call is a
//! no-op, so the daemon runs the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go; `None` outside systemd.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honouring `WATCHDOG_PID` when set: the
    /// watchdog is for this process only).
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// Sends one state string; errors are logged, never fatal (systemd may be gone at shutdown).
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        let sent = (|| -> std::io::Result<()> {
            let sock = UnixDatagram::unbound()?;
            if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            } else {
                sock.send_to(state.as_bytes(), path)?;
            }
            Ok(())
        })();
        if let Err(e) = sent {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }

    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=serving");
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining connections");
    }

    /// Pings the watchdog at half its interval until the task is dropped; `None` when systemd
    /// asked for no watchdog.
    pub fn spawn_watchdog(&self) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.watchdog? / 2;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                me.notify("WATCHDOG=1");
            }
        }))
    }
}
