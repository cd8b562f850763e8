//! A real Azure Blob server for the `az://` tests: Azurite (npm `azurite`, pinned by the
//! Makefile's `azurite` target, which `make test`'s set-up runs: installed once into
//! `target/azurite` with `@azure/storage-blob`, used to create containers). One server per
//! test binary ([`Azurite::shared`]), on a free loopback port, its data in a fresh temporary
//! directory. The server is started through a small `sh` wrapper that reads its standard
//! input until end of file and then stops Azurite and removes the data: the test process
//! holds the write end of that pipe, so the server goes away when the test binary exits,
//! however it exits (statics are never dropped; a killed process still closes its pipes).
//! Feature `s3`.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use writewatch_checkpoint::RemoteOptions;

use crate::spawn::{free_port, spawn_quiet, wait_ready};

/// Azurite's documented development account (public, for the emulator only).
pub const ACCOUNT: &str = "devstoreaccount1";
/// The development account's key (public, for the emulator only).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where Azurite is installed: `WW_AZURITE_DIR`, else the workspace's `target/azurite`
/// (where `make azurite` puts it). Panics with what to run when it is not there.
pub fn azurite_dir() -> PathBuf {
    let dir = std::env::var_os("WW_AZURITE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // crates/writewatch-testkit -> the workspace root.
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/azurite")
        });
    assert!(
        dir.join("node_modules/.bin/azurite-blob").exists()
            && dir.join("node_modules/@azure/storage-blob").exists(),
        "Azurite (the local Azure Blob server the az:// tests run against) is not installed \
         in {}: run `make azurite` (npm install --prefix target/azurite azurite@3.35.0 \
         @azure/storage-blob@12; needs node and npm)",
        dir.display()
    );
    dir
}

/// A running Azurite blob service.
pub struct Azurite {
    /// The `sh` wrapper (its stdin: closing it stops Azurite).
    child: Mutex<(Child, Option<ChildStdin>)>,
    /// The loopback port it listens on.
    pub port: u16,
    dir: PathBuf,
}

/// Stops Azurite when stdin reaches end of file, removes its data, and exits when Azurite
/// exits (so a server that could not start is seen as an exited child). A background job
/// of `sh` reads `/dev/null` unless told otherwise: the pipe is handed over as fd 3.
const WRAPPER: &str = r#"exec 3<&0
d=$(mktemp -d "${TMPDIR:-/tmp}/ww-azurite.XXXXXX") || exit 1
"$0" --blobHost 127.0.0.1 --blobPort "$1" --location "$d" --silent --disableTelemetry \
  --skipApiVersionCheck >/dev/null 2>&1 </dev/null 3<&- &
p=$!
(cat <&3 >/dev/null; kill $p 2>/dev/null) &
exec 3<&-
wait $p
rm -rf "$d""#;

impl Azurite {
    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static Azurite {
        static SERVER: OnceLock<Azurite> = OnceLock::new();
        SERVER.get_or_init(Azurite::start)
    }

    fn start() -> Azurite {
        let dir = azurite_dir();
        let bin = dir.join("node_modules/.bin/azurite-blob");
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = spawn_quiet(
                Command::new("sh")
                    .args(["-c", WRAPPER])
                    .arg(&bin)
                    .arg(port.to_string()),
                Stdio::piped(),
                &bin,
            );
            let stdin = child.stdin.take();
            if wait_ready(&mut child, port, Duration::from_secs(30), Self::answers) {
                return Azurite {
                    child: Mutex::new((child, stdin)),
                    port,
                    dir,
                };
            }
            drop(stdin);
            let _ = child.wait();
        }
        panic!("Azurite did not start");
    }

    /// Whether an HTTP server answers on `port` (Azurite accepts before it serves).
    fn answers(port: u16) -> bool {
        use std::io::Write;
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /devstoreaccount1?comp=list HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                   Connection: close\r\n\r\n";
        let mut head = [0u8; 5];
        s.write_all(req.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() && &head == b"HTTP/"
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `container` (object_store has no call for it) with `@azure/storage-blob`;
    /// an existing container is kept.
    pub fn create_container(&self, container: &str) {
        let script = format!(
            "require('@azure/storage-blob').BlobServiceClient.fromConnectionString(\
             'DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};\
             BlobEndpoint={}/{ACCOUNT};').getContainerClient('{container}').createIfNotExists()\
             .then(() => process.exit(0), e => {{ console.error(e.message); process.exit(1); }});",
            self.url()
        );
        let o = Command::new("node")
            .env("NODE_PATH", self.dir.join("node_modules"))
            .args(["-e", &script])
            .output()
            .expect("run node (needed to create an Azurite container)");
        assert!(o.status.success(), "creating container {container}: {o:?}");
    }

    /// Options pointing at this server through [`RemoteOptions::config`] alone (no
    /// environment: tests of one binary run in parallel threads), with quick retries.
    pub fn options(&self) -> RemoteOptions {
        RemoteOptions {
            part_size: 5 << 20,
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(20),
            config: [
                ("azure_storage_account_name", ACCOUNT.to_string()),
                ("azure_storage_account_key", KEY.to_string()),
                (
                    "azure_storage_endpoint",
                    format!("{}/{ACCOUNT}", self.url()),
                ),
                ("azure_allow_http", "true".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ..Default::default()
        }
    }

    /// The environment `object_store`'s Azure builder reads for this emulator (for child
    /// processes: the CLI, the demo).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url()),
            ("AZURE_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Ok(mut g) = self.child.lock() {
            g.1.take(); // end of file: the wrapper stops Azurite
            let _ = g.0.wait();
        }
    }
}
