//! What the load tools that spread themselves over processes share (`gpuproxy-connhold`,
//! `gpuproxy-agentswarm`, which include this file by path): running copies of themselves as
//! children, each with its share of the work, and reading back the JSON lines they print; and
//! the one TLS client configuration of a process.

use std::process::Stdio;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

/// Child `c`'s share of `total` over `procs` children (the first ones take the remainder).
pub fn share(total: usize, procs: usize, c: usize) -> usize {
    total / procs + usize::from(c < total % procs)
}

/// Runs `procs` copies of this program, child `c` with the arguments `args_of(c)`; every line
/// they print that reads as an `R` arrives on the channel (it closes when all have exited). They
/// are killed when dropped, and die with their parent ([`die_with_parent`]).
pub fn fan_out<R, F>(procs: usize, args_of: F) -> (Vec<Child>, mpsc::UnboundedReceiver<R>)
where
    R: DeserializeOwned + Send + 'static,
    F: Fn(usize) -> Vec<String>,
{
    let exe = std::env::current_exe().expect("own path");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut children = Vec::new();
    for c in 0..procs {
        let mut child = tokio::process::Command::new(&exe)
            .args(args_of(c))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn child");
        let out = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(r) = serde_json::from_str::<R>(&l) {
                    let _ = tx.send(r);
                }
            }
        });
        children.push(child);
    }
    (children, rx)
}

/// A child dies with its parent (a load run stopped mid-way leaves no process holding sockets).
pub fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets this process's own death signal
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}

/// One client configuration (ALPN http/1.1, any certificate) for every connection of this
/// process.
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let cfg = CONFIG.get_or_init(|| {
        super::testkit::insecure_client_config(&[b"http/1.1"], rustls::DEFAULT_VERSIONS)
    });
    tokio_rustls::TlsConnector::from(cfg.clone())
}
