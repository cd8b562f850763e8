//! `az://` against a real Azure Blob emulator, Azurite (npm `azurite`), started on a loopback
//! port by this test and stopped by it. Opt-in: `#[ignore]`d, run by `make azurite-test`,
//! which installs Azurite and `@azure/storage-blob` (to create the container) with npm
//! into `target/azurite` and points `WW_AZURITE_DIR` there.
//!
//! 1. `uffd-demo --dir az://...` twice (a new store, then continued: the manifest replaced
//!    by ETag), then `writewatch verify` and `restore` of every epoch; each image must match
//!    the reference the demo took from live memory at its cut (`reference_digests`).
//! 2. A stale writer loses with `WriteError::Conflict`, and the store stays whole.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod demo_support;

use demo_support::{built, demo_args, restore_each_epoch_matches, run};
use writewatch::checkpoint::{RemoteOptions, SliceSource, Store, WriteError};
use writewatch_testkit::watchdog;

/// Azurite's documented development account (public, for the emulator only).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Azurite {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn azurite_dir() -> PathBuf {
    let dir = std::env::var_os("WW_AZURITE_DIR")
        .map(PathBuf::from)
        .expect("WW_AZURITE_DIR is not set: run `make azurite-test`");
    assert!(
        dir.join("node_modules/.bin/azurite-blob").exists(),
        "{}: no Azurite there: run `make azurite-test`",
        dir.display()
    );
    dir
}

impl Azurite {
    fn start(dir: &Path) -> Azurite {
        let data = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(dir.join("node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data.path())
            .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let a = Azurite {
            child,
            port,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `container` (object_store has no call for it) with `@azure/storage-blob`.
    fn create_container(&self, dir: &Path, container: &str) {
        let script = format!(
            "require('@azure/storage-blob').BlobServiceClient.fromConnectionString(\
             'DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};\
             BlobEndpoint={}/{ACCOUNT};').getContainerClient('{container}').createIfNotExists()\
             .then(() => process.exit(0), e => {{ console.error(e.message); process.exit(1); }});",
            self.url()
        );
        let o = Command::new("node")
            .env("NODE_PATH", dir.join("node_modules"))
            .args(["-e", &script])
            .output()
            .expect("run node");
        assert!(o.status.success(), "creating the container: {o:?}");
    }

    /// The environment object_store's Azure builder reads for the emulator.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url()),
            ("AZURE_ALLOW_HTTP", "true".into()),
        ]
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
#[ignore = "needs Azurite: make azurite-test"]
fn az_store_on_azurite_demo_cli_and_a_stale_writer() {
    watchdog(240, "az:// on Azurite", || {
        let dir = azurite_dir();
        let az = Azurite::start(&dir);
        az.create_container(&dir, "ctr");
        let url = "az://ctr/demo";
        let demo = built("examples/uffd-demo");
        let cli = built("writewatch");
        let demo_args = demo_args(url);
        let env = az.env();
        let mut digests = Vec::new();
        for (i, epochs) in [[0, 1], [2, 3]].iter().enumerate() {
            let o = run(&demo, &env, &demo_args);
            assert_eq!(o.status.code(), Some(0), "demo run {i}: {o:?}");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["verified"], true, "{v}");
            assert_eq!(v["store_epochs"], serde_json::json!(epochs), "{v}");
            for d in v["reference_digests"].as_array().unwrap() {
                digests.push(d.as_u64().unwrap());
            }
        }
        let o = run(&cli, &env, &args(&["verify", url]));
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        restore_each_epoch_matches(&cli, &env, url, &digests, 1 << 20);

        // A stale writer, through the library (the builder reads the emulator's URL from
        // the environment: this test is alone in its binary's process).
        for (k, v) in az.env() {
            std::env::set_var(k, v);
        }
        let opts = RemoteOptions::default();
        let url = "az://ctr/stale";
        let mut first = Store::create_url_with(url, &opts).unwrap();
        let base = vec![1u8; 64 * 4096];
        let src = SliceSource::new(&base, 4096).unwrap();
        first.write_base(&src).unwrap();
        let mut second = Store::open_url_with(url, &opts, false, false).unwrap();
        first.write_delta(1, &src, &[(0, 1)]).unwrap();
        match second.write_delta(1, &src, &[(1, 1)]) {
            Err(WriteError::Conflict(_)) => {}
            other => panic!("stale writer on Azurite: {other:?}"),
        }
        let report = first.verify().unwrap();
        assert!(report.is_ok() && report.leftovers.is_empty(), "{report:?}");
        assert_eq!(first.segments().len(), 2);
        assert!(first.restore(1).unwrap().as_slice() == &base[..]);
    });
}
