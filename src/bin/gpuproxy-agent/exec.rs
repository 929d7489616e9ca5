//! Running a command the daemon sent (`exec`): the program and its arguments with no shell, in
//! a process group of its own, stdin empty; its stdout and stderr forwarded as `output` pieces,
//! and its end as `finished`. At its timeout the whole group is killed (`timed_out`).
//!
//! - Output is gathered for up to [`GATHER`] or [`PIECE`] bytes before it is sent, so a process
//!   printing line by line sends a few messages a second, not one per line (the daemon limits
//!   an agent's messages).
//! - The first [`FORWARD`] bytes of a command are forwarded; the rest is read (so the process
//!   never blocks on a full pipe) and counted, and `finished` says how much there was.
//! - Messages go to the agent's outbox, which outlives a connection: a command keeps running
//!   while the agent reconnects, and its answers go on the next connection.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use gpuproxyd::agents::protocol::{AgentMessage, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest wait before gathered output is sent.
const GATHER: Duration = Duration::from_millis(200);
/// Bytes read into one piece (a third of the protocol's limit: bytes that are not UTF-8 become
/// three-byte replacement characters).
const PIECE: usize = gpuproxyd::agents::protocol::MAX_OUTPUT_PIECE / 3;
/// Output forwarded per command; the rest is counted.
const FORWARD: u64 = 1 << 20;

/// Runs command `id`, sending its messages to `out`.
pub async fn run(id: String, argv: Vec<String>, timeout_s: u32, out: mpsc::Sender<AgentMessage>) {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // its own group, so the timeout kills what it started too
    cmd.as_std_mut().process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = out
                .send(AgentMessage::Finished {
                    id,
                    exit_code: None,
                    timed_out: false,
                    error: Some(format!("cannot start `{}`: {e}", short(&argv[0]))),
                    output_bytes: None,
                })
                .await;
            return;
        }
    };
    let _ = out.send(AgentMessage::Started { id: id.clone() }).await;
    let pgid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let forwarded = std::sync::atomic::AtomicU64::new(0);
    let pipes = async {
        tokio::join!(
            pump(&id, OutputStream::Stdout, stdout, &out, &forwarded),
            pump(&id, OutputStream::Stderr, stderr, &out, &forwarded),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(u64::from(timeout_s));
    let (timed_out, status, total) = tokio::select! {
        (a, b) = pipes => {
            // both pipes closed: wait for the exit, still within the timeout
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(s) => (false, s.ok(), a + b),
                Err(_) => (true, None, a + b),
            }
        }
        _ = tokio::time::sleep_until(deadline) => (true, None, 0),
    };
    if timed_out {
        if let Some(pg) = pgid {
            // SAFETY: kill(2) with a negative pid signals the process group; no memory involved
            unsafe {
                libc::kill(-(pg as i32), libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
    }
    let sent = forwarded.load(std::sync::atomic::Ordering::Relaxed);
    let _ = out
        .send(AgentMessage::Finished {
            id,
            exit_code: status.and_then(|s| s.code()),
            timed_out,
            error: None,
            output_bytes: (total > sent).then_some(total),
        })
        .await;
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Reads one pipe to its end, sending gathered pieces; returns the bytes it produced.
async fn pump(
    id: &str,
    stream: OutputStream,
    pipe: Option<impl AsyncRead + Unpin>,
    out: &mpsc::Sender<AgentMessage>,
    forwarded: &std::sync::atomic::AtomicU64,
) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(mut pipe) = pipe else { return 0 };
    let mut total = 0u64;
    let mut piece: Vec<u8> = Vec::new();
    let mut since: Option<Instant> = None;
    let mut buf = vec![0u8; 8192];
    loop {
        let flush_at = since.map(|t| t + GATHER);
        let read = async {
            match flush_at {
                Some(t) => tokio::time::timeout_at(t, pipe.read(&mut buf)).await.ok(),
                None => Some(pipe.read(&mut buf).await),
            }
        };
        let (n, done) = match read.await {
            None => (0, false),
            Some(Ok(0)) | Some(Err(_)) => (0, true),
            Some(Ok(n)) => (n, false),
        };
        total += n as u64;
        let room = FORWARD.saturating_sub(forwarded.load(Relaxed) + piece.len() as u64);
        piece.extend_from_slice(&buf[..n.min(room as usize)]);
        if !piece.is_empty() && since.is_none() {
            since = Some(Instant::now());
        }
        let due = since.is_some_and(|t| t.elapsed() >= GATHER);
        if !piece.is_empty() && (done || due || piece.len() >= PIECE) {
            for chunk in piece.chunks(PIECE) {
                forwarded.fetch_add(chunk.len() as u64, Relaxed);
                let m = AgentMessage::Output {
                    id: id.to_owned(),
                    stream,
                    data: String::from_utf8_lossy(chunk).into_owned(),
                };
                if out.send(m).await.is_err() {
                    return total;
                }
            }
            piece.clear();
            since = None;
        }
        if done {
            return total;
        }
    }
}
