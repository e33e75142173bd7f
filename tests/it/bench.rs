//! `tickethold bench` runs end to end: a small flash sale on the embedded flow, checked by the
//! bench itself (no oversell, no undersell, every expiry announced), and its JSON report.

use std::process::Command;

use crate::support::process::BINARY;

#[test]
fn a_small_flash_sale_passes_the_bench_checks() {
    let output = Command::new(BINARY)
        .args([
            "bench",
            "--flow",
            "sqlite",
            "--buyers",
            "200",
            "--capacity",
            "50",
        ])
        .args(["--concurrency", "8", "--ttl-secs", "1", "--json"])
        .output()
        .expect("run tickethold bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    let flow = &report["flows"][0];
    assert_eq!(flow["flow"], "sqlite", "{report}");
    assert_eq!(flow["attempts"], 200, "{report}");
    assert_eq!(flow["succeeded"], 50, "exactly the capacity: {report}");
    assert_eq!(flow["sold_out"], 150, "{report}");
    assert_eq!(flow["unannounced"], 0, "{report}");
    assert!(flow["expiry_expected"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(flow["failures"], serde_json::json!([]), "{report}");
    assert!(flow["holds_per_sec"].as_f64().unwrap() > 0.0, "{report}");
}
