//! A token endpoint that misbehaves at the TCP level, where wiremock cannot: it resets the
//! connection, never sends headers, or streams a body without end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
pub enum Misbehaviour {
    /// Reads the request, then closes with a TCP reset.
    Reset,
    /// Reads the request and never answers (for 30 s at most).
    NoHeaders,
    /// Answers 200 with a chunked body that never ends (for 30 s at most).
    EndlessBody,
}

pub struct Rogue {
    pub url: String,
    /// Body bytes written before the client hung up.
    pub bytes_sent: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

pub async fn start(behaviour: Misbehaviour) -> Rogue {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let bytes_sent = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (sent, count) = (bytes_sent.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                match behaviour {
                    Misbehaviour::Reset => {
                        let _ = socket.set_zero_linger();
                        drop(socket);
                    }
                    Misbehaviour::NoHeaders => tokio::time::sleep(Duration::from_secs(30)).await,
                    Misbehaviour::EndlessBody => {
                        let head =
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                        if socket.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "x".repeat(16 * 1024));
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                        while tokio::time::Instant::now() < deadline {
                            if socket.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                            sent.fetch_add(16 * 1024, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    Rogue {
        url,
        bytes_sent,
        connections,
    }
}
