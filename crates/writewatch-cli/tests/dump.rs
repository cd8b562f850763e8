//! `writewatch dump` / `run` and the image side of inspect / verify / restore / compact, on a
//! real program (`/bin/sleep`, a child of the test: ptrace of a child is allowed under Yama
//! ptrace_scope 1).

use std::process::Command;

fn ww(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_writewatch"))
        .args(args)
        .output()
        .expect("run writewatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dump_a_real_program_then_inspect_verify_restore_compact() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let pid = sleeper.id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let img_s = img.to_str().unwrap();
    let (code, out, err) = ww(&[
        "--json",
        "dump",
        "--pid",
        &pid,
        "--dir",
        img_s,
        "--rounds",
        "2",
        "--interval",
        "10",
        "--verify",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["pid"].as_u64().unwrap().to_string(), pid);
    assert_eq!(v["verified"], serde_json::Value::Bool(true));
    assert!(v["ranges"].as_u64().unwrap() > 0);
    assert_eq!(v["rounds"].as_array().unwrap().len(), 4);
    assert!(v["freeze_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["total_ms"].as_f64().unwrap() > 0.0);
    // A second dump: generation 2.
    let (code, _, err) = ww(&["dump", "--pid", &pid, "--dir", img_s, "--rounds", "0"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ww(&["inspect", img_s]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("process image of pid {pid}, generation 2")),
        "{out}"
    );
    let (code, out, _) = ww(&["verify", img_s]);
    assert_eq!(code, 0, "{out}");
    let to = dir.path().join("out");
    let (code, out, err) = ww(&["restore", img_s, "--to", to.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(to.join("index.json")).unwrap()).unwrap();
    for f in index["files"].as_array().unwrap() {
        let len = std::fs::metadata(to.join(f["file"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(len, f["len"].as_u64().unwrap());
    }
    let (code, out, _) = ww(&["compact", img_s]);
    assert_eq!(code, 0);
    assert!(out.contains("removed 1 old generations"), "{out}");
    // Corrupt the index: verify reports a corruption (exit 1).
    let p = img.join("IMAGE");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len() - 2;
    b[n] ^= 1;
    std::fs::write(&p, b).unwrap();
    let (code, _, err) = ww(&["verify", img_s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("CRC-32C mismatch"), "{err}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn dump_of_a_missing_pid_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = ww(&[
        "dump",
        "--pid",
        "999999999",
        "--dir",
        dir.path().join("i").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no process with pid 999999999"), "{err}");
}

#[test]
fn run_starts_a_program_tracked_and_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let (code, out, err) = ww(&[
        "run",
        "--dir",
        img.to_str().unwrap(),
        "--rounds",
        "1",
        "--interval",
        "10",
        "--",
        "sleep",
        "2",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("exit status: 0"), "{out}");
    assert!(img.join("IMAGE").exists());
}
