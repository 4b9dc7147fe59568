//! access-token-provider.js in real headless Chromium: runs tests/browser/*.test.mjs (node's test
//! runner, playwright-core driving Debian's /usr/bin/chromium) against the binary under test.
//! scripts/test installs Chromium and playwright-core; this test fails, rather than skips, without them.

use std::path::Path;
use std::process::Command;

#[test]
fn the_browser_client_works_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test does it)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: apt-get install chromium (scripts/test does it)"
    );
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "access-token-provider.test.mjs"])
        .current_dir(&dir)
        .env("TOKEN_BROKER_BIN", env!("CARGO_BIN_EXE_token-broker"))
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(output.status.success(), "browser tests failed:\n{report}");
    assert!(
        report.contains("pass 9"),
        "all nine browser tests ran and passed:\n{report}"
    );
}
