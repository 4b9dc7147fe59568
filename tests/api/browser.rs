//! access-token-provider.js in real headless Chromium: runs tests/browser/*.test.mjs (node's test
//! runner, playwright-core driving Debian's /usr/bin/chromium) against the binary under test.
//! scripts/test installs Chromium and playwright-core; this test fails, rather than skips, without them.

use std::path::Path;
use std::process::Command;

/// Runs `file` of tests/browser with node's test runner against the binary under test; `env`
/// adds variables. Returns the report, having asserted that it passed.
fn run_browser_tests(file: &str, env: &[(&str, &std::ffi::OsStr)]) -> String {
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
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(&dir)
        .env("TOKEN_BROKER_BIN", env!("CARGO_BIN_EXE_token-broker"))
        .envs(env.iter().copied())
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(output.status.success(), "{file} failed:\n{report}");
    report
}

#[test]
fn the_browser_client_works_in_chromium() {
    let report = run_browser_tests("access-token-provider.test.mjs", &[]);
    assert!(
        report.contains("pass 11"),
        "all eleven browser tests ran and passed:\n{report}"
    );
}

/// The admin page in real Chromium: no console error, each upstream's state, sparklines; the
/// screenshot goes to target/tmp/admin-page.png for a person to look at.
#[test]
fn the_admin_page_loads_in_chromium_and_shows_each_upstream() {
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let report = run_browser_tests("admin-page.test.mjs", &[("SCREENSHOT", screenshot.as_os_str())]);
    assert!(
        report.contains("pass 2"),
        "both admin page tests ran and passed:\n{report}"
    );
    assert!(screenshot.exists(), "the screenshot was saved");
}

/// The client as frontend developers consume it: an npm package (`client/package.json`) that a
/// TypeScript app installs; `tsc --strict` checks the `.d.ts` against that use, esbuild bundles it.
#[test]
fn the_client_package_type_checks_strictly_and_bundles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client-package");
    let bin = dir.join("node_modules/.bin");
    assert!(
        bin.join("tsc").exists() && bin.join("esbuild").exists(),
        "typescript and esbuild are not installed: run `npm ci` in tests/client-package (scripts/test does it)"
    );
    let tsc = Command::new(bin.join("tsc")).arg("-p").arg(&dir).output().unwrap();
    assert!(
        tsc.status.success(),
        "tsc --strict refused the consumer:\n{}{}",
        String::from_utf8_lossy(&tsc.stdout),
        String::from_utf8_lossy(&tsc.stderr)
    );
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle.js");
    let esbuild = Command::new(bin.join("esbuild"))
        .arg(dir.join("consumer.ts"))
        .args(["--bundle", "--format=esm"])
        .arg(format!("--outfile={}", bundle.display()))
        .output()
        .unwrap();
    assert!(esbuild.status.success(), "{}", String::from_utf8_lossy(&esbuild.stderr));
    let bundled = std::fs::read_to_string(bundle).unwrap();
    assert!(bundled.contains("function createApiFetch") && bundled.contains("function createAccessTokenProvider"));
}
