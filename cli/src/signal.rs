//! SIGINT and SIGTERM during long commands: the first one only sets a flag, which `pack` polls
//! through `Progress::cancelled` to stop its workers and remove what it wrote; the command then
//! exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). The handler resets
//! itself, so a second signal ends the process at once, as usual.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first SIGINT or SIGTERM received, 0 before any.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// The signal's name for messages.
pub fn name(sig: i32) -> &'static str {
    #[cfg(unix)]
    {
        match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = sig;
        "a signal"
    }
}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    let _ = RECEIVED.compare_exchange(0, sig, Ordering::Relaxed, Ordering::Relaxed);
}

/// Installs the handler for SIGINT and SIGTERM (once, before the work starts).
pub fn install() {
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is plain old data, for which all-zero bytes are valid (an empty
        // mask, no flags).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SA_RESETHAND: a second signal gets the default action (the process ends). No
        // SA_RESTART: a blocked read or write returns EINTR, which std retries, so the pack
        // notices the flag soon.
        act.sa_flags = libc::SA_RESETHAND;
        // SAFETY: `act` is a valid, initialized sigaction whose handler only does an atomic
        // store; passing a null old-action pointer is allowed.
        unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}
