//! OpenTelemetry traces, off unless `[telemetry] otlp_endpoint` is set: a span per request with
//! children for authentication, the cache, the token endpoint and the proxied call, exported over
//! OTLP/HTTP (protobuf) in batches. W3C `traceparent` is taken from trusted proxies only, and sent
//! to the token endpoint and the proxied API.
//!
//! Each broker holds its own [`Tracing`] (no global state, so tests can run several). The tracer
//! travels with the request in the OpenTelemetry [`Context`]: code deeper down opens a child span
//! only when the context it runs in carries one, so with telemetry off nothing is created at all.

use std::future::Future;
use std::time::Duration;

use futures_util::future::Either;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// `[telemetry]` as the tracer uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended); `None`: no traces.
    pub otlp_endpoint: Option<url::Url>,
    pub service_name: String,
}

/// How long spans wait in a batch before they are sent, and how long one export may take.
const EXPORT_DELAY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker's tracer and the provider that exports its spans.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// What a request's context carries so that deeper code can open child spans.
#[derive(Clone)]
struct ActiveTracer(SdkTracer);

impl Tracing {
    /// The tracer for `settings`, or `None` when traces are off. Must be called inside a Tokio
    /// runtime: exports are sent from it.
    pub fn new(settings: &TelemetrySettings, http: reqwest::Client) -> Result<Option<Self>, String> {
        let Some(endpoint) = &settings.otlp_endpoint else {
            return Ok(None);
        };
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let traces_url = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(traces_url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(OnTokio {
                http,
                runtime: tokio::runtime::Handle::current(),
            })
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("token-broker");
        Ok(Some(Self { provider, tracer }))
    }

    /// The request's span: a child of the caller's `traceparent` when `trusted` (the request came
    /// through a trusted proxy), else the root of a new trace. Returns the context to run the
    /// request in.
    pub fn request_context(
        &self,
        headers: &actix_web::http::header::HeaderMap,
        trusted: bool,
        method: &str,
    ) -> Context {
        // Only `traceparent` is taken: a caller's `tracestate` (unbounded, vendor data) is neither
        // kept in spans nor passed on to the token endpoint or the API.
        let parent = if trusted {
            TraceContextPropagator::new().extract(&ActixHeaders(headers))
        } else {
            Context::new()
        };
        let span = self
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.to_string())])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span).with_value(ActiveTracer(self.tracer.clone()))
    }

    /// Sends the spans still waiting; blocks, so call it off the async threads.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(error = %error, "telemetry: the last spans could not be exported");
        }
    }
}

/// Names the request's span after its route and records the status, once the answer is known.
pub fn finish_request(cx: &Context, method: &str, route: &str, status: u16) {
    let span = cx.span();
    span.update_name(format!("{method} {route}"));
    span.set_attribute(KeyValue::new("http.route", route.to_string()));
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    if status >= 500 {
        span.set_status(Status::error(format!("status {status}")));
    }
}

/// Runs `work` inside a child span `name` of the current request's span; without one (telemetry
/// off, or work outside a request) it is `work` itself. Not an `async fn`: that would hold `work`
/// twice (as given and inside the span's wrapper) and copy it on every call.
pub fn in_span<F: Future>(name: &'static str, kind: SpanKind, work: F) -> Either<F, WithContext<F>> {
    let parent = Context::current();
    match parent.get::<ActiveTracer>() {
        None => Either::Left(work),
        Some(ActiveTracer(tracer)) => {
            let span = tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(tracer, &parent);
            Either::Right(work.with_context(parent.with_span(span)))
        }
    }
}

/// Adds `traceparent` (and `tracestate`) for the current span to an outgoing request's headers,
/// when a trace is being recorded.
pub fn inject(headers: &mut reqwest::header::HeaderMap) {
    let cx = Context::current();
    if cx.get::<ActiveTracer>().is_some() {
        TraceContextPropagator::new().inject_context(&cx, &mut ReqwestHeaders(headers));
    }
}

struct ActixHeaders<'a>(&'a actix_web::http::header::HeaderMap);

/// Reads `traceparent` only: a caller's `tracestate` (unbounded vendor data) is neither kept in
/// spans nor passed on to the token endpoint or the API.
impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if !key.eq_ignore_ascii_case("traceparent") {
            return None;
        }
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct ReqwestHeaders<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for ReqwestHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The exporter's HTTP client: the batch processor calls it from a thread of its own, so each
/// request is run on the broker's Tokio runtime with the broker's reqwest client.
#[derive(Debug)]
struct OnTokio {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnTokio {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let mut request = reqwest::Request::try_from(request)?;
        // A collector that never answers must not hold the exporter (and so all later spans).
        *request.timeout_mut() = Some(EXPORT_TIMEOUT);
        let http = self.http.clone();
        let (status, body) = self
            .runtime
            .spawn(async move {
                let response = http.execute(request).await?;
                let status = response.status();
                Ok::<_, reqwest::Error>((status, response.bytes().await?))
            })
            .await??;
        let mut response = opentelemetry_http::Response::new(body);
        *response.status_mut() = status;
        Ok(response)
    }
}
