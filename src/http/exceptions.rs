//! Exceptions from the requests the layer handles: a handler that panics, an inner service
//! error, or a response whose status the user counts as a failure.

use std::{
    any::Any,
    fmt,
    future::Future,
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;

use super::request_flags::FlagSource;
use crate::{context::RequestContext, exception::Exception};

/// gRPC status codes (as `tonic::Code` numbers them) the layer reports by default: `UNKNOWN`
/// (2), `INTERNAL` (13), `UNAVAILABLE` (14) and `DATA_LOSS` (15).
const DEFAULT_GRPC_CODES: [i32; 4] = [2, 13, 14, 15];

/// Which responses count as failures: HTTP statuses in `400..=599`, and gRPC status codes
/// `1..=16` (a bit each).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExceptionRules {
    /// Bit `s - 400` for status `s`.
    statuses: [u64; 4],
    /// Bit `c` for gRPC code `c`.
    grpc: u32,
}

impl Default for ExceptionRules {
    /// 500–599 and gRPC `UNKNOWN`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`.
    fn default() -> Self {
        let mut rules = ExceptionRules {
            statuses: [0; 4],
            grpc: 0,
        };
        rules.set_statuses(500..=599);
        rules.set_grpc_codes(DEFAULT_GRPC_CODES);
        rules
    }
}

impl ExceptionRules {
    /// Counts exactly these HTTP statuses (those outside `400..=599` are ignored).
    pub(crate) fn set_statuses(&mut self, statuses: impl IntoIterator<Item = u16>) {
        self.statuses = [0; 4];
        for status in statuses {
            if let Some(bit) = status.checked_sub(400).filter(|bit| *bit < 200) {
                self.statuses[usize::from(bit / 64)] |= 1 << (bit % 64);
            }
        }
    }

    /// Counts exactly these gRPC codes (those outside `1..=16` are ignored).
    pub(crate) fn set_grpc_codes(&mut self, codes: impl IntoIterator<Item = i32>) {
        self.grpc = 0;
        for code in codes {
            if (1..=16).contains(&code) {
                self.grpc |= 1 << code;
            }
        }
    }

    #[inline]
    fn counts_status(&self, status: u16) -> bool {
        match status.checked_sub(400) {
            Some(bit) if bit < 200 => self.statuses[usize::from(bit / 64)] & (1 << (bit % 64)) != 0,
            _ => false,
        }
    }

    #[inline]
    fn counts_grpc(&self, code: u32) -> bool {
        code < 32 && self.grpc & (1 << code) != 0
    }
}

impl fmt::Debug for ExceptionRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statuses: Vec<u16> = (400..600).filter(|s| self.counts_status(*s)).collect();
        let grpc: Vec<u32> = (1..=16).filter(|c| self.counts_grpc(*c)).collect();
        f.debug_struct("ExceptionRules")
            .field("statuses", &statuses)
            .field("grpc_codes", &grpc)
            .finish()
    }
}

/// What the layer's response future needs to report a failed request.
pub(crate) struct Watch {
    rules: ExceptionRules,
    /// Whether the response may carry a gRPC status: gRPC runs over HTTP/2 only (looking the
    /// header up costs about 300 instructions, 2 % of a small request).
    grpc: bool,
    /// The route template axum matched, read when the request arrived.
    route: Option<Route>,
}

#[cfg(feature = "axum")]
type Route = axum::extract::MatchedPath;
#[cfg(not(feature = "axum"))]
type Route = std::convert::Infallible;

impl Watch {
    #[inline]
    pub(crate) fn new<B>(rules: ExceptionRules, request: &http::Request<B>) -> Self {
        #[cfg(feature = "axum")]
        let route = request.extensions().get::<Route>().cloned();
        #[cfg(not(feature = "axum"))]
        let route = {
            let _ = request;
            None
        };
        let grpc = rules.grpc != 0 && request.version() == http::Version::HTTP_2;
        Watch { rules, grpc, route }
    }

    fn route(&self) -> Option<&str> {
        #[cfg(feature = "axum")]
        return self.route.as_ref().map(Route::as_str);
        #[cfg(not(feature = "axum"))]
        match self.route {
            Some(never) => match never {},
            None => None,
        }
    }

    /// After a response: reports it when its status (or trailers-only gRPC status) counts.
    #[inline]
    pub(crate) fn answered(&self, status: u16, grpc_status: Option<u32>) {
        let grpc_failed = grpc_status.is_some_and(|code| self.rules.counts_grpc(code));
        if !grpc_failed && !self.rules.counts_status(status) {
            return;
        }
        self.report(|ctx| {
            let (type_name, message) = match grpc_status.filter(|_| grpc_failed) {
                Some(code) => (
                    "GrpcError",
                    format!(
                        "{} answered gRPC status {code} ({})",
                        ctx.path().unwrap_or("the call"),
                        grpc_code_name(code)
                    ),
                ),
                None => (
                    if status >= 500 {
                        "HttpServerError"
                    } else {
                        "HttpClientError"
                    },
                    format!(
                        "{} {} answered {status}{}",
                        ctx.method().unwrap_or("?"),
                        self.route().or(ctx.path()).unwrap_or("/"),
                        http::StatusCode::from_u16(status)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .map(|r| format!(" {r}"))
                            .unwrap_or_default()
                    ),
                ),
            };
            let mut exception =
                Exception::message_only(type_name, &message).property("$response_status", status);
            if let Some(code) = grpc_status {
                exception = exception.property("$grpc_status", code);
            }
            exception
        });
    }

    /// After an inner service error: reports it (unless the request has an exception already).
    pub(crate) fn failed<E: fmt::Display + 'static>(&self, error: &E) {
        self.report(|_| Exception::from_display(error).handled(false));
    }

    /// While a panic unwinds through the layer: reports it (unless the panic hook did).
    pub(crate) fn panicked(&self, payload: &(dyn Any + Send)) {
        self.report(|_| crate::exception::caught_panic(payload));
    }

    /// Captures the exception `build` makes for the current request, unless one was captured
    /// while handling it (by hand, or by the panic hook). The exception is recorded in the
    /// request's context, where the pageview finds it.
    #[cold]
    fn report(&self, build: impl FnOnce(&RequestContext) -> Exception) {
        // The layer's future runs in the request's scope: its context is current, and the
        // layer attached its state (with the client) to it.
        let Some(ctx) = RequestContext::current() else {
            return;
        };
        if ctx.exception().is_some() {
            return;
        }
        let Some(source) = ctx.layer_state::<FlagSource>() else {
            return;
        };
        let mut exception = build(&ctx);
        if let Some(route) = self.route() {
            exception = exception.property("$route", route);
        }
        // A refusal (rate limit, full queue) is counted and reported by the client itself.
        let _ = source.posthog().capture_autocaptured(exception);
    }

    /// Polls `inner`, reporting a panic that unwinds out of it (and letting it go on).
    #[inline]
    pub(crate) fn poll<F: Future>(
        &self,
        inner: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        // Only a landing pad on the way out of `poll`: nothing to pay unless it unwinds.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                self.panicked(&*payload);
                resume_unwind(payload)
            }
        }
    }

    /// Reports the inner service's outcome if it counts: an error, or a response whose
    /// status does.
    #[inline]
    pub(crate) fn outcome<B, E: fmt::Display + 'static>(&self, result: &Result<Response<B>, E>) {
        match result {
            Ok(response) => self.answered(
                response.status().as_u16(),
                self.grpc
                    .then(|| super::capture_pageviews::grpc_status(response.headers()))
                    .flatten(),
            ),
            Err(error) => self.failed(error),
        }
    }
}

/// A gRPC status code's name.
fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "unknown code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_count_what_they_are_given() {
        let default = ExceptionRules::default();
        assert!(default.counts_status(500) && default.counts_status(599));
        assert!(!default.counts_status(499) && !default.counts_status(600));
        assert!(!default.counts_status(200) && !default.counts_status(0));
        assert!(default.counts_grpc(13) && default.counts_grpc(2));
        assert!(!default.counts_grpc(0) && !default.counts_grpc(5) && !default.counts_grpc(99));

        let mut rules = default;
        rules.set_statuses([404, 503, 399, 600, 65535]);
        assert!(rules.counts_status(404) && rules.counts_status(503));
        assert!(!rules.counts_status(500) && !rules.counts_status(399));
        rules.set_grpc_codes([5, 0, -1, 17]);
        assert!(rules.counts_grpc(5));
        assert!(!rules.counts_grpc(0) && !rules.counts_grpc(13) && !rules.counts_grpc(17));
        assert_eq!(
            format!("{rules:?}"),
            "ExceptionRules { statuses: [404, 503], grpc_codes: [5] }"
        );
    }
}
