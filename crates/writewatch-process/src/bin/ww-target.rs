//! `ww-target`: the helper program the writewatch-process tests dump.
//!
//! `ww-target [--pages N] [--churn] [--stay] [--file-zap PATH] [--file-map PATH]` starts 4 threads that stamp pages of their own
//! anonymous regions (`N` pages each): thread `t` writes counter `c` into every word of page
//! `c % N`, then publishes `c` in its progress word. With `--churn` a fifth thread maps,
//! writes, `mremap`s and unmaps regions all the time; with `--file-zap PATH` another writes
//! pages of a private mapping of PATH and drops them with `MADV_DONTNEED`. The main thread runs a loop that
//! holds magic values in r12-r15 and checks them every iteration (x86_64): an attach that
//! did not restore registers exactly is caught. It prints `ready PID` and then answers
//! `status` on stdin with
//! `status regs_ok=B code_ok=B uffd_wp_vmas=N progress=P0,P1,P2,P3 regions=A0,A1,A2,A3`.
//!
//! Commands on stdin besides `status`: `fork` (a child overwrites its copies of the stamp
//! regions in a loop; answers `ok CHILD_PID`), `exec` (answers `ok`, then execs itself with
//! the same `--pages`: the new program prints `ready PID` again).
//!
//! `ww-target dump PID DIR ROUNDS INTERVAL_MS`: dumps another process (a dumper the tests
//! can SIGKILL mid-round).

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

static REGS_BAD: AtomicBool = AtomicBool::new(false);
static FILE_MAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn anon(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    p.cast()
}

/// The checksum of this program's executable mappings, read through /proc/self/mem.
fn code_sum() -> u64 {
    use std::os::unix::fs::FileExt;
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let mut sum = 0u64;
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || std::path::Path::new(f[5]) != exe {
            continue;
        }
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.read_exact_at(&mut buf, a).is_ok() {
            for (i, &x) in buf.iter().enumerate() {
                sum = sum.wrapping_mul(31).wrapping_add(u64::from(x) ^ i as u64);
            }
        }
    }
    sum
}

/// VMAs with the userfaultfd write-protect flag (`uw` in smaps VmFlags).
fn uffd_wp_vmas() -> usize {
    std::fs::read_to_string("/proc/self/smaps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw"))
        .count()
}

#[cfg(target_arch = "x86_64")]
fn register_loop() {
    loop {
        let bad: u64;
        // SAFETY: pure register arithmetic; r12-r15 are declared clobbered.
        unsafe {
            std::arch::asm!(
                "mov r12, 0x1111",
                "mov r13, 0x2222",
                "mov r14, 0x3333",
                "mov r15, 0x4444",
                "mov {cnt}, 20000000",
                "2:",
                "cmp r12, 0x1111",
                "jne 3f",
                "cmp r13, 0x2222",
                "jne 3f",
                "cmp r14, 0x3333",
                "jne 3f",
                "cmp r15, 0x4444",
                "jne 3f",
                "dec {cnt}",
                "jnz 2b",
                "xor {bad:e}, {bad:e}",
                "jmp 4f",
                "3:",
                "mov {bad:e}, 1",
                "4:",
                cnt = out(reg) _,
                bad = out(reg) bad,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            );
        }
        if bad != 0 {
            REGS_BAD.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn register_loop() {
    loop {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn churn() {
    let ps = 4096;
    let mut round = 0u64;
    // A ring of live mappings: each turn maps one, writes it, grows it with mremap (which
    // may move it), writes it again, and unmaps the oldest once 8 are live.
    let mut live: std::collections::VecDeque<(usize, usize)> = Default::default();
    loop {
        round += 1;
        let n = 4 + (round % 8) as usize;
        let p = anon(n * ps);
        for i in 0..n {
            // SAFETY: inside the fresh mapping of n pages.
            unsafe { p.add(i * ps).cast::<u64>().write_volatile(round) };
        }
        // SAFETY: p is our mapping of n pages; grow it (may move).
        let q = unsafe { libc::mremap(p.cast(), n * ps, 2 * n * ps, libc::MREMAP_MAYMOVE) };
        assert_ne!(q, libc::MAP_FAILED, "mremap");
        let q: *mut u8 = q.cast();
        for i in 0..2 * n {
            // SAFETY: inside the grown mapping.
            unsafe { q.add(i * ps).cast::<u64>().write_volatile(round + i as u64) };
        }
        live.push_back((q as usize, 2 * n * ps));
        if live.len() > 8 {
            let (a, len) = live.pop_front().unwrap();
            // SAFETY: our mapping; nothing refers to it any more.
            unsafe { libc::munmap(a as *mut libc::c_void, len) };
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Writes pages of a private file mapping (COW copies) and drops them again with
/// `MADV_DONTNEED` (they revert to the file's content), all the time.
fn file_zap(path: String) {
    use std::os::fd::AsRawFd;
    let ps = 4096;
    let n = 16;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("file");
    f.set_len((n * ps) as u64).expect("set_len");
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0x5a; n * ps], 0).expect("fill");
    // SAFETY: a fresh private mapping of the file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap file");
    let p: *mut u8 = p.cast();
    let mut c = 0u64;
    loop {
        c += 1;
        let k = (c as usize) % n;
        // SAFETY: inside the mapping.
        unsafe { p.add(k * ps).cast::<u64>().write_volatile(c) };
        std::thread::sleep(Duration::from_millis(3));
        // SAFETY: our mapping; the page reverts to the file's content.
        unsafe { libc::madvise(p.add(k * ps).cast(), ps, libc::MADV_DONTNEED) };
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Maps 16 pages of PATH privately (filled with 0x5a) for the `fw K` / `fz K` commands.
fn file_map(path: &str) -> usize {
    use std::os::fd::AsRawFd;
    let ps = 4096;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("file");
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0x5a; 16 * ps], 0).expect("fill");
    // SAFETY: a fresh private mapping of the file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            16 * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap file");
    p as usize
}

fn target(pages: usize, churn_on: bool, stay: bool, zap_file: Option<String>) {
    let ps = 4096;
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let mut regions = Vec::new();
    for t in 0..4 {
        let base = anon(pages * ps) as usize;
        regions.push(base);
        let progress = progress.clone();
        std::thread::Builder::new()
            .name(format!("stamp-{t}"))
            .spawn(move || {
                let mut c = 0u64;
                loop {
                    c += 1;
                    let page = (base + (c as usize % pages) * ps) as *mut u64;
                    for w in 0..ps / 8 {
                        // SAFETY: inside this thread's own mapping of `pages` pages.
                        unsafe { page.add(w).write_volatile(c) };
                    }
                    progress[t].store(c, Ordering::Release);
                    if c % 64 == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
            .expect("spawn");
    }
    if churn_on {
        std::thread::Builder::new()
            .name("churn".into())
            .spawn(churn)
            .expect("spawn");
    }
    if let Some(path) = zap_file {
        std::thread::Builder::new()
            .name("file-zap".into())
            .spawn(move || file_zap(path))
            .expect("spawn");
    }
    let code0 = code_sum();
    std::thread::Builder::new()
        .name("regs".into())
        .spawn(register_loop)
        .expect("spawn");
    println!("ready {}", std::process::id());
    let _ = std::io::stdout().flush();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("fork") => {
                println!("ok {}", fork_scribbler(&regions, pages));
                let _ = std::io::stdout().flush();
                continue;
            }
            Some("exec") => {
                use std::os::unix::process::CommandExt;
                println!("ok");
                let _ = std::io::stdout().flush();
                // Only returns on failure; the new program prints `ready PID` (same pid).
                let e = std::process::Command::new("/proc/self/exe")
                    .args(["--pages", &pages.to_string()])
                    .exec();
                panic!("exec: {e}");
            }
            _ => {}
        }
        if let (Some(&cmd), Some(k), Some(base)) = (
            words.first(),
            words.get(1).and_then(|k| k.parse::<usize>().ok()),
            FILE_MAP.get(),
        ) {
            let page = (base + (k % 16) * 4096) as *mut u8;
            match cmd {
                // SAFETY: inside the 16-page private file mapping.
                "fw" => unsafe { page.cast::<u64>().write_volatile(0xdead_beef) },
                // SAFETY: our mapping; the page reverts to the file's content.
                "fz" => unsafe {
                    libc::madvise(page.cast(), 4096, libc::MADV_DONTNEED);
                },
                _ => {}
            }
            println!("ok");
            let _ = std::io::stdout().flush();
            continue;
        }
        if line.trim() == "status" {
            let p: Vec<String> = progress
                .iter()
                .map(|a| a.load(Ordering::Acquire).to_string())
                .collect();
            let r: Vec<String> = regions.iter().map(|a| format!("{a:x}")).collect();
            println!(
                "status regs_ok={} code_ok={} uffd_wp_vmas={} progress={} regions={}",
                u8::from(!REGS_BAD.load(Ordering::SeqCst)),
                u8::from(code_sum() == code0),
                uffd_wp_vmas(),
                p.join(","),
                r.join(",")
            );
            let _ = std::io::stdout().flush();
        }
    }
    if stay {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Forks a child that overwrites its copies of the stamp regions with `u64::MAX` in a loop
/// until this process dies (`PR_SET_PDEATHSIG`). Returns the child's pid.
fn fork_scribbler(regions: &[usize], pages: usize) -> i32 {
    let regions: Vec<usize> = regions.to_vec(); // allocated before the fork
                                                // SAFETY: the child only does async-signal-safe work (prctl, volatile stores, nanosleep)
                                                // and never returns into Rust code that could take a lock held by another thread.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child > 0 {
        return child;
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    };
    loop {
        for &r in &regions {
            for w in 0..pages * 4096 / 8 {
                // SAFETY: the child's own copy of a stamp region of `pages` pages.
                unsafe { (r as *mut u64).add(w).write_volatile(u64::MAX) };
            }
        }
        // SAFETY: a valid timespec; a null remainder is allowed.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("dump") {
        let pid: u32 = args[2].parse().expect("pid");
        writewatch_process::catch_sigint().expect("SIGINT handler");
        let opts = writewatch_process::DumpOptions {
            rounds: args[4].parse().expect("rounds"),
            interval: Duration::from_millis(args[5].parse().expect("interval")),
            ..Default::default()
        };
        let mut progress = |r: &writewatch_process::RoundReport| {
            println!("round {} pages {}", r.round, r.pages);
            let _ = std::io::stdout().flush();
        };
        match writewatch_process::dump(pid, args[3].as_ref(), opts, Some(&mut progress)) {
            Ok(r) => println!("done freeze_ms={:.3}", r.freeze_ms),
            Err(e) => println!("error {e}"),
        }
        let _ = std::io::stdout().flush();
        return;
    }
    if args.get(1).map(String::as_str) == Some("run") {
        // ww-target run DIR ROUNDS PROG ARGS...: start PROG tracked from its first
        // instruction, dump it, wait for it.
        let rest: Vec<std::ffi::OsString> = args[4..].iter().map(Into::into).collect();
        let s = writewatch_process::spawn_tracked(&rest[0], &rest[1..]).expect("spawn");
        let mut child = s.child;
        let opts = writewatch_process::DumpOptions {
            rounds: args[3].parse().expect("rounds"),
            interval: Duration::from_millis(10),
            ..Default::default()
        };
        match writewatch_process::dump_attached_process(s.attached, args[2].as_ref(), opts, None) {
            Ok(r) => println!("done freeze_ms={:.3} ranges={}", r.freeze_ms, r.ranges),
            Err(e) => println!("error {e}"),
        }
        let st = child.wait().expect("wait");
        println!("exit {st}");
        return;
    }
    let mut pages = 64;
    let mut churn_on = false;
    let mut stay = false;
    let mut zap_file = None;
    let mut map_file = None;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--pages" => {
                pages = args[i + 1].parse().expect("--pages N");
                i += 1;
            }
            "--churn" => churn_on = true,
            // A private file mapping written (`fw K`) and zapped (`fz K`) on command.
            "--file-map" => {
                map_file = Some(args[i + 1].clone());
                i += 1;
            }
            "--file-zap" => {
                zap_file = Some(args[i + 1].clone());
                i += 1;
            }
            // Keep running after stdin closes (until killed).
            "--stay" => stay = true,
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    if let Some(path) = map_file {
        let _ = FILE_MAP.set(file_map(&path));
    }
    target(pages, churn_on, stay, zap_file);
}
