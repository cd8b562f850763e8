//! The helper target process, driven over its stdin/stdout.
#![allow(dead_code)]

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

    /// Sends a command (`fw K`, `fz K`) and waits for its `ok`.
    pub fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "{c}");
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
