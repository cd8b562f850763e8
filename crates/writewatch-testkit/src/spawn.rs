//! Starting the local servers of the object-storage tests: a free loopback port, and waiting
//! until a started server answers there.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (bound, then released: a server started on it
/// may still lose it to another process, so callers retry on another).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ready(port)` until it holds (true), or `child` exited or `timeout` passed (false).
pub(crate) fn wait_ready(
    child: &mut Child,
    port: u16,
    timeout: Duration,
    ready: impl Fn(u16) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready(port) {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false; // port taken meanwhile: the caller tries another
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Spawns `cmd` with its output discarded and `stdin` as given; panics naming `bin` if it
/// cannot start.
pub(crate) fn spawn_quiet(cmd: &mut Command, stdin: Stdio, bin: &Path) -> Child {
    cmd.stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
}
