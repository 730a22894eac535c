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

/// mimalloc's option numbers, from `mi_option_t` in its v2 header
/// (`mimalloc.h`); libmimalloc-sys names neither.
const MI_OPTION_ARENA_EAGER_COMMIT: libc::c_int = 4;
const MI_OPTION_PURGE_DELAY: libc::c_int = 15;

/// Tells the binary's allocator (mimalloc, `src/main.rs`) to give freed
/// memory back to the OS at once, as glibc's does for large blocks. Its
/// defaults keep freed memory for later: the 64 MiB of each argon2id
/// derivation stayed resident, and an idle server held 140 MiB instead
/// of 25 (docs/performance.md, "The allocator").
/// - Purge delay 0: freed pages are returned when freed, not 10 ms later at
///   the next allocation, which an idle server never makes.
/// - No eager commit of arenas: a committed arena's freed pages are only
///   marked reusable, and still count as resident until the OS wants them.
///
/// The second is read when the first arena is reserved, at the process's
/// first allocation, which comes before `main`; hence `.init_array`.
/// These settings replace mimalloc's `MIMALLOC_*` environment variables
/// for both.
#[allow(unsafe_code)]
extern "C" fn set_up_allocator() {
    // SAFETY: mi_option_set stores a number in mimalloc's option table. It
    // allocates nothing and needs no initialisation before it, so it may
    // run before main.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
}

/// [`set_up_allocator`], run by the loader before `main` and before any
/// allocation. `main` names it so that the linker keeps it.
#[allow(unsafe_code)]
#[used]
#[link_section = ".init_array"]
pub static ALLOCATOR_SETTINGS: extern "C" fn() = set_up_allocator;
