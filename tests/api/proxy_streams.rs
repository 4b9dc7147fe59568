//! Proxy mode with large and abandoned bodies, against the real binary: a gibibyte each way with
//! the broker's memory bounded, and a caller who goes away takes the API request with it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::helpers::process::{write, BrokerProcess};
use crate::helpers::*;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;

/// What the stand-in API saw.
#[derive(Default)]
struct Seen {
    uploaded: AtomicU64,
    upload_broke_off: AtomicBool,
    download_dropped: AtomicBool,
}

/// Sets its flag when dropped before `done` is called: the stream was abandoned midway.
struct DropGuard(Arc<Seen>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.download_dropped.store(true, Ordering::SeqCst);
        }
    }
}

/// An API that streams `/v2/download/{bytes}`, counts `/v2/upload`, and trickles `/v2/slow`.
fn start_api(seen: Arc<Seen>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(seen.clone()))
            .route(
                "/v2/download/{bytes}",
                web::get().to(|path: web::Path<u64>| async move {
                    let total = path.into_inner();
                    let chunks = total.div_ceil(CHUNK as u64);
                    let body = futures_util::stream::iter(0..chunks).map(move |i| {
                        let size = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
                        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))
                    });
                    HttpResponse::Ok().body(actix_web::body::SizedStream::new(total, body))
                }),
            )
            .route(
                "/v2/upload",
                web::post().to(|mut payload: web::Payload, seen: web::Data<Arc<Seen>>| async move {
                    let mut total = 0u64;
                    while let Some(chunk) = payload.next().await {
                        match chunk {
                            Ok(bytes) => total += bytes.len() as u64,
                            Err(_) => {
                                seen.upload_broke_off.store(true, Ordering::SeqCst);
                                return HttpResponse::BadRequest().finish();
                            }
                        }
                    }
                    seen.uploaded.store(total, Ordering::SeqCst);
                    HttpResponse::Ok().body(total.to_string())
                }),
            )
            .route(
                "/v2/slow",
                web::get().to(|seen: web::Data<Arc<Seen>>| async move {
                    let guard = DropGuard(seen.get_ref().clone(), false);
                    let body = futures_util::stream::unfold(guard, |guard| async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"tick\n")), guard))
                    });
                    HttpResponse::Ok().streaming(body)
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    base
}

/// The stand-in API, a token endpoint and the broker binary proxying `triumph` to the API.
async fn setup() -> (Arc<Seen>, BrokerProcess, wiremock::MockServer, tempfile::TempDir) {
    let seen = Arc::new(Seen::default());
    let api = start_api(seen.clone());
    let tokens = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), &format!("{}/token", tokens.uri()), &api);
    (seen, broker, tokens, dir)
}

fn start_broker(dir: &std::path::Path, token_url: &str, api: &str) -> BrokerProcess {
    let toml = config(token_url, "client_secret_post").replacen(
        "timeout = \"2s\"",
        &format!(
            "timeout = \"2s\"\n\n[upstreams.triumph.proxy]\nurl = \"{api}/v2\"\nmethods = [\"GET\", \"POST\"]\npaths = [\"/download/*\", \"/upload\", \"/slow\"]\ntimeout = \"10m\"\nmax_body_bytes = 2147483648\n"
        ),
        1,
    );
    // At info, as operators run it: trace logging of a gibibyte of I/O would measure the log buffer.
    BrokerProcess::start(
        &write(dir, "broker.toml", &toml),
        &[("TRIUMPH_SECRET", CLIENT_SECRET), ("RUST_LOG", "info")],
    )
}

/// The most memory the process has held (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_through_each_way_with_the_brokers_memory_bounded() {
    let (seen, broker, _tokens, _dir) = setup().await;
    let http = reqwest::Client::new();
    let small = http
        .get(format!("{}/v1/proxy/triumph/download/1024", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(small.bytes().await.unwrap().len(), 1024);
    let before = peak_rss_mib(broker.pid());

    let started = Instant::now();
    let download = http
        .get(format!("{}/v1/proxy/triumph/download/{GIB}", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let mut received = 0u64;
    let mut stream = download.bytes_stream();
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, GIB);
    let down = started.elapsed();
    let after_download = peak_rss_mib(broker.pid());

    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let body = futures_util::stream::iter(0..(GIB / CHUNK as u64)).map(move |_| {
        counter.fetch_add(CHUNK as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; CHUNK]))
    });
    let upload = http
        .post(format!("{}/v1/proxy/triumph/upload", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    assert_eq!(upload.text().await.unwrap(), GIB.to_string());
    assert_eq!(seen.uploaded.load(Ordering::SeqCst), GIB);
    let up = started.elapsed();

    let peak = peak_rss_mib(broker.pid());
    println!("1 GiB down in {down:?}, up in {up:?}; broker peak RSS {before:.1} MiB before, {after_download:.1} MiB after the download, {peak:.1} MiB after");
    // Bounded, not proportional: 2 GiB moved through, and the most the broker ever held grew by a
    // few buffers and what the allocator keeps (the debug build starts near 50 MiB; the release
    // build's peak is in docs/performance.md).
    assert!(
        peak - before < 40.0,
        "the broker's peak grew by {:.1} MiB",
        peak - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_goes_away_takes_the_api_request_with_it() {
    let (seen, broker, _tokens, _dir) = setup().await;
    let http = reqwest::Client::new();

    // A download the caller stops reading and drops.
    let response = http
        .get(format!("{}/v1/proxy/triumph/slow", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"tick\n");
    drop(stream);
    // An upload the caller abandons midway.
    let body = futures_util::stream::iter(0..100u32).then(|i| async move {
        if i == 20 {
            return Err(std::io::Error::other("the caller went away"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(Bytes::from(vec![b'z'; 64 * 1024]))
    });
    let abandoned = http
        .post(format!("{}/v1/proxy/triumph/upload", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    assert!(abandoned.is_err(), "the caller's own request failed");

    let deadline = Instant::now() + Duration::from_secs(5);
    while !(seen.download_dropped.load(Ordering::SeqCst) && seen.upload_broke_off.load(Ordering::SeqCst)) {
        assert!(
            Instant::now() < deadline,
            "the API still serves an abandoned request: download dropped {}, upload broke off {}",
            seen.download_dropped.load(Ordering::SeqCst),
            seen.upload_broke_off.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.uploaded.load(Ordering::SeqCst), 0, "no abandoned upload completed");
}
