//! How an example or check program ends: its result as an exit status.

use std::process::ExitCode;

/// `SUCCESS` for `Ok`; for `Err`, prints `"<name>: FAILED: <error>"` to standard error and
/// returns `FAILURE` (so `make test` sees the failure).
///
/// ```
/// use std::process::ExitCode;
/// assert_eq!(writewatch_testkit::exit_code("demo", Ok::<(), String>(())), ExitCode::SUCCESS);
/// assert_eq!(writewatch_testkit::exit_code("demo", Err("oracle")), ExitCode::FAILURE);
/// ```
pub fn exit_code<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
