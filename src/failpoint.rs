//! Named crash points for the crash-injection tests.
//!
//! Built on the `fail` crate and compiled in only with the `testing`
//! feature; in other builds [`failpoint`] is an empty inline function.
//! Enable points with the `FAILPOINTS` environment variable, e.g.
//! `FAILPOINTS=worker.after_claim=return`: when an enabled point is
//! reached the process kills itself with SIGKILL, exactly like an OOM kill
//! or a power cut would end it — no destructors, no rollback beyond what
//! SQLite's journal does.

/// Reads `FAILPOINTS` once at start-up (testing builds only).
pub fn setup() {
    #[cfg(feature = "testing")]
    std::mem::forget(fail::FailScenario::setup());
}

/// A crash point named `name` (see the module docs).
#[inline]
pub fn failpoint(name: &str) {
    #[cfg(feature = "testing")]
    (|| {
        fail::fail_point!(name, |_| crash(name));
    })();
    #[cfg(not(feature = "testing"))]
    let _ = name;
}

#[cfg(feature = "testing")]
fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: killing this process with SIGKILL");
    // SAFETY: sending a signal to ourselves has no memory-safety impact.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    loop {
        std::thread::park();
    }
}
