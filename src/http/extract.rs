//! axum extractors for [`RequestFlags`] and [`RequestContext`] (feature `axum`).

use std::{convert::Infallible, fmt};

use axum_core::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, Response},
};
use http::{request::Parts, Extensions, StatusCode};

use super::RequestFlags;
use crate::context::RequestContext;

/// Rejection of the [`RequestFlags`] and [`RequestContext`] extractors when the request did
/// not go through [`PostHogLayer`](super::PostHogLayer): a 500 naming the missing layer.
/// Extract an `Option<...>` to handle that case yourself.
#[derive(Debug, Clone, Copy)]
pub struct MissingPostHogLayer {
    what: &'static str,
}

impl fmt::Display for MissingPostHogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} not found in the request extensions. Is `PostHogLayer` (`posthog.layer()`) applied to this route?",
            self.what
        )
    }
}

impl std::error::Error for MissingPostHogLayer {}

impl IntoResponse for MissingPostHogLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

macro_rules! extractor {
    ($ty:ty, $name:literal, $find:expr) => {
        impl<S: Send + Sync> FromRequestParts<S> for $ty {
            type Rejection = MissingPostHogLayer;

            async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
                $find(&parts.extensions).ok_or(MissingPostHogLayer { what: $name })
            }
        }

        impl<S: Send + Sync> OptionalFromRequestParts<S> for $ty {
            type Rejection = Infallible;

            async fn from_request_parts(
                parts: &mut Parts,
                _: &S,
            ) -> Result<Option<Self>, Self::Rejection> {
                Ok($find(&parts.extensions))
            }
        }
    };
}

extractor!(RequestFlags, "RequestFlags", |extensions: &Extensions| {
    RequestFlags::from_extensions(extensions)
});
extractor!(
    RequestContext,
    "RequestContext",
    |extensions: &Extensions| { RequestContext::from_extensions(extensions).cloned() }
);
