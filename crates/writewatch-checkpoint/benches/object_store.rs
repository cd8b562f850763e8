//! Upload and restore throughput of a store on object storage (a local `s3s-fs` server on a
//! loopback port), beside the local-disk store and a plain `object_store` multipart put and
//! parallel ranged get of the same bytes, in the same run.
//!
//! `cargo bench -p writewatch-checkpoint --bench object_store` (needs `s3s-fs`: `make
//! s3-server`). `WW_BENCH_MIB` sets the region size (default 128 MiB), `WW_BENCH_REPS` the
//! repetitions (default 3; the median is reported). Without `--bench` (as under `cargo test
//! --all-targets`) it does nothing.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use writewatch_checkpoint::{RemoteOptions, SliceSource, Store};
use writewatch_testkit::s3server::{self, S3Server};

const PS: usize = 4096;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn plain_store(server: &S3Server) -> std::sync::Arc<dyn ObjectStore> {
    let s = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(server.endpoint())
        .with_bucket_name("bucket")
        .with_access_key_id(s3server::ACCESS_KEY)
        .with_secret_access_key(s3server::SECRET_KEY)
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    std::sync::Arc::new(s)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mib: usize = std::env::var("WW_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let reps: usize = std::env::var("WW_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let len = mib << 20;
    let mut region = vec![0u8; len];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for w in region.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    let server = S3Server::start();
    let opts = RemoteOptions {
        config: server.options().config,
        ..RemoteOptions::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let plain = plain_store(&server);
    let (mut t_plain_put, mut t_plain_get) = (Vec::new(), Vec::new());
    let (mut t_obj_put, mut t_obj_get) = (Vec::new(), Vec::new());
    let (mut t_loc_put, mut t_loc_get) = (Vec::new(), Vec::new());
    let tmp = tempfile::tempdir().unwrap();
    for rep in 0..reps {
        // Plain object_store: the same bytes, same part size and concurrency.
        let path = object_store::path::Path::from(format!("plain/{rep}"));
        let t = Instant::now();
        rt.block_on(async {
            let up = plain.put_multipart(&path).await.unwrap();
            let mut w = WriteMultipart::new_with_chunk_size(up, opts.part_size);
            for chunk in region.chunks(4 << 20) {
                w.wait_for_capacity(opts.upload_concurrency).await.unwrap();
                w.write(chunk);
            }
            w.finish().await.unwrap();
        });
        t_plain_put.push(t.elapsed());
        let mut dst = vec![0u8; len];
        let t = Instant::now();
        rt.block_on(async {
            let batch = opts.fetch_batch as u64;
            let ranges: Vec<_> = (0..len as u64)
                .step_by(batch as usize)
                .map(|s| s..(s + batch).min(len as u64))
                .collect();
            let mut s = futures_util::stream::iter(ranges.clone().into_iter().map(|r| {
                let (store, path) = (plain.clone(), path.clone());
                tokio::spawn(async move { store.get_ranges(&path, &[r]).await })
            }))
            .buffered(opts.fetch_concurrency);
            let mut i = 0;
            while let Some(b) = s.next().await {
                let b = b.unwrap().unwrap();
                let r = &ranges[i];
                dst[r.start as usize..r.end as usize].copy_from_slice(&b[0]);
                i += 1;
            }
        });
        t_plain_get.push(t.elapsed());
        assert!(dst == region);
        drop(dst);
        rt.block_on(plain.delete(&path)).unwrap();

        // The store on object storage.
        let url = format!("s3://bucket/store{rep}");
        let mut store = Store::create_url_with(&url, &opts).unwrap();
        let src = SliceSource::new(&region, PS).unwrap();
        let t = Instant::now();
        store.write_base(&src).unwrap();
        t_obj_put.push(t.elapsed());
        let t = Instant::now();
        let m = store.restore(0).unwrap();
        t_obj_get.push(t.elapsed());
        assert!(m.as_slice() == &region[..]);
        drop(m);
        let _ = std::fs::remove_dir_all(server.data_dir().join(format!("bucket/store{rep}")));

        // The local-disk store (page cache warm on restore).
        let mut local = Store::create(tmp.path().join(format!("local{rep}"))).unwrap();
        let t = Instant::now();
        local.write_base(&src).unwrap();
        t_loc_put.push(t.elapsed());
        let t = Instant::now();
        let m = local.restore(0).unwrap();
        t_loc_get.push(t.elapsed());
        assert!(m.as_slice() == &region[..]);
        drop((m, local));
        let _ = std::fs::remove_dir_all(tmp.path().join(format!("local{rep}")));
    }
    let rows = [
        (
            "plain object_store put / get",
            median(t_plain_put),
            median(t_plain_get),
        ),
        (
            "store on s3:// (s3s-fs)",
            median(t_obj_put),
            median(t_obj_get),
        ),
        ("store on local disk", median(t_loc_put), median(t_loc_get)),
    ];
    println!("object_store bench: {mib} MiB region, median of {reps}, part {} MiB x {} in flight, fetch {} MiB x {}",
        opts.part_size >> 20, opts.upload_concurrency, opts.fetch_batch >> 20, opts.fetch_concurrency);
    println!("| | upload MB/s | restore MB/s |");
    println!("|---|---:|---:|");
    for (name, up, down) in rows {
        println!("| {name} | {:.0} | {:.0} |", mbps(len, up), mbps(len, down));
    }
    println!(
        "store / plain: upload {:.2}x, restore {:.2}x",
        rows[0].1.as_secs_f64() / rows[1].1.as_secs_f64(),
        rows[0].2.as_secs_f64() / rows[1].2.as_secs_f64()
    );
}
