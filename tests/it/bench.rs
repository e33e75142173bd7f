//! `tickethold bench` runs end to end: a small flash sale on the embedded flow, checked by the
//! bench itself (no oversell, no undersell, every expiry announced), with the references beside
//! it, and its JSON report, alone or as rounds with their summary; and a small crowd of
//! countdown subscribers, every tick of which must arrive.

use std::process::Command;

use crate::support::process::BINARY;

#[test]
fn a_small_flash_sale_passes_the_bench_checks() {
    let report = bench(&[
        "--flow",
        "sqlite",
        "--buyers",
        "200",
        "--capacity",
        "50",
        "--max-per-customer",
        "1",
        "--concurrency",
        "8",
        "--ttl-secs",
        "1",
        "--warmup",
        "40",
        "--references",
        "--json",
    ]);
    let flow = &report["flows"][0];
    assert_eq!(flow["flow"], "sqlite", "{report}");
    assert_eq!(flow["attempts"], 200, "{report}");
    assert_eq!(flow["succeeded"], 50, "exactly the capacity: {report}");
    assert_eq!(flow["sold_out"], 150, "{report}");
    assert_eq!(flow["unannounced"], 0, "{report}");
    assert!(flow["expiry_expected"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(flow["failures"], serde_json::json!([]), "{report}");
    assert!(flow["holds_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    // Its holds carried idempotency keys, as the buyer's page sends them, of a ticket type with a
    // limit per customer that each buyer's one hold meets.
    assert_eq!(report["workload"]["idempotency_keys"], true, "{report}");
    assert_eq!(report["workload"]["max_per_customer"], 1, "{report}");
    // The warm-up ran first, on an event of its own with a fifth as many tickets: it won all
    // 8 and released them, and none of its 40 attempts is counted above.
    assert_eq!(report["workload"]["warmup"], 40, "{report}");
    assert_eq!(flow["warmup_released"], 8, "{report}");
    // The references ran the same 200 buyers: the two engines sold exactly the 50 tickets of
    // their hot row, and the request floor answered every buyer.
    let references = report["references"].as_array().expect("references");
    let won: Vec<(&str, u64)> = references
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["succeeded"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        won,
        [
            ("naive PostgreSQL", 50),
            ("raw Redis", 50),
            ("request floor", 200)
        ],
        "{report}"
    );
    for reference in references {
        assert_eq!(reference["failed_requests"], 0, "{report}");
        assert!(
            reference["holds_per_sec"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}

/// `--rounds 2`: both rounds reported whole, and the summary of each flow's figures and of its
/// multiples of the references, taken within each round.
#[test]
fn rounds_are_reported_each_and_summarised() {
    let report = bench(
        &"--flow sqlite --buyers 60 --capacity 20 --concurrency 8 --ttl-secs 1 --warmup 0 \
          --references --rounds 2 --json"
            .split_whitespace()
            .collect::<Vec<_>>(),
    );
    let rounds = report["rounds"].as_array().expect("the rounds");
    assert_eq!(rounds.len(), 2, "{report}");
    for round in rounds {
        assert_eq!(round["flows"][0]["succeeded"], 20, "{report}");
        assert_eq!(round["references"].as_array().unwrap().len(), 3, "{report}");
    }
    let summary = &report["summary"];
    assert_eq!(summary["rounds"], 2, "{report}");
    assert!(summary["median_round"].as_u64().unwrap() < 2, "{report}");
    let flow = &summary["flows"][0];
    assert_eq!(flow["flow"], "sqlite", "{report}");
    let rates: Vec<f64> = rounds
        .iter()
        .map(|round| round["flows"][0]["holds_per_sec"].as_f64().unwrap())
        .collect();
    let holds = &flow["holds_per_sec"];
    assert_eq!(
        holds["min"].as_f64().unwrap(),
        rates[0].min(rates[1]),
        "{report}"
    );
    assert_eq!(
        holds["max"].as_f64().unwrap(),
        rates[0].max(rates[1]),
        "{report}"
    );
    let floor = &flow["multiples"][2];
    assert_eq!(floor["reference"], "request floor", "{report}");
    let multiples: Vec<f64> = rounds
        .iter()
        .map(|round| {
            let flow = round["flows"][0]["holds_per_sec"].as_f64().unwrap();
            flow / round["references"][2]["holds_per_sec"].as_f64().unwrap()
        })
        .collect();
    let median = (multiples[0] + multiples[1]) / 2.0;
    let summarised = floor["times"]["median"].as_f64().unwrap();
    assert!((summarised - median).abs() < 1e-9, "{median} {report}");
}

#[test]
fn a_small_crowd_gets_every_countdown_tick() {
    let report = bench(
        &"--crowd --flow sqlite --crowd-holds 300 --crowd-subscribers 50 --crowd-seconds 3 --json"
            .split_whitespace()
            .collect::<Vec<_>>(),
    );
    assert_eq!(report["target"], "sqlite", "{report}");
    assert_eq!(report["holds_created"], 300, "{report}");
    assert_eq!(report["subscribers_open"], 50, "{report}");
    let received = report["ticks_received"].as_u64().unwrap();
    assert!(received >= 50 * 2, "about one tick a second each: {report}");
    assert_eq!(report["ticks_missing"], 0, "{report}");
    for percentile in ["p50", "p90", "p99", "max"] {
        assert!(report["tick_lag_ms"][percentile].is_f64(), "{report}");
    }
    assert!(
        report["server_peak_rss_mb"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
}

/// Runs `tickethold bench` with `args` (and the test's PostgreSQL and Redis), which must succeed,
/// and reads its JSON report.
fn bench(args: &[&str]) -> serde_json::Value {
    let output = Command::new(BINARY)
        .arg("bench")
        .args(args)
        .args(["--postgres-url", &crate::support::db::postgres_admin_url()])
        .args(["--redis-url", &crate::support::db::redis_url()])
        .output()
        .expect("run tickethold bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).expect("a JSON report")
}
