//! A real `redis-server` (Debian's) on a free loopback port, without persistence; plain or TLS only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// With TLS: the CA (PEM file) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    pub password: Option<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, &["--port", &port.to_string()], None)
    }

    /// A redis-server that wants `password` (AUTH) from every client.
    pub fn start_with_password(password: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self::spawn(port, &["--port", &port.to_string(), "--requirepass", password], None);
        server.password = Some(password.to_string());
        server
    }

    /// A redis-server that speaks TLS only, its certificate (for 127.0.0.1) signed by a CA made
    /// for the test and written to `dir/ca.pem`.
    pub fn start_tls(dir: &Path) -> Self {
        let ca = super::pki::TestCa::new("redis test CA");
        let ca_file = ca.write_ca(dir, "ca.pem");
        let super::pki::Pair {
            cert: cert_file,
            key: key_file,
        } = ca.server(dir, "redis");

        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let args = [
            "--port".to_string(),
            "0".to_string(),
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".to_string(),
            path(&cert_file),
            "--tls-key-file".to_string(),
            path(&key_file),
            "--tls-ca-cert-file".to_string(),
            path(&ca_file),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn(port, &args, Some(ca_file))
    }

    fn spawn(port: u16, listen: &[&str], ca_file: Option<PathBuf>) -> Self {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("redis-server is not installed: run scripts/test, which installs it");
        let child = Command::new(binary)
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            port,
            ca_file,
            password: None,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca_file.is_some() { "rediss" } else { "redis" };
        let auth = self.password.as_ref().map_or(String::new(), |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every key and its raw value.
    pub async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let ca_pem = self.ca_file.as_ref().map(|ca| std::fs::read(ca).unwrap());
        let client = token_broker::tokens::redis_client(&self.url(), ca_pem.as_deref()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
        let mut out = Vec::new();
        for key in keys {
            let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.unwrap();
            out.push((key, value.unwrap_or_default()));
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die cleanly.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill();
    }
}
