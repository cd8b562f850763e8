//! A real S3 server for the object-storage tests, benches and the demo test: `s3s-fs`
//! (installed by `make test`'s set-up, `make s3-server`: `cargo install s3s-fs --features
//! binary`), started on a free loopback port with its data in a temporary directory, and
//! killed when the [`S3Server`] is dropped. Also a loopback TCP proxy that can drop
//! connections ([`DroppingProxy`], fault injection). Feature `s3`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::spawn::{free_port, spawn_quiet, wait_ready};

use writewatch_checkpoint::RemoteOptions;

/// The access key id the test server accepts.
pub const ACCESS_KEY: &str = "wwtestkey";
/// The secret key the test server accepts.
pub const SECRET_KEY: &str = "wwtestsecret";

/// Where `s3s-fs` is: on `PATH`, or in `~/.cargo/bin`.
pub fn s3s_fs_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file());
    let in_cargo = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs"))
        .filter(|p| p.is_file());
    on_path.or(in_cargo).unwrap_or_else(|| {
        panic!(
            "s3s-fs (the local S3 server these tests run against) is not installed: \
             run `make s3-server` (cargo install s3s-fs --version 0.14.1 --features binary --locked)"
        )
    })
}

/// A running `s3s-fs`.
pub struct S3Server {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    root: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server with one bucket, `bucket`.
    pub fn start() -> S3Server {
        let bin = s3s_fs_binary();
        for _attempt in 0..5 {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("bucket")).unwrap();
            let port = free_port();
            let mut child = spawn_quiet(
                Command::new(&bin)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                    .arg(root.path()),
                Stdio::null(),
                &bin,
            );
            let up = |p| TcpStream::connect(("127.0.0.1", p)).is_ok();
            if wait_ready(&mut child, port, Duration::from_secs(20), up) {
                return S3Server { child, port, root };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's data directory (objects are files under `root/bucket/`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    /// Options pointing at `endpoint` with the right credentials and few, quick retries.
    pub fn options_for(endpoint: &str, secret: &str) -> RemoteOptions {
        RemoteOptions {
            part_size: 5 << 20,
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(20),
            config: [
                ("aws_endpoint", endpoint),
                ("aws_access_key_id", ACCESS_KEY),
                ("aws_secret_access_key", secret),
                ("aws_region", "us-east-1"),
                ("aws_allow_http", "true"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    /// [`options_for`](Self::options_for) this server with the right secret.
    pub fn options(&self) -> RemoteOptions {
        Self::options_for(&self.endpoint(), SECRET_KEY)
    }

    /// The environment that configures the same (for child processes: the CLI).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP proxy in front of a server. After `drop_after` bytes have gone
/// upstream (client to server) in total, every connection is cut (both directions shut
/// down) as soon as it carries more data: an endpoint that drops connections mid-upload.
pub struct DroppingProxy {
    /// The loopback port it listens on.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes that went upstream so far.
    pub forwarded: Arc<AtomicU64>,
}

impl DroppingProxy {
    /// Starts a proxy in front of `upstream` (a loopback port) that cuts connections once
    /// `drop_after` bytes went upstream.
    pub fn start(upstream: u16, drop_after: u64) -> DroppingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), forwarded.clone());
        let thread = std::thread::Builder::new()
            .name("ww-test-proxy".into())
            .spawn(move || {
                let mut conns = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                                continue;
                            };
                            conns.push(pipe(client, server, f.clone(), drop_after, s.clone()));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    for h in c {
                        let _ = h.join();
                    }
                }
            })
            .unwrap();
        DroppingProxy {
            port,
            stop,
            thread: Some(thread),
            forwarded,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pipe(
    client: TcpStream,
    server: TcpStream,
    total: Arc<AtomicU64>,
    drop_after: u64,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let timeout = Some(Duration::from_millis(100));
    client.set_read_timeout(timeout).unwrap();
    server.set_read_timeout(timeout).unwrap();
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = {
        let (total, stop) = (total.clone(), stop.clone());
        std::thread::Builder::new()
            .name("ww-test-proxy-up".into())
            .spawn(move || copy(client, server, Some((total, drop_after)), stop))
            .unwrap()
    };
    let down = std::thread::Builder::new()
        .name("ww-test-proxy-down".into())
        .spawn(move || copy(s2, c2, None, stop))
        .unwrap();
    vec![up, down]
}

fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: Option<(Arc<AtomicU64>, u64)>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let cut = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => break,
        };
        if let Some((total, limit)) = &budget {
            if total.fetch_add(n as u64, Ordering::Relaxed) + n as u64 > *limit {
                cut(&from, &to);
                return;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    cut(&from, &to);
}

impl Drop for DroppingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
