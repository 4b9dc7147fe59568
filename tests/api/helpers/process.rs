//! The real binary as an operator runs it: `token-broker serve --config FILE`, its JSON log lines
//! collected from stderr, signals sent with kill(1).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct BrokerProcess {
    child: Child,
    pub base: String,
    pub admin: String,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BrokerProcess {
    /// Starts the binary on `config` with `env`, and waits for its "listening" line.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_token-broker"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("token-broker listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the broker says it is listening");
        let json: Value = serde_json::from_str(&line).expect("log lines are JSON");
        Self {
            child,
            base: format!("http://{}", json["listen"].as_str().unwrap()),
            admin: format!("http://{}", json["admin_listen"].as_str().unwrap()),
            logs,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the broker gracefully (SIGTERM; SIGKILL after 10 s), so the log lines it still
    /// buffers are written, and waits until every line is read.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (bounded) until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        self.wait_for_log_after(0, needle, within)
    }

    /// Waits (bounded) until a log line after the first `skip` contains `needle`.
    pub fn wait_for_log_after(&self, skip: usize, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.logs().into_iter().skip(skip).find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} in:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the broker did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    /// Every test that runs the binary (at trace level) also checks its logs for secrets.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        }
        // A graceful stop, so the lines still buffered in the broker are written and checked too.
        self.stop();
        for line in self.logs() {
            for canary in [super::CLIENT_SECRET, super::ALICE_KEY, super::BOB_KEY, super::CAROL_KEY] {
                assert!(!line.contains(canary), "a secret or key in a log line: {line}");
            }
            let token = line
                .match_indices("\"token-")
                .any(|(i, m)| line[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
            assert!(!token, "an access token in a log line: {line}");
        }
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
