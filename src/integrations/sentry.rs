//! Sentry and PostHog, linked: [`PostHogIntegration`], a Sentry [`Integration`] that tags
//! every Sentry event with the PostHog person it happened to, and captures Sentry's errors in
//! PostHog's error tracking.
//!
//! Register it on the Sentry client with [`ClientOptions::add_integration`]. Its
//! [`process_event`](sentry_core::Integration::process_event) hook runs for every event Sentry
//! captures, on the thread that captures it, after the scope's processors and before
//! `before_send`:
//!
//! - **The person.** The event's distinct id is the first of: a
//!   [`posthog_distinct_id`](DISTINCT_ID_TAG) tag already on the event (set on the Sentry
//!   scope), what the [`distinct_id`](PostHogIntegration::distinct_id) closure returns, and the
//!   [current request context](crate::context::RequestContext::current)'s caller. The event
//!   gets it as the tag `posthog_distinct_id` and a link to the person in PostHog as the extra
//!   [`PostHog Person URL`](PERSON_URL_EXTRA). Without a distinct id (no caller, an anonymous
//!   one) it gets neither.
//! - **The error.** A Sentry event at level `error` or `fatal` (see
//!   [`min_level`](PostHogIntegration::min_level)) is also captured in PostHog as an
//!   `$exception` (unless [`capture_exceptions(false)`](PostHogIntegration::capture_exceptions)),
//!   for the same person, or personless, with `$sentry_event_id` and, when the Sentry
//!   organization is known, `$sentry_url`, a link to the event in Sentry.
//!
//! # The `$exception` event
//!
//! - `$exception_list`: the Sentry event's exceptions (`type` and `value` of each), outermost
//!   first as PostHog expects ([`Exception`]'s order; Sentry sends
//!   the innermost first), without stack traces. An event without exceptions (an error-level
//!   `capture_message`) gives one entry of type `Error` whose value is the message.
//! - `$exception_level`: Sentry's level (`fatal`, `error`, ...); `mechanism.handled`: the
//!   outermost exception's, `true` when Sentry does not say.
//! - `$sentry_event_id`: the Sentry event's id (32 hex digits, as Sentry shows it).
//! - `$sentry_url`: `{prefix}{organization}/issues/?project={project id}&query={event id}`,
//!   from [`sentry_organization`](PostHogIntegration::sentry_organization),
//!   [`sentry_project_id`](PostHogIntegration::sentry_project_id) (by default the project of
//!   the Sentry client's DSN) and [`sentry_url_prefix`](PostHogIntegration::sentry_url_prefix)
//!   (default `https://sentry.io/organizations/`).
//!
//! It goes through the client's per-type rate limit on exceptions captured on the application's
//! behalf ([`PostHogBuilder::exception_rate_limit`](crate::PostHogBuilder::exception_rate_limit));
//! like every capture it never blocks: a refused event is reported to `on_error` and counted in
//! [`stats`](crate::PostHog::stats), and the Sentry event goes on unchanged.
//!
//! Message events below `error` (`sentry::capture_message(.., Level::Info)`, a warning) get the
//! tag and the link only: they are not errors, and PostHog's error tracking would list them as
//! issues. An event that Sentry drops after the hook (by `before_send` or sampling) has already
//! been captured in PostHog, where its `$sentry_url` then finds nothing.
//!
//! # The person link
//!
//! `{app host}/project/{project id}/person/{distinct id}` with the PostHog
//! [`project_id`](PostHogIntegration::project_id) (the number in your PostHog URLs), or
//! `{app host}/person/{distinct id}` without it, which PostHog opens in the viewer's current
//! project. The app host is where PostHog's app is, not the ingestion host the client sends to
//! ([`PostHog::host`](crate::PostHog::host)): `https://us.i.posthog.com` links to
//! `https://us.posthog.com`, `https://eu.i.posthog.com` to `https://eu.posthog.com`, and any
//! other host (self-hosted PostHog) to itself. Behind a reverse proxy, give the app host with
//! [`ui_host`](PostHogIntegration::ui_host). The distinct id is percent-encoded.
//!
//! The link is an extra ("Additional Data" on the event's page), not a tag: Sentry's tag keys
//! cannot hold spaces and its tag values stop at 200 characters. For the same reason the
//! `posthog_distinct_id` tag is left out when the distinct id is longer than 200 characters or
//! holds a line break (the link still carries it).
//!
//! # Panics
//!
//! The hook never panics and never blocks: a `distinct_id` closure that panics is treated as
//! returning `None`, and an event Sentry captures while the hook runs (from an `on_error`
//! callback, say) passes through untouched. With both Sentry's panic integration and
//! [`PostHogBuilder::capture_panics`](crate::PostHogBuilder::capture_panics), a panic reaches
//! PostHog twice: keep one.
//!
//! # Versions
//!
//! The integration implements `sentry-core` 0.49's trait: the application's `sentry` must be
//! 0.49 too (which needs Rust 1.89). The feature pulls in `sentry-core` alone, without a
//! client, transport or TLS stack.
//!
//! # Example
//!
//! ```no_run
//! use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let posthog = PostHog::builder("phc_project_key")
//!     .host("https://eu.i.posthog.com")
//!     .build()?;
//! let _sentry = sentry::init(
//!     sentry::ClientOptions::new()
//!         .dsn("https://public@o1.ingest.sentry.io/42")
//!         .add_integration(
//!             PostHogIntegration::new(posthog.clone())
//!                 .project_id(12345)
//!                 .sentry_organization("acme"),
//!         ),
//! );
//! // Inside a request behind `PostHogLayer`: tagged with the caller, and an `$exception` for
//! // the same person in PostHog, linked to this Sentry event.
//! sentry::capture_error(&std::io::Error::other("disk full"));
//! # Ok(())
//! # }
//! ```

use std::{
    cell::Cell,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
};

use sentry_core::{
    protocol::{Event as SentryEvent, Level as SentryLevel},
    ClientOptions, Integration,
};
use serde_json::Value;

use crate::{
    context::RequestContext,
    exception::{Exception, Level},
    PostHog,
};

/// The tag that holds the PostHog distinct id on Sentry events: `posthog_distinct_id`.
///
/// Set it on the Sentry scope to name the person yourself; the integration keeps it.
///
/// ```
/// use posthog_tower::integrations::sentry::DISTINCT_ID_TAG;
///
/// sentry::configure_scope(|scope| scope.set_tag(DISTINCT_ID_TAG, "user-42"));
/// ```
pub const DISTINCT_ID_TAG: &str = "posthog_distinct_id";

/// The extra that holds the link to the person in PostHog on Sentry events:
/// `PostHog Person URL`.
///
/// ```
/// use posthog_tower::integrations::sentry::PERSON_URL_EXTRA;
///
/// fn person_url<'a>(event: &'a sentry::protocol::Event<'_>) -> Option<&'a str> {
///     event.extra.get(PERSON_URL_EXTRA)?.as_str()
/// }
/// # assert_eq!(person_url(&Default::default()), None);
/// ```
pub const PERSON_URL_EXTRA: &str = "PostHog Person URL";

/// Where links to Sentry start by default (sentry.io).
const DEFAULT_SENTRY_URL_PREFIX: &str = "https://sentry.io/organizations/";

/// The most characters of a Sentry tag value.
const MAX_TAG_VALUE_CHARS: usize = 200;

type DistinctIdFn = dyn Fn(&SentryEvent<'static>) -> Option<String> + Send + Sync;

thread_local! {
    /// Set while this thread runs the hook: an event captured from within it (an `on_error`
    /// callback reporting to Sentry) passes through, instead of looping.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Clears [`IN_HOOK`] when the hook is done, even if it unwinds.
struct HookGuard;

impl Drop for HookGuard {
    fn drop(&mut self) {
        IN_HOOK.with(|flag| flag.set(false));
    }
}

/// A Sentry integration that links Sentry events to PostHog people and captures Sentry's
/// errors in PostHog. See the [module docs](self) for what it adds and sends.
///
/// Built from the client with [`new`](Self::new), set up with its builder methods, and handed
/// to [`ClientOptions::add_integration`].
///
/// # Clone
///
/// Cheap: the [`PostHog`] handle and the closure are shared.
///
/// # Example
///
/// ```
/// use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
///
/// let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
/// let options = sentry::ClientOptions::new().add_integration(
///     PostHogIntegration::new(posthog)
///         .project_id(12345)
///         .sentry_organization("acme")
///         .sentry_project_id(42)
///         // Sentry's user id is the PostHog distinct id when no request context says.
///         .distinct_id(|event| event.user.as_ref()?.id.clone()),
/// );
/// # assert_eq!(options.integrations.len(), 1);
/// ```
#[derive(Clone)]
pub struct PostHogIntegration {
    posthog: PostHog,
    project_id: Option<String>,
    ui_host: String,
    sentry_organization: Option<String>,
    sentry_project_id: Option<String>,
    sentry_url_prefix: String,
    capture_exceptions: bool,
    min_level: SentryLevel,
    distinct_id: Option<Arc<DistinctIdFn>>,
}

impl PostHogIntegration {
    /// The integration for `posthog`: tags and person links on every Sentry event, and an
    /// `$exception` in PostHog for each error, linking to Sentry once
    /// [`sentry_organization`](Self::sentry_organization) is set.
    ///
    /// ```
    /// use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    ///
    /// let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// let integration = PostHogIntegration::new(posthog);
    /// ```
    pub fn new(posthog: PostHog) -> Self {
        let ui_host = app_host(posthog.host());
        PostHogIntegration {
            posthog,
            project_id: None,
            ui_host,
            sentry_organization: None,
            sentry_project_id: None,
            sentry_url_prefix: DEFAULT_SENTRY_URL_PREFIX.to_owned(),
            capture_exceptions: true,
            min_level: SentryLevel::Error,
            distinct_id: None,
        }
    }

    /// The PostHog project's id (the number after `/project/` in PostHog's URLs), for the
    /// person links. Without it they are `{app host}/person/{distinct id}`, which PostHog
    /// opens in the viewer's current project.
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// # let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// let integration = PostHogIntegration::new(posthog).project_id(12345);
    /// ```
    #[must_use]
    pub fn project_id(mut self, project_id: impl fmt::Display) -> Self {
        self.project_id = non_empty(project_id.to_string());
        self
    }

    /// Where PostHog's app is, for the person links (a trailing slash is trimmed). By default
    /// the client's host, with PostHog Cloud's ingestion hosts mapped to their app hosts
    /// (`https://us.i.posthog.com` to `https://us.posthog.com`, `https://eu.i.posthog.com` to
    /// `https://eu.posthog.com`): set it when the client sends through a reverse proxy.
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// let posthog = PostHog::builder("phc_project_key")
    ///     .host("https://ph.example.com")
    ///     .disabled(true)
    ///     .build()
    ///     .unwrap();
    /// let integration = PostHogIntegration::new(posthog).ui_host("https://eu.posthog.com");
    /// ```
    #[must_use]
    pub fn ui_host(mut self, host: impl Into<String>) -> Self {
        self.ui_host = host.into().trim().trim_end_matches('/').to_owned();
        self
    }

    /// The Sentry organization's slug, for `$sentry_url` (none without it).
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// # let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// let integration = PostHogIntegration::new(posthog).sentry_organization("acme");
    /// ```
    #[must_use]
    pub fn sentry_organization(mut self, organization: impl Into<String>) -> Self {
        self.sentry_organization = non_empty(organization.into());
        self
    }

    /// The Sentry project's id, for `$sentry_url`. By default, the project of the Sentry
    /// client's DSN (the number at its end).
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// # let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// let integration = PostHogIntegration::new(posthog)
    ///     .sentry_organization("acme")
    ///     .sentry_project_id(42);
    /// ```
    #[must_use]
    pub fn sentry_project_id(mut self, project_id: impl fmt::Display) -> Self {
        self.sentry_project_id = non_empty(project_id.to_string());
        self
    }

    /// Where links to Sentry start, before the organization (default
    /// `https://sentry.io/organizations/`; a slash is added at its end when missing). Set it
    /// for a self-hosted Sentry.
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// # let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// let integration = PostHogIntegration::new(posthog)
    ///     .sentry_organization("acme")
    ///     .sentry_url_prefix("https://sentry.example.com/organizations/");
    /// ```
    #[must_use]
    pub fn sentry_url_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let prefix = prefix.trim().trim_end_matches('/');
        self.sentry_url_prefix = format!("{prefix}/");
        self
    }

    /// Whether Sentry's errors are also captured in PostHog as `$exception` events (default
    /// `true`). With `false`, Sentry events only get the tag and the link.
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// # let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// let integration = PostHogIntegration::new(posthog).capture_exceptions(false);
    /// ```
    #[must_use]
    pub fn capture_exceptions(mut self, capture: bool) -> Self {
        self.capture_exceptions = capture;
        self
    }

    /// The lowest Sentry level captured in PostHog (default
    /// [`Level::Error`](sentry_core::Level::Error): errors and fatal errors, not messages).
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// # let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// let integration = PostHogIntegration::new(posthog).min_level(sentry::Level::Warning);
    /// ```
    #[must_use]
    pub fn min_level(mut self, level: sentry_core::Level) -> Self {
        self.min_level = level;
        self
    }

    /// Names the person of a Sentry event that has no `posthog_distinct_id` tag; when it
    /// returns `None`, the current request context's caller is. The closure runs on the thread
    /// that captures the event and should be quick; if it panics, it counts as `None`.
    ///
    /// ```
    /// # use posthog_tower::{integrations::sentry::PostHogIntegration, PostHog};
    /// # let posthog = PostHog::builder("phc_project_key").disabled(true).build().unwrap();
    /// // Sentry's user (set with `sentry::configure_scope`) is the PostHog person.
    /// let integration =
    ///     PostHogIntegration::new(posthog).distinct_id(|event| event.user.as_ref()?.id.clone());
    /// ```
    #[must_use]
    pub fn distinct_id<F>(mut self, distinct_id: F) -> Self
    where
        F: Fn(&SentryEvent<'static>) -> Option<String> + Send + Sync + 'static,
    {
        self.distinct_id = Some(Arc::new(distinct_id));
        self
    }

    /// Tags `event` and, for an error, captures it in PostHog.
    fn link(&self, event: &mut SentryEvent<'static>, options: &ClientOptions) {
        let distinct_id = self.distinct_id_of(event);
        if let Some(id) = &distinct_id {
            if is_tag_value(id) {
                event
                    .tags
                    .entry(DISTINCT_ID_TAG.to_owned())
                    .or_insert_with(|| id.clone());
            }
            event.extra.insert(
                PERSON_URL_EXTRA.to_owned(),
                Value::String(self.person_url(id)),
            );
        }
        if self.capture_exceptions && event.level >= self.min_level {
            let exception = self.exception_of(event, options, distinct_id);
            // A refused event is reported to `on_error` and counted by the client already.
            let _ = self.posthog.capture_autocaptured(exception);
        }
    }

    /// The tag set on the scope, else the closure's answer, else the request context's caller.
    fn distinct_id_of(&self, event: &SentryEvent<'static>) -> Option<String> {
        if let Some(id) = event.tags.get(DISTINCT_ID_TAG) {
            if !id.trim().is_empty() {
                return Some(id.clone());
            }
        }
        if let Some(closure) = &self.distinct_id {
            match catch_unwind(AssertUnwindSafe(|| closure(event))) {
                Ok(Some(id)) if !id.trim().is_empty() => return Some(id),
                Ok(_) => {}
                Err(_) => tracing::warn!(
                    "the Sentry integration's distinct_id closure panicked: \
                     the request context's caller is used"
                ),
            }
        }
        RequestContext::current()?.distinct_id().map(str::to_owned)
    }

    fn person_url(&self, distinct_id: &str) -> String {
        match &self.project_id {
            Some(project) => format!(
                "{}/project/{}/person/{}",
                self.ui_host,
                Encoded(project),
                Encoded(distinct_id)
            ),
            None => format!("{}/person/{}", self.ui_host, Encoded(distinct_id)),
        }
    }

    fn sentry_url(&self, event_id: &str, options: &ClientOptions) -> Option<String> {
        let organization = self.sentry_organization.as_deref()?;
        let dsn_project;
        let project = match &self.sentry_project_id {
            Some(project) => project.as_str(),
            None => {
                dsn_project = options.dsn.as_ref()?.project_id().to_string();
                dsn_project.as_str()
            }
        };
        Some(format!(
            "{}{}/issues/?project={}&query={event_id}",
            self.sentry_url_prefix,
            Encoded(organization),
            Encoded(project)
        ))
    }

    /// The `$exception` of a Sentry event.
    fn exception_of(
        &self,
        event: &SentryEvent<'static>,
        options: &ClientOptions,
        distinct_id: Option<String>,
    ) -> Exception {
        let values = &event.exception.values;
        let exception = if values.is_empty() {
            let message = event
                .message
                .as_deref()
                .or_else(|| event.logentry.as_ref().map(|entry| entry.message.as_str()))
                .unwrap_or_default();
            Exception::from_entries([("Error", message)])
        } else {
            // Sentry lists the innermost exception first, PostHog the outermost.
            Exception::from_entries(
                values
                    .iter()
                    .rev()
                    .map(|e| (e.ty.as_str(), e.value.as_deref().unwrap_or_default())),
            )
        };
        let handled = values
            .last()
            .and_then(|outermost| outermost.mechanism.as_ref()?.handled)
            .unwrap_or(true);
        let event_id = event.event_id.simple().to_string();
        let mut exception = exception
            .level(level_of(event.level))
            .handled(handled)
            .property("$sentry_event_id", &event_id);
        if let Some(url) = self.sentry_url(&event_id, options) {
            exception = exception.property("$sentry_url", url);
        }
        match distinct_id {
            Some(id) => exception.distinct_id(id),
            None => exception,
        }
    }
}

impl Integration for PostHogIntegration {
    fn name(&self) -> &'static str {
        "posthog-tower"
    }

    fn process_event(
        &self,
        mut event: SentryEvent<'static>,
        options: &ClientOptions,
    ) -> Option<SentryEvent<'static>> {
        if IN_HOOK.with(|flag| flag.replace(true)) {
            return Some(event);
        }
        let _guard = HookGuard;
        self.link(&mut event, options);
        Some(event)
    }
}

impl fmt::Debug for PostHogIntegration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostHogIntegration")
            .field("posthog", &self.posthog)
            .field("project_id", &self.project_id)
            .field("ui_host", &self.ui_host)
            .field("sentry_organization", &self.sentry_organization)
            .field("sentry_project_id", &self.sentry_project_id)
            .field("sentry_url_prefix", &self.sentry_url_prefix)
            .field("capture_exceptions", &self.capture_exceptions)
            .field("min_level", &self.min_level)
            .field(
                "distinct_id",
                &self.distinct_id.as_ref().map(|_| "<closure>"),
            )
            .finish()
    }
}

/// PostHog's app host for an ingestion host: PostHog Cloud's `*.i.posthog.com` map to their
/// app hosts, any other host is its own.
fn app_host(host: &str) -> String {
    match host.trim().trim_end_matches('/') {
        "https://us.i.posthog.com" => "https://us.posthog.com".to_owned(),
        "https://eu.i.posthog.com" => "https://eu.posthog.com".to_owned(),
        other => other.to_owned(),
    }
}

fn level_of(level: SentryLevel) -> Level {
    match level {
        SentryLevel::Debug => Level::Debug,
        SentryLevel::Info => Level::Info,
        SentryLevel::Warning => Level::Warning,
        SentryLevel::Error => Level::Error,
        SentryLevel::Fatal => Level::Fatal,
    }
}

/// Whether Sentry keeps `value` as a tag value: at most 200 characters, no line break.
fn is_tag_value(value: &str) -> bool {
    !value.contains('\n') && value.chars().nth(MAX_TAG_VALUE_CHARS).is_none()
}

fn non_empty(value: String) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Formats a URL path segment or query value: every byte but the unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) percent-encoded.
struct Encoded<'a>(&'a str);

impl fmt::Display for Encoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while !rest.is_empty() {
            let plain = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-._~".contains(c)))
                .unwrap_or(rest.len());
            f.write_str(&rest[..plain])?;
            rest = &rest[plain..];
            let Some(c) = rest.chars().next() else { break };
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                write!(f, "%{byte:02X}")?;
            }
            rest = &rest[c.len_utf8()..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_ingestion_hosts_link_to_their_app_hosts() {
        assert_eq!(
            app_host("https://us.i.posthog.com"),
            "https://us.posthog.com"
        );
        assert_eq!(
            app_host("https://eu.i.posthog.com/"),
            "https://eu.posthog.com"
        );
        assert_eq!(
            app_host("https://ph.example.com/"),
            "https://ph.example.com"
        );
        assert_eq!(app_host("http://127.0.0.1:8000"), "http://127.0.0.1:8000");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(Encoded("user-1_a.b~c").to_string(), "user-1_a.b~c");
        assert_eq!(Encoded("a b/c?d#é").to_string(), "a%20b%2Fc%3Fd%23%C3%A9");
        assert_eq!(Encoded("").to_string(), "");
    }

    #[test]
    fn tag_values_are_what_sentry_keeps() {
        assert!(is_tag_value("user-1"));
        assert!(is_tag_value(&"é".repeat(200)));
        assert!(!is_tag_value(&"a".repeat(201)));
        assert!(!is_tag_value("a\nb"));
    }

    #[test]
    fn levels_map_one_to_one() {
        assert_eq!(level_of(SentryLevel::Fatal), Level::Fatal);
        assert_eq!(level_of(SentryLevel::Error), Level::Error);
        assert_eq!(level_of(SentryLevel::Warning), Level::Warning);
        assert_eq!(level_of(SentryLevel::Info), Level::Info);
        assert_eq!(level_of(SentryLevel::Debug), Level::Debug);
    }
}
