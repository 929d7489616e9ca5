//! What the agent says about the machine: its GPUs as `nvidia-smi` lists them (the program is
//! `GPUPROXY_NVIDIA_SMI` when set, else `nvidia-smi` on the PATH; none found: no GPUs), and the
//! host's facts from /proc.

use gpuproxyd::agents::protocol::{GpuInfo, GpuSample, HostInfo};

fn nvidia_smi(query: &str) -> Vec<Vec<String>> {
    let program = std::env::var("GPUPROXY_NVIDIA_SMI").unwrap_or_else(|_| "nvidia-smi".into());
    let Ok(out) = std::process::Command::new(program)
        .args([
            &format!("--query-gpu={query}"),
            "--format=csv,noheader,nounits",
        ])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|f| f.trim().to_owned()).collect())
        .collect()
}

/// The GPUs (index, name, memory in MiB), for the hello.
pub fn inventory() -> Vec<GpuInfo> {
    nvidia_smi("index,name,memory.total")
        .into_iter()
        .filter_map(|f| {
            Some(GpuInfo {
                index: f.first()?.parse::<u32>().ok()?,
                name: f.get(1)?.chars().take(64).collect::<String>(),
                memory_mb: f.get(2)?.parse::<u64>().ok()?,
            })
        })
        .filter(|g| !g.name.is_empty())
        .take(64)
        .collect()
}

/// Each GPU's utilisation (percent) and memory in use (MiB), for a heartbeat.
pub fn samples() -> Vec<GpuSample> {
    nvidia_smi("index,utilization.gpu,memory.used")
        .into_iter()
        .filter_map(|f| {
            Some(GpuSample {
                index: f.first()?.parse::<u32>().ok()?,
                util_pct: f
                    .get(1)?
                    .parse::<f64>()
                    .ok()
                    .filter(|u| u.is_finite())?
                    .clamp(0.0, 100.0),
                memory_used_mb: f.get(2)?.parse::<u64>().ok()?,
            })
        })
        .take(64)
        .collect()
}

/// Host name, OS, CPUs and memory (MiB).
pub fn host() -> HostInfo {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024);
    HostInfo {
        hostname: hostname.chars().take(64).collect::<String>(),
        os: std::env::consts::OS.into(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_mb,
    }
}
