//! The helper target process, driven over its stdin/stdout.
#![allow(dead_code)]

pub mod check;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub const EXE: &str = env!("CARGO_BIN_EXE_ww-target");

pub struct Target {
    pub child: Child,
    pub pid: u32,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

#[derive(Debug)]
pub struct Status {
    pub regs_ok: bool,
    pub code_ok: bool,
    pub uffd_wp_vmas: usize,
    pub progress: Vec<u64>,
    pub regions: Vec<usize>,
}

impl Target {
    pub fn start(args: &[&str]) -> Target {
        let mut child = Command::new(EXE)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ww-target");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "{line}");
        let pid = child.id();
        Target {
            child,
            pid,
            stdin,
            out,
        }
    }

    /// [`status`](Self::status) once no range of the target is registered with a userfaultfd
    /// any more, or after 5 s (the caller's assertion then fails). The kernel unregisters the
    /// ranges when the last reference to the userfaultfd goes, and that is not always the
    /// tracker's `close`: a child that another test of this binary is spawning at that moment
    /// holds a copy of every descriptor between its `clone` and its `execve` (close-on-exec),
    /// which kept 29 ranges registered at the first `status` in a clean-clone CI run
    /// (2026-11-30).
    pub fn status_untracked(&mut self) -> Status {
        let t0 = std::time::Instant::now();
        loop {
            let s = self.status();
            if s.uffd_wp_vmas == 0 || t0.elapsed() > std::time::Duration::from_secs(5) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn status(&mut self) -> Status {
        writeln!(self.stdin, "status").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} in {line}"))
                .to_string()
        };
        Status {
            regs_ok: field("regs_ok") == "1",
            code_ok: field("code_ok") == "1",
            uffd_wp_vmas: field("uffd_wp_vmas").parse().unwrap(),
            progress: field("progress")
                .split(',')
                .map(|v| v.parse().unwrap())
                .collect(),
            regions: field("regions")
                .split(',')
                .map(|v| usize::from_str_radix(v, 16).unwrap())
                .collect(),
        }
    }

    /// Sends a command (`fw K`, `fz K`, `exec`) and waits for its `ok`.
    pub fn cmd(&mut self, c: &str) {
        assert_eq!(self.cmd_reply(c), "ok", "{c}");
    }

    /// Sends a command and returns its answer line (trimmed).
    pub fn cmd_reply(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").unwrap();
        self.line()
    }

    /// The next line the target prints (trimmed), e.g. `ready PID` after an `exec`.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Whether any thread of the target is stopped (`T` or `t` in its task's stat).
    pub fn any_thread_stopped(&self) -> bool {
        std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .unwrap()
            .flatten()
            .any(|e| {
                let s = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                s.rfind(')')
                    .and_then(|i| s[i + 2..].chars().next())
                    .is_some_and(|c| c == 'T' || c == 't')
            })
    }

    /// The process state letter from /proc/PID/stat (`T` stopped, `S`/`R` running).
    pub fn state(&self) -> char {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        let after = &s[s.rfind(')').unwrap() + 2..];
        after.chars().next().unwrap()
    }

    pub fn resume(&self) {
        unsafe_free_kill(self.pid, "CONT");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the tests run as root (ptrace of a non-child, mounting a tmpfs).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Starts `ww-target dump PID DIR 1000 5` (a dumper the tests signal) and returns it once
/// it printed `round N` (its stdout reader positioned after that line).
pub fn dumper_at_round(
    pid: u32,
    dir: &std::path::Path,
    round: u32,
) -> (Child, BufReader<ChildStdout>) {
    let mut dumper = Command::new(EXE)
        .args(["dump", &pid.to_string(), dir.to_str().unwrap(), "1000", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(dumper.stdout.take().unwrap());
    let mut line = String::new();
    let want = format!("round {round}");
    while !line.starts_with(&want) {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "dumper ended early");
    }
    (dumper, out)
}

/// A tmpfs of `size` mounted by the test (root only) on `dir`; unmounted on drop.
pub struct Tmpfs {
    pub dir: std::path::PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount a tmpfs on {}", dir.display());
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills the file system with `name` (ours, inside the mount) until ENOSPC.
    pub fn fill(&self, name: &str) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.dir.join(name)).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.write_all(&[0u8; 1]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// `kill -SIG PID` without unsafe code in the tests.
pub fn unsafe_free_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Reads `len` bytes at `addr` of a process through /proc/PID/mem (the tests' oracle: an
/// independent reader, not the dumper's process_vm_readv).
pub fn read_mem(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr).unwrap();
    buf
}

/// A temporary directory for images: on tmpfs (`/dev/shm`) when there is one, so the tests'
/// many small `fsync`ed commits do not wait on a shared disk.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temporary directory")
}
