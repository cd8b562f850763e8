//! Which `object_store` implementation a URL names, configured the way each provider's
//! ecosystem expects: the environment first (`AmazonS3Builder::from_env`: `AWS_*`;
//! `GoogleCloudStorageBuilder::from_env`: `GOOGLE_SERVICE_ACCOUNT`,
//! `GOOGLE_SERVICE_ACCOUNT_KEY`, `GOOGLE_APPLICATION_CREDENTIALS`, ...;
//! `MicrosoftAzureBuilder::from_env`: `AZURE_STORAGE_ACCOUNT_NAME`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_ENDPOINT`, ...), then
//! [`RemoteOptions::config`] on top (the same keys in lower case), then the URL.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;

use super::{install_crypto, split_url, RemoteOptions, UrlProblem};

/// Applies `config` to a builder through its `with_config`, parsing each key as `K`.
fn configure<B, K>(
    mut b: B,
    config: &[(String, String)],
    with: impl Fn(B, K, &str) -> B,
) -> Result<B, UrlProblem>
where
    K: std::str::FromStr,
    K::Err: std::fmt::Display,
{
    for (k, v) in config {
        let key: K = k
            .parse()
            .map_err(|e| format!("configuration key {k}: {e}"))?;
        b = with(b, key, v);
    }
    Ok(b)
}

/// A build failure, with what to set when it is a missing setting.
fn build_problem(e: object_store::Error, hint: &str) -> UrlProblem {
    format!("{e} ({hint})")
}

/// One provider's store: its environment, then [`RemoteOptions::config`], then the URL and
/// the retry settings; `$hint` says what to set when the build fails.
macro_rules! build_provider {
    ($builder:ty, $key:ty, $url:expr, $o:expr, $retry:expr, $hint:expr) => {{
        let b = configure(<$builder>::from_env(), &$o.config, |b, k: $key, v| {
            b.with_config(k, v)
        })?;
        b.with_url($url)
            .with_retry($retry)
            .build()
            .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            .map_err(|e| build_problem(e, $hint))
    }};
}

/// The `object_store` client for `url` (no request is made).
pub(crate) fn build_store(
    url: &str,
    o: &RemoteOptions,
) -> Result<Arc<dyn ObjectStore>, UrlProblem> {
    // Some builders make their HTTP client in `build()`: the TLS provider must be in place.
    install_crypto();
    let (scheme, _, _) = split_url(url)?;
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: o.initial_backoff,
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: o.max_retries,
        retry_timeout: o.retry_timeout,
    };
    match scheme {
        "s3" | "s3a" => build_provider!(
            object_store::aws::AmazonS3Builder,
            object_store::aws::AmazonS3ConfigKey,
            url,
            o,
            retry,
            "set AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"
        ),
        #[cfg(feature = "gcs")]
        "gs" => build_provider!(
            object_store::gcp::GoogleCloudStorageBuilder,
            object_store::gcp::GoogleConfigKey,
            url,
            o,
            retry,
            "set GOOGLE_SERVICE_ACCOUNT (a key file) or GOOGLE_SERVICE_ACCOUNT_KEY \
                         (its JSON) or GOOGLE_APPLICATION_CREDENTIALS"
        ),
        #[cfg(not(feature = "gcs"))]
        "gs" => Err(
            "gs:// support is not compiled in: build writewatch-checkpoint with the `gcs` feature"
                .into(),
        ),
        #[cfg(feature = "azure")]
        "az" | "abfs" | "abfss" | "azure" => build_provider!(
            object_store::azure::MicrosoftAzureBuilder,
            object_store::azure::AzureConfigKey,
            url,
            o,
            retry,
            "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or another \
                         AZURE_STORAGE_* credential); AZURE_STORAGE_ENDPOINT for an emulator"
        ),
        #[cfg(not(feature = "azure"))]
        "az" | "abfs" | "abfss" | "azure" => Err(
            "az:// support is not compiled in: build writewatch-checkpoint with the `azure` feature"
                .into(),
        ),
        other => Err(format!(
            "unsupported scheme `{other}://` (use a path, file://, s3://, gs:// or az://)"
        )),
    }
}

#[cfg(test)]
mod tests {
    //! gs:// and az:// are compiled and configured but not exercised against a server here
    //! (no emulator is installed by the set-up): these check that each URL reaches the
    //! right `object_store` implementation with its configuration, and that a missing or
    //! malformed credential and an unreachable endpoint are typed errors, bounded in time.

    use super::*;
    use crate::{OpenError, RemoteErrorKind, Store};

    /// Few, quick retries: an unreachable endpoint fails in well under a second.
    fn opts(config: &[(&str, &str)]) -> RemoteOptions {
        RemoteOptions {
            max_retries: 1,
            retry_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(10),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..RemoteOptions::default()
        }
    }

    /// `f` must return within `secs` (it runs on its own thread).
    fn bounded<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ww-test-bounded".into())
            .spawn(move || {
                let _ = tx.send(f());
            })
            .unwrap();
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("did not finish in time (hang)")
    }

    /// Base64 of 64 zero bytes: a well-formed (if useless) Azure account key.
    const AZURE_KEY: &str =
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn unreachable_is_transport(url: &'static str, o: RemoteOptions) {
        let r = bounded(60, move || {
            Store::open_url_with(url, &o, false, false).map(|_| ())
        });
        match r {
            Err(OpenError::Io(e)) => {
                assert_eq!(e.remote_kind(), Some(RemoteErrorKind::Transport), "{e:?}")
            }
            other => panic!("{url} on an unreachable endpoint: {other:?}"),
        }
    }

    #[test]
    fn s3_urls_build_amazon_s3_for_their_bucket() {
        let o = opts(&[
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "k"),
            ("aws_secret_access_key", "s"),
        ]);
        let s = build_store("s3://my-bucket/some/prefix", &o).unwrap();
        assert_eq!(s.to_string(), "AmazonS3(my-bucket)");
        let bad = opts(&[("aws_no_such_key", "x")]);
        let e = build_store("s3://b/p", &bad).err().unwrap();
        assert!(e.contains("aws_no_such_key"), "{e}");
    }

    #[cfg(feature = "gcs")]
    #[test]
    fn gs_urls_build_google_cloud_storage_with_its_configuration() {
        let o = opts(&[("google_bearer_token", "token")]);
        let s = build_store("gs://my-bucket/some/prefix", &o).unwrap();
        assert_eq!(s.to_string(), "GoogleCloudStorage(my-bucket)");
        // A malformed service-account key: a typed error naming what to set.
        let bad = opts(&[("google_service_account_key", "{not json")]);
        match Store::open_url_with("gs://b/p", &bad, false, false) {
            Err(e @ OpenError::InvalidLocation { .. }) => {
                assert!(e.to_string().contains("GOOGLE_SERVICE_ACCOUNT"), "{e}")
            }
            other => panic!("bad service account key: {other:?}"),
        }
    }

    #[cfg(feature = "gcs")]
    #[test]
    fn gs_unreachable_endpoint_is_a_transport_error() {
        let o = opts(&[
            ("google_bearer_token", "token"),
            ("google_base_url", "http://127.0.0.1:1"),
            ("google_allow_http", "true"),
        ]);
        unreachable_is_transport("gs://b/p", o);
    }

    #[cfg(feature = "azure")]
    #[test]
    fn az_urls_build_microsoft_azure_with_its_configuration() {
        let o = opts(&[
            ("azure_storage_account_name", "acct"),
            ("azure_storage_account_key", AZURE_KEY),
        ]);
        for url in ["az://ctr/some/prefix", "azure://ctr/p"] {
            let s = build_store(url, &o).unwrap();
            assert_eq!(
                s.to_string(),
                "MicrosoftAzure { account: acct, container: ctr }"
            );
        }
        // A malformed account key: a typed error naming what to set.
        let bad = opts(&[
            ("azure_storage_account_name", "acct"),
            ("azure_storage_account_key", "not base64!"),
        ]);
        match Store::open_url_with("az://ctr/p", &bad, false, false) {
            Err(e @ OpenError::InvalidLocation { .. }) => {
                assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT_KEY"), "{e}")
            }
            other => panic!("bad account key: {other:?}"),
        }
        // No account at all (unless the environment names one).
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
            match Store::open_url_with("az://ctr/p", &opts(&[]), false, false) {
                Err(e @ OpenError::InvalidLocation { .. }) => {
                    assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT_NAME"), "{e}")
                }
                other => panic!("no account: {other:?}"),
            }
        }
    }

    #[cfg(feature = "azure")]
    #[test]
    fn az_unreachable_endpoint_is_a_transport_error() {
        let o = opts(&[
            ("azure_storage_account_name", "acct"),
            ("azure_storage_account_key", AZURE_KEY),
            ("azure_storage_endpoint", "http://127.0.0.1:1"),
            ("azure_allow_http", "true"),
        ]);
        unreachable_is_transport("az://ctr/p", o);
    }
}
