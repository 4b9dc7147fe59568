//! OpenTelemetry traces: with `[telemetry] otlp_endpoint` set, a token request's trace reaches an
//! OTLP/HTTP receiver (here a stand-in that keeps the protobuf bodies, decoded with the OTLP
//! protobuf definitions) with a span per request and children for authentication, the cache and
//! the token endpoint; the token endpoint and the proxied API receive `traceparent` of the same
//! trace; a `traceparent` is continued only from a trusted proxy.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// An OTLP/HTTP receiver: accepts every export at /v1/traces.
async fn receiver() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

/// The spans of trace `trace_id` the receiver got, waiting (bounded) until `wanted` have come.
async fn spans_of(receiver: &MockServer, trace_id: &[u8], wanted: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut spans = Vec::new();
        for request in receiver.received_requests().await.unwrap_or_default() {
            assert_eq!(
                request.headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/x-protobuf")
            );
            let export = ExportTraceServiceRequest::decode(request.body.as_slice()).expect("OTLP protobuf");
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .map(|a| format!("{:?}", a.value));
                assert!(service.is_some_and(|s| s.contains("token-broker")), "service.name");
                for scope in resource.scope_spans {
                    spans.extend(scope.spans.into_iter().filter(|s| s.trace_id == trace_id));
                }
            }
        }
        if spans.len() >= wanted || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `traceparent`'s trace id and parent span id, as bytes.
fn parse_traceparent(value: &str) -> (Vec<u8>, Vec<u8>) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (hex::decode(parts[1]).unwrap(), hex::decode(parts[2]).unwrap())
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name} in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

fn with_telemetry(toml: &str, receiver: &MockServer) -> String {
    format!("{toml}\n[telemetry]\notlp_endpoint = \"{}\"\n", receiver.uri())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_requests_trace_arrives_with_its_spans_and_the_token_endpoint_sees_the_same_trace() {
    let receiver = receiver().await;
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = TestApp::spawn(&with_telemetry(
        &config(&format!("{}/token", upstream.uri()), "client_secret_post"),
        &receiver,
    ))
    .await;
    assert_eq!(
        app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await.status(),
        200
    );

    let requests = upstream.received_requests().await.unwrap();
    let traceparent = requests[0]
        .headers
        .get("traceparent")
        .expect("the token request carries traceparent")
        .to_str()
        .unwrap();
    let (trace_id, parent_of_upstream) = parse_traceparent(traceparent);

    let spans = spans_of(&receiver, &trace_id, 4).await;
    let request = named(&spans, "GET /v1/token/{upstream}");
    assert!(request.parent_span_id.is_empty(), "the request span is the root");
    assert_eq!(request.kind, 2, "SPAN_KIND_SERVER");
    let authenticate = named(&spans, "authenticate");
    let cache = named(&spans, "cache");
    let endpoint = named(&spans, "token endpoint");
    assert_eq!(authenticate.parent_span_id, request.span_id);
    assert_eq!(cache.parent_span_id, request.span_id);
    assert_eq!(
        endpoint.parent_span_id, cache.span_id,
        "the fetch happens within the cache lookup"
    );
    assert_eq!(endpoint.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(
        endpoint.span_id, parent_of_upstream,
        "the token endpoint's traceparent names the token endpoint span"
    );
    let text = format!("{spans:?}");
    assert!(
        !text.contains("token-1") && !text.contains(ALICE_KEY),
        "no token or key in spans"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_from_a_trusted_proxy_only() {
    let receiver = receiver().await;
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post");
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    for (trusted, scope) in [(true, "reports:read"), (false, "reports:write")] {
        let toml = if trusted {
            toml.replacen("workers = 2", "workers = 2\ntrusted_proxies = [\"127.0.0.1/32\"]", 1)
        } else {
            toml.clone()
        };
        let app = TestApp::spawn(&with_telemetry(&toml, &receiver)).await;
        let response = app
            .http
            .get(app.token_url("triumph"))
            .query(&[("scope", scope)])
            .header("X-API-Key", ALICE_KEY)
            .header("traceparent", &traceparent)
            .header(
                "tracestate",
                (0..20)
                    .map(|i| format!("k{i}={}", "x".repeat(200)))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let requests = upstream.received_requests().await.unwrap();
        let sent = requests
            .last()
            .unwrap()
            .headers
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap();
        let (trace_id, _) = parse_traceparent(sent);
        assert!(
            requests.last().unwrap().headers.get("tracestate").is_none(),
            "a caller's tracestate is not passed on"
        );
        if trusted {
            assert_eq!(hex::encode(&trace_id), caller_trace, "continued from the trusted proxy");
            let spans = spans_of(&receiver, &trace_id, 1).await;
            let request = named(&spans, "GET /v1/token/{upstream}");
            assert_eq!(hex::encode(&request.parent_span_id), caller_span);
        } else {
            assert_ne!(
                hex::encode(&trace_id),
                caller_trace,
                "a new trace for an untrusted peer"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_calls_span_names_the_trace_the_api_receives() {
    let receiver = receiver().await;
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/reports/1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .mount(&api)
        .await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post").replacen(
        "[upstreams.other]",
        &format!(
            "[upstreams.triumph.proxy]\nurl = \"{}\"\npaths = [\"/reports/**\"]\n\n[upstreams.other]",
            api.uri()
        ),
        1,
    );
    let app = TestApp::spawn(&with_telemetry(&toml, &receiver)).await;
    let response = app
        .http
        .get(format!("{}/v1/proxy/triumph/reports/1", app.base))
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = api.received_requests().await.unwrap();
    let (trace_id, parent) = parse_traceparent(seen[0].headers.get("traceparent").unwrap().to_str().unwrap());
    let spans = spans_of(&receiver, &trace_id, 5).await;
    let call = named(&spans, "proxied call");
    assert_eq!(call.span_id, parent);
    assert_eq!(
        named(&spans, "GET /v1/proxy/{upstream}/{path}").span_id,
        call.parent_span_id
    );
}

#[test]
fn a_bad_otlp_endpoint_stops_start_up_naming_the_key() {
    let toml = format!(
        "{}\n[telemetry]\notlp_endpoint = \"grpc://collector:4317\"\n",
        config("https://as.example/token", "client_secret_post")
    );
    let problems = token_broker::settings::Settings::from_toml(&toml, &env())
        .unwrap_err()
        .to_string();
    assert!(problems.contains("telemetry.otlp_endpoint"), "{problems}");
}
