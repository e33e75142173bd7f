//! The buyer's page (`web/`) in a real browser: the real binary in dev mode, and
//! `tests/browser/buyer-page.mjs` driving headless Chromium through playwright-core against it
//! (hold, countdown, expiry on time, checkout, a second buyer moving the stock live, a dropped
//! connection, a sold-out message), ending with a screenshot; `TICKETHOLD_UPDATE_SCREENSHOT=1`
//! makes it the README's `docs/buyer-page.png`. Needs Node.js and Chromium (`/usr/bin/chromium`,
//! or `$CHROMIUM`); the test installs playwright-core (`npm ci --prefix tests/browser`) when it
//! is missing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::Process;

/// The script stops itself after 90 s; this only catches a Node that hangs.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread")]
async fn the_buyer_page_works_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playwright = root.join("tests/browser/node_modules/playwright-core");
    if !playwright.is_dir() {
        let installed = std::process::Command::new("npm")
            .args(["ci", "--prefix", "tests/browser", "--no-audit", "--no-fund"])
            .current_dir(root)
            .status()
            .expect("run npm (is Node.js installed?)");
        assert!(installed.success(), "npm ci --prefix tests/browser failed");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let screenshot = if std::env::var_os("TICKETHOLD_UPDATE_SCREENSHOT").is_some() {
        root.join("docs/buyer-page.png")
    } else {
        dir.path().join("buyer-page.png")
    };
    let env = [
        (
            "DATABASE_URL",
            format!("sqlite://{}/t.db?mode=rwc", dir.path().display()),
        ),
        // `true`, not `1`: a clap bool flag read from the environment takes true or false.
        ("TICKETHOLD_DEV", "true".to_owned()),
    ];
    let server = Process::start(&env, dir.path()).await;

    let script = tokio::process::Command::new("node")
        .arg("tests/browser/buyer-page.mjs")
        .arg(format!("http://{}", server.addr))
        .arg(&screenshot)
        .current_dir(root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, script)
        .await
        .unwrap_or_else(|_| panic!("buyer-page.mjs did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("run node (is Node.js installed?)");
    assert!(
        output.status.success(),
        "buyer-page.mjs failed ({}):\n{}\n{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.log_text()
    );
}
