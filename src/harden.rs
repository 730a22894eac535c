//! Process hardening applied before any key is loaded.

/// Refuses core dumps and ptrace by other processes of the same user, and
/// makes every file the process creates private (umask 077). Key material
/// and plaintext values in memory must not end up in a core file.
#[allow(unsafe_code)]
pub fn harden_process() {
    // SAFETY: plain system calls with valid arguments; they touch no memory
    // of ours beyond the rlimit struct passed by reference.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
            tracing::warn!("could not disable core dumps");
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::warn!("could not mark the process non-dumpable");
        }
        libc::umask(0o077);
    }
}

/// True when core dumps are disabled for this process.
#[allow(unsafe_code)]
pub fn core_dumps_disabled() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) } == 0;
    ok && limit.rlim_cur == 0
}

/// Sends SIGHUP (reload) to process `pid`; false when it could not be sent.
#[allow(unsafe_code)]
pub fn signal_reload(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    unsafe { libc::kill(pid, libc::SIGHUP) == 0 }
}
