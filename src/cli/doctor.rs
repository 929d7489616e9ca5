//! `gpuproxyd doctor`: compares this host with what the daemon needs. It reads RLIMIT_NOFILE and
//! the kernel settings of the shipped `sysctl/99-gpuproxy-100k.conf` (embedded at build time),
//! prints what is, what is recommended and why, and exits 1 when the host would cap the daemon
//! below its configuration (the connection cap plus its reserve do not fit the file-descriptor
//! limit the daemon can raise itself to, or `fs.nr_open`). Other differences are warnings.

use crate::config::Config;

const SHIPPED: &str = include_str!("../../sysctl/99-gpuproxy-100k.conf");

/// How a current value compares with the recommendation.
#[derive(Clone, Copy)]
enum Want {
    AtLeast,
    AtMost,
    Equal,
}

fn want(key: &str) -> Want {
    match key {
        "net.ipv4.tcp_fin_timeout"
        | "net.ipv4.tcp_keepalive_time"
        | "net.ipv4.tcp_keepalive_intvl"
        | "net.ipv4.tcp_keepalive_probes" => Want::AtMost,
        "net.ipv4.tcp_tw_reuse"
        | "net.ipv4.tcp_timestamps"
        | "net.ipv4.tcp_slow_start_after_idle"
        | "net.core.default_qdisc"
        | "net.ipv4.tcp_congestion_control" => Want::Equal,
        _ => Want::AtLeast,
    }
}

/// (key, recommended value, reason) from the shipped file.
fn recommendations() -> Vec<(String, String, String)> {
    // a key's reason is the comment right above it, or the one above its group
    let mut out = Vec::new();
    let mut why = String::new();
    let mut after_key = false;
    for line in SHIPPED.lines().map(str::trim) {
        if line.is_empty() {
            why.clear();
        } else if let Some(c) = line.strip_prefix('#') {
            let c = c.trim();
            if !c.starts_with("requires-module") && (after_key || why.is_empty()) {
                why = c.to_owned();
            }
            after_key = false;
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_owned(), v.trim().to_owned(), why.clone()));
            after_key = true;
        }
    }
    out
}

fn read_sysctl(key: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The figure compared: a port range by its size, a triple by its last (maximum) value.
fn figure(key: &str, v: &str) -> Option<u64> {
    let nums: Vec<u64> = v
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match (key, nums.as_slice()) {
        ("net.ipv4.ip_local_port_range", [lo, hi]) => Some(hi.saturating_sub(*lo) + 1),
        (_, [.., last]) => Some(*last),
        _ => None,
    }
}

fn ok(key: &str, current: &str, recommended: &str) -> bool {
    match want(key) {
        Want::Equal => current == recommended,
        w => match (figure(key, current), figure(key, recommended)) {
            (Some(c), Some(r)) => match w {
                Want::AtLeast => c >= r,
                _ => c <= r,
            },
            _ => current == recommended,
        },
    }
}

/// Prints the report; returns the exit status.
pub fn run(config: &Config) -> i32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    let c = &config.connections;
    let need = c.max.saturating_add(c.fd_reserve);
    let nr_open = read_sysctl("fs.nr_open")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut fatal = Vec::new();

    let fits = lim.rlim_max >= need;
    rows.push([
        "RLIMIT_NOFILE (hard)".into(),
        format!("{} (soft {})", lim.rlim_max, lim.rlim_cur),
        format!(">= {need}"),
        if fits { "ok" } else { "TOO LOW" }.into(),
        format!(
            "connections.max {} + connections.fd_reserve {}; the daemon raises its soft limit to the hard one (LimitNOFILE in systemd/gpuproxyd.service, systemd/limits.conf)",
            c.max, c.fd_reserve
        ),
    ]);
    if !fits && !c.clamp_to_fd_limit {
        fatal.push(format!(
            "RLIMIT_NOFILE hard limit {} is below connections.max + fd_reserve = {need}",
            lim.rlim_max
        ));
    }
    for (key, rec, why) in recommendations() {
        let Some(cur) = read_sysctl(&key) else {
            rows.push([key, "(absent)".into(), rec, "missing".into(), why]);
            continue;
        };
        let good = ok(&key, &cur, &rec);
        if key == "fs.nr_open" && nr_open < need {
            fatal.push(format!(
                "fs.nr_open {nr_open} is below connections.max + fd_reserve = {need}"
            ));
        }
        rows.push([
            key,
            cur,
            rec,
            if good { "ok" } else { "differs" }.into(),
            why,
        ]);
    }

    let head = ["setting", "current", "recommended", "status", "why"];
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    super::table::print(&head, &rows, 40);
    let differs = rows.iter().filter(|r| r[3] != "ok").count();
    println!();
    if fatal.is_empty() {
        println!(
            "host fits the configuration ({differs} setting(s) differ from the recommendation; see sysctl/99-gpuproxy-100k.conf)"
        );
        0
    } else {
        for f in &fatal {
            println!("CAPPED: {f}");
        }
        println!(
            "the daemon would refuse to start (or, with --clamp-to-fd-limit, serve fewer connections than configured)"
        );
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons() {
        assert!(ok("net.core.somaxconn", "65535", "65535"));
        assert!(!ok("net.core.somaxconn", "4096", "65535"));
        assert!(ok("net.ipv4.tcp_fin_timeout", "10", "15"));
        assert!(!ok("net.ipv4.tcp_fin_timeout", "60", "15"));
        assert!(ok(
            "net.ipv4.ip_local_port_range",
            "1024 65535",
            "1024 65535"
        ));
        assert!(!ok(
            "net.ipv4.ip_local_port_range",
            "32768 60999",
            "1024 65535"
        ));
        assert!(!ok("net.ipv4.tcp_congestion_control", "cubic", "bbr"));
        assert!(ok(
            "net.ipv4.tcp_rmem",
            "4096 131072 33554432",
            "4096 87380 16777216"
        ));
        let recs = recommendations();
        assert!(
            recs.iter()
                .any(|(k, _, why)| k == "net.core.somaxconn" && !why.is_empty())
        );
    }
}
