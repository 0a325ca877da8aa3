//! Outgoing HTTP from tasks (`wasi:http`): refused unless granted with
//! `--allow-http`, and — when the tracing hook enabled the `http-client`
//! instrumentation — each request a CLIENT span whose W3C `traceparent`
//! header goes out with the request.

use std::sync::Arc;

use http_body_util::BodyExt as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, Tracer as _};
use opentelemetry_sdk::trace::SdkTracer;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::config::http_allowed;
use crate::sandbox::host_call;
use crate::telemetry::context::{context_with_parent, traceparent};

/// Decides and traces a store's outgoing requests.
#[derive(Debug)]
pub(crate) struct HttpHooks {
    allowed: Arc<Vec<String>>,
    /// The tracer, when the `http-client` instrumentation is on.
    tracer: Option<SdkTracer>,
    /// The guest's current span when the request is sent.
    pub(crate) parent: SpanContext,
}

impl HttpHooks {
    pub(crate) fn new(allowed: Arc<Vec<String>>, tracer: Option<SdkTracer>) -> Self {
        Self {
            allowed,
            tracer,
            parent: SpanContext::empty_context(),
        }
    }
}

type Response = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Response> + Send> {
        let _call = host_call("wasi:http/outgoing-handler#handle");
        let uri = request.uri().clone();
        let host = uri.host().unwrap_or_default().to_owned();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !http_allowed(&self.allowed, &host, port) {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let span = self.tracer.as_ref().map(|tracer| {
            let method = request.method().as_str().to_owned();
            let span = tracer
                .span_builder(method.clone())
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("http.request.method", method),
                    KeyValue::new("url.full", uri.to_string()),
                    KeyValue::new("server.address", host.clone()),
                    KeyValue::new("server.port", i64::from(port)),
                ])
                .start_with_context(tracer, &context_with_parent(Some(self.parent.clone())));
            if let Some(header) = traceparent(span.span_context())
                && let Ok(value) = http::HeaderValue::from_str(&header)
            {
                request.headers_mut().insert("traceparent", value);
            }
            span
        });
        Box::new(async move {
            let sent = wasmtime_wasi_http::default_send_request(request, options).await;
            if let Some(mut span) = span {
                match &sent {
                    Ok((response, _)) => {
                        let status = response.status().as_u16();
                        span.set_attribute(KeyValue::new(
                            "http.response.status_code",
                            i64::from(status),
                        ));
                        if status >= 400 {
                            span.set_status(Status::error(format!("HTTP {status}")));
                        }
                    }
                    Err(error) => span.set_status(Status::error(error.to_string())),
                }
                span.end();
            }
            let (response, io) = sent?;
            Ok((
                response.map(|body| body.boxed_unsync()),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

/// Adds `wasi:http/outgoing-handler` (and its types) to `linker`: every
/// request goes through the store's [`HttpHooks`], which refuse what
/// `--allow-http` does not grant.
pub(crate) fn add_to_linker<T: wasmtime_wasi_http::WasiHttpView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)
}
