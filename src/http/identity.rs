//! Who is calling: [`MakeDistinctId`], the default resolver, and composing resolvers.

use super::{head::RequestHead, sanitize::sanitize_owned};

/// Decides who a request comes from.
///
/// Return `None` for an anonymous caller: their events are personless. Implemented for
/// closures `FnMut(&RequestHead<'_>) -> Option<String>`; the result is cleaned like header
/// values. Combine resolvers with [`or`](MakeDistinctId::or).
///
/// # Example
///
/// Take the id from the application's own authentication (a `User` an earlier layer put in
/// the extensions), else from the posthog-js header or cookie:
///
/// ```
/// use posthog_tower::http::{DefaultMakeDistinctId, MakeDistinctId, RequestHead};
///
/// #[derive(Clone)]
/// struct User {
///     id: u64,
/// }
///
/// let from_auth = |req: &RequestHead<'_>| req.extensions().get::<User>().map(|u| u.id.to_string());
/// let make = from_auth.or(DefaultMakeDistinctId);
/// # fn check(_: impl MakeDistinctId) {}
/// # check(make);
/// ```
pub trait MakeDistinctId {
    /// The caller's distinct id, or `None` when it is unknown.
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String>;

    /// Asks `self` first, then `other`.
    fn or<M: MakeDistinctId>(self, other: M) -> Or<Self, M>
    where
        Self: Sized,
    {
        Or {
            first: self,
            second: other,
        }
    }
}

impl<F> MakeDistinctId for F
where
    F: FnMut(&RequestHead<'_>) -> Option<String>,
{
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String> {
        self(request)
    }
}

/// The default resolver: the `X-POSTHOG-DISTINCT-ID` header, else the `distinct_id` of the
/// posthog-js cookie `ph_<project key>_posthog`, else anonymous.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultMakeDistinctId;

impl MakeDistinctId for DefaultMakeDistinctId {
    #[inline]
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String> {
        request.distinct_id_header().or_else(|| {
            request
                .posthog_cookie()
                .and_then(|c| c.distinct_id().map(str::to_owned))
        })
    }
}

/// Two resolvers, asked in order. See [`MakeDistinctId::or`].
#[derive(Clone, Copy, Debug)]
pub struct Or<A, B> {
    first: A,
    second: B,
}

impl<A: MakeDistinctId, B: MakeDistinctId> MakeDistinctId for Or<A, B> {
    fn make_distinct_id(&mut self, request: &RequestHead<'_>) -> Option<String> {
        self.first
            .make_distinct_id(request)
            .and_then(sanitize_owned)
            .or_else(|| self.second.make_distinct_id(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::DISTINCT_ID_HEADER;
    use http::{header::COOKIE, Request};

    #[test]
    fn header_wins_over_cookie_and_or_falls_through() {
        let req = Request::builder()
            .header(DISTINCT_ID_HEADER, " from-header ")
            .header(
                COOKIE,
                "ph_k_posthog=%7B%22distinct_id%22%3A%22from-cookie%22%7D",
            )
            .body(())
            .unwrap();
        let head = RequestHead::new(&req, "ph_k_posthog");
        assert_eq!(
            DefaultMakeDistinctId.make_distinct_id(&head),
            Some("from-header".into())
        );
        let mut none_then_default = (|_: &RequestHead<'_>| None).or(DefaultMakeDistinctId);
        assert_eq!(
            none_then_default.make_distinct_id(&head),
            Some("from-header".into())
        );
        let mut blank_then_default =
            (|_: &RequestHead<'_>| Some(" \n ".to_owned())).or(DefaultMakeDistinctId);
        assert_eq!(
            blank_then_default.make_distinct_id(&head),
            Some("from-header".into())
        );

        let req = Request::builder()
            .header(
                COOKIE,
                "ph_k_posthog=%7B%22distinct_id%22%3A%22from-cookie%22%7D",
            )
            .body(())
            .unwrap();
        let head = RequestHead::new(&req, "ph_k_posthog");
        assert_eq!(
            DefaultMakeDistinctId.make_distinct_id(&head),
            Some("from-cookie".into())
        );
    }
}
