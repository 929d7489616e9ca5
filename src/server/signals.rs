//! Process signals: SIGTERM/SIGINT start the drain (a second one exits at once), SIGHUP reloads
//! the TLS certificate.

use std::sync::Arc;

use metrics::counter;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use super::tls::CertStore;
use crate::metrics::TLS_RELOADS_TOTAL;

/// Exit status when a second stop signal cuts the drain short.
pub const EXIT_FORCED: i32 = 1;

/// Installs the handlers and returns a future that resolves on the first SIGTERM or SIGINT.
pub fn install(certs: Option<Arc<CertStore>>) -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut first = Some(tx);
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    reload(certs.as_deref());
                    continue;
                }
            };
            match first.take() {
                Some(tx) => {
                    tracing::info!(
                        signal = name,
                        "stop requested; draining (send again to exit at once)"
                    );
                    let _ = tx.send(());
                }
                None => {
                    tracing::warn!(signal = name, "second stop signal: exiting now");
                    std::process::exit(EXIT_FORCED);
                }
            }
        }
    });
    Ok(async move {
        let _ = rx.await;
    })
}

fn reload(certs: Option<&CertStore>) {
    let Some(store) = certs else {
        tracing::info!("SIGHUP: no HTTPS listener, nothing to reload");
        return;
    };
    match store.reload() {
        Ok(()) => {
            counter!(TLS_RELOADS_TOTAL, "result" => "ok").increment(1);
            tracing::info!("SIGHUP: TLS certificate reloaded");
        }
        Err(reason) => {
            counter!(TLS_RELOADS_TOTAL, "result" => "error").increment(1);
            tracing::error!(%reason, "SIGHUP: new TLS certificate refused; keeping the old one");
        }
    }
}
