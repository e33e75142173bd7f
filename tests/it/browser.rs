//! The pages in a real browser: the real binary in dev mode, and a script of `tests/browser/`
//! driving headless Chromium through playwright-core against it, ending with a screenshot;
//! `TICKETHOLD_UPDATE_SCREENSHOT=1` makes it the README's (`docs/`). Needs Node.js and Chromium
//! (`/usr/bin/chromium`, or `$CHROMIUM`); the tests install playwright-core
//! (`npm ci --prefix tests/browser`) when it is missing.
//!
//! - `buyer-page.mjs`, the buyer's page at `/`: hold, countdown, expiry on time, checkout, a
//!   second buyer moving the stock live, a dropped connection, a sold-out message.
//! - `graphiql.mjs`, GraphiQL at `/graphql`: loaded from the server alone (no CDN), a token in
//!   the headers pane reaching both a mutation over HTTP and a subscription's `connection_init`.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::support::Process;

/// The scripts stop themselves after 90 s; this only catches a Node that hangs.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread")]
async fn the_buyer_page_works_in_chromium() {
    run_browser_script("buyer-page.mjs", "buyer-page.png").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graphiql_works_offline_with_a_token_and_subscriptions() {
    run_browser_script("graphiql.mjs", "graphiql.png").await;
}

/// Runs `tests/browser/<script> <server url> <screenshot>` against a fresh server in dev mode
/// and fails with the script's output and the server's log unless it succeeds.
async fn run_browser_script(script: &str, screenshot_name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    install_playwright(root);
    let dir = tempfile::tempdir().expect("temp dir");
    let screenshot = if std::env::var_os("TICKETHOLD_UPDATE_SCREENSHOT").is_some() {
        root.join("docs").join(screenshot_name)
    } else {
        dir.path().join(screenshot_name)
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

    let run = tokio::process::Command::new("node")
        .arg(Path::new("tests/browser").join(script))
        .arg(format!("http://{}", server.addr))
        .arg(&screenshot)
        .current_dir(root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("run node (is Node.js installed?)");
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{}\n{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.log_text()
    );
}

/// `npm ci --prefix tests/browser`, unless playwright-core is there already; once at a time,
/// the tests running in parallel.
fn install_playwright(root: &Path) {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _installing = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    let playwright = root.join("tests/browser/node_modules/playwright-core");
    if playwright.is_dir() {
        return;
    }
    let installed = std::process::Command::new("npm")
        .args(["ci", "--prefix", "tests/browser", "--no-audit", "--no-fund"])
        .current_dir(root)
        .status()
        .expect("run npm (is Node.js installed?)");
    assert!(installed.success(), "npm ci --prefix tests/browser failed");
}
