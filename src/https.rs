//! The shared HTTPS client: hyper 1 through hyper-util's pooled client, TLS by rustls.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use tower::{util::BoxCloneSyncService, ServiceExt};

use crate::BoxError;

/// The response body of an [`HttpClient`].
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// A type-erased HTTP client, the bottom of every stack in this crate.
///
/// Anything that is a `Service<http::Request<Full<Bytes>>>` returning an `http::Response` can
/// be turned into one with [`into_http_client`]: wrap it in your own layers (headers, tracing,
/// a proxy) and hand it to [`PostHogBuilder::http_client`](crate::PostHogBuilder::http_client).
pub type HttpClient = BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody>, BoxError>;

/// The default client: HTTP/1.1 and HTTP/2 (negotiated by ALPN), connection reuse, TLS by
/// rustls with the `webpki-roots` (default feature) or `native-roots` trust store. Plain
/// `http://` is allowed too, for a local PostHog or the mock server.
///
/// Creating it needs no runtime; using it needs tokio.
pub fn default_client() -> HttpClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new();
    #[cfg(feature = "webpki-roots")]
    let connector = connector.with_webpki_roots();
    #[cfg(not(feature = "webpki-roots"))]
    let connector = match connector.with_native_roots() {
        Ok(c) => c,
        Err(e) => {
            // No trust anchors: every TLS handshake fails and is reported as a delivery error.
            tracing::error!(error = %e, "posthog: could not load the system's root certificates");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = connector
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector);
    into_http_client(client)
}

/// Erases any HTTP client service into an [`HttpClient`].
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use posthog_tower::https::{into_http_client, HttpClient};
///
/// // A client that answers 200 to everything, for a test.
/// let client: HttpClient = into_http_client(tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
/// }));
/// ```
pub fn into_http_client<C, B>(client: C) -> HttpClient
where
    C: tower_service::Service<Request<Full<Bytes>>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        client
            .map_err(Into::into)
            .map_response(|res: Response<B>| res.map(|b| b.map_err(Into::into).boxed())),
    )
}
