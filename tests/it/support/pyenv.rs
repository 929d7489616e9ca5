//! Python tools the tests drive (schemathesis, the official MCP SDK, openapi-python-client, Vast's
//! client, jsonschema): each in a virtual environment under `~/.cache`, created on first use
//! from PyPI at a pinned version.

use std::path::PathBuf;
use std::process::Command;

/// The `bin/` directory of a virtual environment holding `requirement` (`name==version`).
pub fn venv(requirement: &str) -> PathBuf {
    venv_of(&[requirement])
}

/// The same for several requirements, installed together (named after the first).
pub fn venv_of(requirements: &[&str]) -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let first = requirements[0];
    let name = first.split("==").next().unwrap_or(first);
    let venv = home
        .join(format!(".cache/gpuproxyd-{name}"))
        .join(requirements.join("+").replace("==", "-"));
    let bin = venv.join("bin");
    // written last: a half-made environment (an install cut off) is made again, never used
    let done = venv.join("installed");
    if done.exists() {
        return bin;
    }
    // one maker at a time, across the tests' threads and processes (two tests making the same
    // environment at once removed each other's half-made one); the lock goes with the file
    std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(venv.with_extension("lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns for the rest of its run
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {venv:?}");
    if done.exists() {
        return bin;
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("spawn");
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(requirements));
    std::fs::write(&done, requirements.join("\n")).unwrap();
    bin
}
