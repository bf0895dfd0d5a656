//! `/metrics` (Prometheus text, rendered by the exporter) and `/healthz` on `PG2ES_METRICS_ADDR`,
//! HTTP/1.1 only, one task per connection.

use crate::settings::PG2ES_HEALTH_MAX_AGE_SEC;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// What `/healthz` judges by.
#[derive(Debug, Clone, Copy)]
pub struct HealthBound {
    pub max_age: Duration,
    pub started: DateTime<Utc>,
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, bound: HealthBound) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(&req, &handle, bound)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond<B>(req: &Request<B>, handle: &PrometheusHandle, bound: HealthBound) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        resp
    };
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            // Lags grow between cycles: brought up to date at each scrape.
            let _ = super::all_health();
            reply(StatusCode::OK, "text/plain; version=0.0.4", handle.render())
        }
        "/healthz" => {
            let (status, body) = healthz(Utc::now(), bound);
            reply(status, "text/plain", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "/metrics or /healthz\n".into()),
    }
}

/// 200 when every document is healthy, 503 otherwise; one line per document either way.
fn healthz(now: DateTime<Utc>, bound: HealthBound) -> (StatusCode, String) {
    let mut body = String::new();
    let mut ok = true;
    for (name, health) in super::all_health() {
        match health.unhealthy(now, bound.started, bound.max_age) {
            None => body.push_str(&format!("{name}: ok\n")),
            Some(why) => {
                ok = false;
                body.push_str(&format!("{name}: failing: {why} (bound {PG2ES_HEALTH_MAX_AGE_SEC}={})\n", bound.max_age.as_secs()));
            }
        }
    }
    if body.is_empty() {
        body.push_str("no document started yet\n");
    }
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}
