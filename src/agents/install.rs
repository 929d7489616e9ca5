//! Getting the agent onto a rented machine (docs/agents.md, "Installing the agent").
//!
//! - The daemon serves the agent program it was built with (`agents.binary_path`, by default
//!   `gpuproxy-agent` next to the daemon's own executable) at `GET /v1/agent/download`, with its
//!   SHA-256, and an install script at `GET /v1/agent/install.sh`.
//! - A rental with `agent: true` on a provider with a start hook (Vast's `onstart`) gets an
//!   agent token minted for it and three variables in its environment (`GPUPROXY_URL`,
//!   `GPUPROXY_INSTANCE_ID`, `GPUPROXY_AGENT_TOKEN`); its `onstart` begins with the install
//!   script, which downloads the program from `agents.public_url`, checks it against the
//!   SHA-256 written into the script, and starts it in the background. The token is never in
//!   the script, a command line or a log, and is never stored but as its hash.
//! - Where a provider has no start hook (io.net's VMs), the instance shows the one-line install
//!   command to run on the machine, with the token (minted with `POST
//!   /v1/instances/{id}/agent-token`) in the environment.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::config::AgentsConfig;
use crate::error::{Error, Result};

/// The agent program this daemon hands out, and its SHA-256 (hex).
pub struct AgentBinary {
    pub bytes: Bytes,
    pub sha256: String,
}

/// The agent program (read once, on first use); `None` when the file is not there.
pub fn binary(cfg: &AgentsConfig) -> Option<Arc<AgentBinary>> {
    static BINARY: OnceLock<Option<Arc<AgentBinary>>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let path = match cfg.binary_path.as_str() {
                "" => std::env::current_exe()
                    .ok()?
                    .with_file_name("gpuproxy-agent"),
                p => p.into(),
            };
            match std::fs::read(&path) {
                Ok(b) => Some(Arc::new(AgentBinary {
                    sha256: hex(&Sha256::digest(&b)),
                    bytes: Bytes::from(b),
                })),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "no agent program to hand out (agents.binary_path)");
                    None
                }
            }
        })
        .clone()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What installing needs: where agents connect and the program's checksum; 400 naming `agent`
/// when this daemon cannot install one.
pub struct Installer {
    pub public_url: String,
    pub sha256: String,
}

impl Installer {
    pub fn of(cfg: &AgentsConfig) -> Result<Installer> {
        let refuse = |why: &str| Error::bad_request(format!("invalid `agent`: {why}"));
        if cfg.public_url.is_empty() {
            return Err(refuse(
                "this daemon has no `agents.public_url` to tell an agent where to connect",
            ));
        }
        let b = binary(cfg).ok_or_else(|| {
            refuse("this daemon has no agent program to hand out (`agents.binary_path`)")
        })?;
        Ok(Installer {
            public_url: cfg.public_url.trim_end_matches('/').to_owned(),
            sha256: b.sha256.clone(),
        })
    }

    /// The install script: download, check, start in the background. POSIX sh; everything it
    /// needs comes from the environment (`GPUPROXY_URL` defaults to this daemon's public URL).
    /// `GPUPROXY_AGENT_DIR` and `GPUPROXY_AGENT_LOG` choose where the program and its log go;
    /// `GPUPROXY_CACERT` names a private CA for the download and the channel.
    pub fn script(&self) -> String {
        format!(
            r#"# gpuproxy agent (docs/agents.md)
(: "${{GPUPROXY_URL:={url}}}"; export GPUPROXY_URL
d="${{GPUPROXY_AGENT_DIR:-/usr/local/bin}}"; f="$d/gpuproxy-agent"; t="$f.download"
mkdir -p "$d" || exit 1
if command -v curl >/dev/null 2>&1; then curl -fsSL ${{GPUPROXY_CACERT:+--cacert "$GPUPROXY_CACERT"}} -o "$t" "$GPUPROXY_URL/v1/agent/download"
else wget -qO "$t" ${{GPUPROXY_CACERT:+--ca-certificate="$GPUPROXY_CACERT"}} "$GPUPROXY_URL/v1/agent/download"; fi || exit 1
echo "{sha}  $t" | sha256sum -c - >/dev/null 2>&1 || {{ echo "gpuproxy-agent: checksum mismatch" >&2; rm -f "$t"; exit 1; }}
chmod 755 "$t" && mv -f "$t" "$f" || exit 1
nohup "$f" >>"${{GPUPROXY_AGENT_LOG:-/var/log/gpuproxy-agent.log}}" 2>&1 &) &
"#,
            url = self.public_url,
            sha = self.sha256,
        )
    }

    /// The one line to run on a machine its provider starts no script on.
    pub fn one_liner(&self, instance_id: &str) -> String {
        format!(
            "curl -fsSL {}/v1/agent/install.sh | GPUPROXY_INSTANCE_ID={instance_id} sh   # with GPUPROXY_AGENT_TOKEN in the environment (POST /v1/instances/{instance_id}/agent-token)",
            self.public_url
        )
    }
}

impl Installer {
    /// Whether the renter's own `onstart` leaves room for the install script (400 naming
    /// `onstart` when it does not).
    pub fn fits(&self, launch: &crate::providers::Launch) -> Result<()> {
        let max = crate::providers::ONSTART_MAX;
        let ours = self.script().chars().count();
        let own = launch.onstart.as_deref().map_or(0, |s| s.chars().count());
        if ours + own > max {
            return Err(Error::bad_request(format!(
                "invalid `onstart`: with `agent: true` at most {} characters (the agent's install takes the rest of Vast's {max})",
                max - ours
            )));
        }
        Ok(())
    }
}

/// Sets up `launch` to install and start the agent of `instance_id` with `token`: its
/// environment, and the install script before the renter's own `onstart` (which must leave
/// room for it: [`Installer::fits`]).
pub fn attach(
    inst: &Installer,
    instance_id: &str,
    token: &str,
    launch: &mut crate::providers::Launch,
) -> Result<()> {
    inst.fits(launch)?;
    let script = inst.script();
    launch.onstart = Some(match &launch.onstart {
        Some(own) => format!("{script}{own}"),
        None => script,
    });
    for (k, v) in [
        ("GPUPROXY_URL", inst.public_url.as_str()),
        ("GPUPROXY_INSTANCE_ID", instance_id),
        ("GPUPROXY_AGENT_TOKEN", token),
    ] {
        launch.env.insert(k.into(), v.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_checks_the_download_and_carries_no_token() {
        let i = Installer {
            public_url: "https://gpu.example.com".into(),
            sha256: "ab".repeat(32),
        };
        let s = i.script();
        assert!(s.contains(&format!("{}  $t", "ab".repeat(32))), "{s}");
        assert!(s.contains("GPUPROXY_URL:=https://gpu.example.com"), "{s}");
        assert!(!s.contains("GPUPROXY_AGENT_TOKEN"), "{s}");
        let mut l = crate::providers::Launch {
            onstart: Some("echo mine".into()),
            ..Default::default()
        };
        attach(&i, "inst-1", "gpa_secret", &mut l).unwrap();
        let o = l.onstart.unwrap();
        assert!(
            o.starts_with("# gpuproxy agent") && o.ends_with("echo mine"),
            "{o}"
        );
        assert!(!o.contains("gpa_secret"));
        assert_eq!(l.env["GPUPROXY_AGENT_TOKEN"], "gpa_secret");
        assert_eq!(l.env["GPUPROXY_INSTANCE_ID"], "inst-1");
        let mut long = crate::providers::Launch {
            onstart: Some("x".repeat(crate::providers::model::ONSTART_MAX)),
            ..Default::default()
        };
        let e = attach(&i, "inst-1", "gpa_secret", &mut long).unwrap_err();
        assert!(e.message.contains("`onstart`"), "{}", e.message);
    }
}
