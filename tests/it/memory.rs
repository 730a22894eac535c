//! The server's own memory once it is idle.

use crate::support::{http, Setup};

/// One field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Unlocking the keyring stretches the passphrase with argon2id in 64 MiB.
/// Once the server listens, that memory is back with the OS: the binary's
/// allocator (mimalloc) is set up to return freed memory at once. With
/// its defaults it kept the 64 MiB resident, and an idle server held
/// 140 MiB.
#[test]
fn an_idle_server_has_given_back_the_key_derivations_memory() {
    let setup = Setup::new_passphrase("");
    let server = setup.serve();
    let ready = http().get(server.url("/readyz")).send().unwrap();
    assert_eq!(ready.status(), 200);
    let pid = server.pid();
    let peak = status_kib(pid, "VmHWM:");
    assert!(
        peak > 64 * 1024,
        "the derivation's 64 MiB never showed (peak {peak} KiB): nothing was measured"
    );
    // Its own memory, not the pages of the binary it runs: about 9 MiB
    // here; 24 MiB without the arena setting, 44 MiB without the purge one.
    let anonymous = status_kib(pid, "RssAnon:");
    assert!(
        anonymous < 16 * 1024,
        "an idle server holds {anonymous} KiB of its own memory"
    );
}
