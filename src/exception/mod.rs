//! Error tracking: [`Exception`], the `$exception` event PostHog's error tracking reads.
//!
//! An [`Exception`] records an error's `source()` chain (outermost first) and, with the
//! `error-tracking` cargo feature (on by default), the stack at the call with the instruction,
//! symbol and image addresses PostHog symbolicates against, and the loaded images
//! (`$debug_images`). [`PostHog::capture_exception`](crate::PostHog::capture_exception)
//! captures one; the event inherits the current request context's caller like any other, or
//! is personless.
//!
//! The wire format is the one PostHog documents for error tracking and posthog-rs sends for
//! Rust: `$exception_list` entries with `type`, `value` and `mechanism` (`type` `generic` for
//! the captured error, `chained` for its sources, `exception_id`/`parent_id` linking them),
//! the stack trace (`{"type": "raw", "frames": [...]}`, outermost frame first) on the first
//! entry, `$exception_level` and, when given, `$exception_fingerprint`. As posthog-rs, a frame
//! carries its addresses only when its image has a debug id (the server can symbolicate no
//! other), and a frame with neither a name nor such an address is left out.
//! `tests/capture/exceptions.rs` checks the shape against what posthog-rs 0.30.0 sends.
//!
//! `anyhow::Error` and `eyre::Report`, which are not `std::error::Error`s, have constructors of
//! their own behind the `anyhow` and `eyre` cargo features (`Exception::from_anyhow`,
//! `Exception::from_eyre`), which send the stack where the error arose when it has one.
//!
//! Which frames are the application's (`in_app`): see [`Exception::in_app_include`] and the
//! process-wide [`PostHogBuilder::in_app_include`](crate::PostHogBuilder::in_app_include).
//!
//! Bounds: at most [`MAX_CHAIN`] errors of a chain, [`MAX_FRAMES`] frames (the outermost are
//! cut), values cut at [`MAX_VALUE_CHARS`] characters. An error whose `Display` panics is
//! captured with a placeholder value; capturing never panics.
//!
//! ```no_run
//! # fn f(posthog: posthog_tower::PostHog, error: std::io::Error) -> Result<(), posthog_tower::CaptureError> {
//! use posthog_tower::exception::{Exception, Level};
//!
//! posthog.capture_exception(&error)?;
//! posthog.capture(
//!     Exception::new(&error)
//!         .level(Level::Warning)
//!         .fingerprint("disk-full")
//!         .into_event(),
//! )?;
//! # Ok(())
//! # }
//! ```

#[cfg(all(feature = "error-tracking", any(feature = "anyhow", feature = "eyre")))]
mod backtrace_text;
mod in_app;
mod limit;
mod panic;
#[cfg(any(feature = "anyhow", feature = "eyre"))]
mod reports;
#[cfg(feature = "error-tracking")]
mod stack;

pub(crate) use in_app::InAppCrates;
pub(crate) use limit::RateLimit;
pub(crate) use panic::{caught_panic, install_panic_hook};

use std::{
    any::{type_name, Any},
    error::Error as StdError,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
};

use serde_json::{json, Map, Value};

use crate::event::Event;

/// The most errors of a `source()` chain recorded (the captured error included); a longer or
/// cyclic chain is cut there.
pub const MAX_CHAIN: usize = 50;

/// The most stack frames sent; the outermost frames are cut first.
pub const MAX_FRAMES: usize = 64;

/// The most characters of an error's message sent.
pub const MAX_VALUE_CHARS: usize = 8 * 1024;

/// How serious an exception is (`$exception_level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Level {
    /// The process cannot go on.
    Fatal,
    /// An operation failed (the default).
    #[default]
    Error,
    /// Something went wrong but was handled.
    Warning,
    /// For information.
    Info,
    /// For debugging.
    Debug,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Fatal => "fatal",
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// One error of the chain.
#[derive(Clone, Debug)]
struct Entry {
    type_name: String,
    value: String,
}

/// An exception to capture: an error's chain, where it was captured, and how to report it.
/// Build it with [`Exception::new`], set what you need, and capture it with
/// [`PostHog::capture_exception_with`](crate::PostHog::capture_exception_with) (or turn it into
/// an [`Event`] with [`into_event`](Self::into_event)).
///
/// ```
/// use posthog_tower::exception::{Exception, Level};
///
/// let error = std::io::Error::other("disk full");
/// let event = Exception::new(&error)
///     .level(Level::Warning)
///     .handled(true)
///     .fingerprint("disk-full")
///     .property("volume", "/data")
///     .into_event();
/// assert_eq!(event.name(), "$exception");
/// let list = event.properties().get("$exception_list").unwrap();
/// assert_eq!(list[0]["value"], "disk full");
/// assert_eq!(list[0]["type"], "std::io::error::Error");
/// ```
#[derive(Debug)]
pub struct Exception {
    chain: Vec<Entry>,
    event: Event,
    level: Level,
    handled: bool,
    fingerprint: Option<String>,
    /// The first entry's `mechanism.type`: `generic`, or `panic` for a panic.
    mechanism: &'static str,
    /// Crates named in-app or not for this exception, added to the process-wide ones.
    in_app: InAppCrates,
    #[cfg(feature = "error-tracking")]
    stack: Option<stack::Stack>,
}

impl Exception {
    /// The exception of `error` and its `source()` chain, with the stack captured here (with
    /// the `error-tracking` feature). The captured error's entry is named after its concrete
    /// type (`E`); its sources, seen as `dyn Error`, are named `Error`.
    ///
    /// Walking and symbolizing the stack is most of the cost (`benches/capture.rs`,
    /// `exception/`): [`without_stack`](Self::without_stack) skips it.
    #[inline(never)]
    pub fn new<E: StdError + ?Sized + 'static>(error: &E) -> Self {
        let exception = Exception::without_stack(error);
        #[cfg(feature = "error-tracking")]
        return Exception {
            stack: Some(stack::Stack::capture()),
            ..exception
        };
        #[cfg(not(feature = "error-tracking"))]
        exception
    }

    /// An exception that is not a Rust error value (a failed request, a logged error): one
    /// entry of type `type_name` with `message` as its value, and the stack captured here
    /// (with the `error-tracking` feature).
    ///
    /// ```
    /// use posthog_tower::exception::Exception;
    ///
    /// let event = Exception::from_message("HttpError", "GET /orders answered 503").into_event();
    /// let list = event.properties().get("$exception_list").unwrap();
    /// assert_eq!(list[0]["type"], "HttpError");
    /// assert_eq!(list[0]["value"], "GET /orders answered 503");
    /// ```
    #[inline(never)]
    pub fn from_message(type_name: impl AsRef<str>, message: impl AsRef<str>) -> Self {
        let exception = Exception::message_only(type_name.as_ref(), message.as_ref());
        #[cfg(feature = "error-tracking")]
        return Exception {
            stack: Some(stack::Stack::capture()),
            ..exception
        };
        #[cfg(not(feature = "error-tracking"))]
        exception
    }

    /// [`from_message`](Self::from_message) without the stack trace.
    pub(crate) fn message_only(type_name: &str, message: &str) -> Self {
        Exception::from_entries([(type_name, message)])
    }

    /// An exception described elsewhere (a Sentry event's exceptions) as `(type, message)`
    /// entries, outermost first, without a stack trace: each entry as in
    /// [`from_message`](Self::from_message), at most [`MAX_CHAIN`] of them, one `Error` entry
    /// when there are none.
    pub(crate) fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut chain: Vec<Entry> = entries
            .into_iter()
            .take(MAX_CHAIN)
            .map(|(type_name, message)| Entry {
                type_name: match type_name.trim() {
                    "" => "Error".to_owned(),
                    name => cut(name),
                },
                value: match message {
                    "" => "Error".to_owned(),
                    message => cut(message),
                },
            })
            .collect();
        if chain.is_empty() {
            chain.push(Entry {
                type_name: "Error".to_owned(),
                value: "Error".to_owned(),
            });
        }
        Exception {
            chain,
            event: Event::named("$exception"),
            level: Level::default(),
            handled: true,
            fingerprint: None,
            mechanism: "generic",
            in_app: InAppCrates::default(),
            #[cfg(feature = "error-tracking")]
            stack: None,
        }
    }

    /// The exception of a value known only to be displayable (an HTTP service's error): the
    /// `source()` chain of a boxed `dyn Error` (tower's `BoxError`), else one entry named
    /// after `D` with its `Display` text. No stack: it would be the caller's, not the error's.
    pub(crate) fn from_display<D: fmt::Display + 'static>(error: &D) -> Self {
        let any: &dyn Any = error;
        if let Some(boxed) = any.downcast_ref::<crate::BoxError>() {
            return Exception::without_stack::<dyn StdError + Send + Sync>(&**boxed);
        }
        let text = catch_unwind(AssertUnwindSafe(|| error.to_string()))
            .unwrap_or_else(|_| PANICKED_DISPLAY.to_owned());
        Exception::message_only(&simple_type_name(type_name::<D>()), &text)
    }

    /// [`new`](Self::new) without the stack trace (and `$debug_images`): the chain only.
    pub fn without_stack<E: StdError + ?Sized + 'static>(error: &E) -> Self {
        let mut chain = vec![Entry {
            type_name: simple_type_name(type_name::<E>()),
            value: message(error),
        }];
        let mut source = error.source();
        while let Some(e) = source {
            if chain.len() == MAX_CHAIN {
                break;
            }
            chain.push(Entry {
                type_name: "Error".to_owned(),
                value: message(e),
            });
            source = e.source();
        }
        Exception {
            chain,
            event: Event::named("$exception"),
            level: Level::default(),
            handled: true,
            fingerprint: None,
            mechanism: "generic",
            in_app: InAppCrates::default(),
            #[cfg(feature = "error-tracking")]
            stack: None,
        }
    }

    /// Adds `causes` after the entries there are, as `chained` entries, within [`MAX_CHAIN`].
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))] // Used by the `tracing` layer.
    pub(crate) fn caused_by(mut self, causes: Causes) -> Self {
        let room = MAX_CHAIN.saturating_sub(self.chain.len());
        self.chain.extend(causes.0.into_iter().take(room));
        self
    }

    /// Reports it for `distinct_id` instead of the current request context's caller (or a
    /// personless event).
    #[must_use]
    pub fn distinct_id(mut self, distinct_id: impl AsRef<str>) -> Self {
        let inner = &mut *self.event.inner;
        inner.set_distinct_id(Some(distinct_id.as_ref()));
        inner.inherits_distinct_id = false;
        self
    }

    /// The level (`$exception_level`, default [`Level::Error`]).
    #[must_use]
    pub fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// Whether the application handled the error (default `true`); `false` for one that
    /// escaped it.
    #[must_use]
    pub fn handled(mut self, handled: bool) -> Self {
        self.handled = handled;
        self
    }

    /// Groups it with the exceptions of the same fingerprint (`$exception_fingerprint`).
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// An extra property, as [`Event::property`] sets it.
    #[must_use]
    pub fn property(mut self, key: impl AsRef<str>, value: impl serde::Serialize) -> Self {
        self.event = self.event.property(key, value);
        self
    }

    /// Marks the frames of these crates in-app (the application's), even crates the defaults
    /// take for libraries (`tokio`, a file of the registry), in addition to the crates named
    /// process-wide with [`PostHogBuilder::in_app_include`](crate::PostHogBuilder::in_app_include).
    /// A name is a crate (`my_app`; `my-app` works too) or a module path (`my_app::db`),
    /// matched against the frame's function by prefix. An excluded crate wins.
    ///
    /// By default a frame is in-app unless it is in a file of the toolchain or of a registry
    /// or git dependency, in a function of a well-known library crate (`std`, `core`,
    /// `alloc`, `tokio`, `tower`, `hyper`, `axum`, `tonic`, `tracing`, `anyhow`, `eyre`,
    /// this crate, ...), or a process or thread entry point (`main`, `_start`, `clone`, ...).
    ///
    /// ```
    /// use posthog_tower::exception::Exception;
    ///
    /// let error = std::io::Error::other("disk full");
    /// let exception = Exception::new(&error).in_app_include(["my_app", "my-lib"]);
    /// # let _ = exception.into_event();
    /// ```
    #[must_use]
    pub fn in_app_include<I, S>(mut self, crates: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.in_app.include(crates);
        self
    }

    /// Never marks the frames of these crates (or module paths) in-app, whatever else says
    /// so; in addition to [`PostHogBuilder::in_app_exclude`](crate::PostHogBuilder::in_app_exclude).
    ///
    /// ```
    /// use posthog_tower::exception::Exception;
    ///
    /// let error = std::io::Error::other("disk full");
    /// let exception = Exception::new(&error)
    ///     .in_app_include(["my_app"])
    ///     .in_app_exclude(["my_app::generated"]);
    /// # let _ = exception.into_event();
    /// ```
    #[must_use]
    pub fn in_app_exclude<I, S>(mut self, crates: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.in_app.exclude(crates);
        self
    }

    /// A group, as [`Event::group`] sets it.
    #[must_use]
    pub fn group(mut self, group_type: impl Into<String>, group_key: impl Into<String>) -> Self {
        self.event = self.event.group(group_type, group_key);
        self
    }

    /// The captured error's type: its `$exception_list` entry's `type` (`Panic` for a panic).
    pub fn type_name(&self) -> &str {
        // `without_stack` and the panic hook both start the chain with the captured error.
        self.chain.first().map_or("Error", |entry| &entry.type_name)
    }

    /// The `$exception` event.
    pub fn into_event(self) -> Event {
        let count = self.chain.len();
        #[cfg(feature = "error-tracking")]
        let (frames, images) = match &self.stack {
            Some(stack) => stack.to_json(&self.in_app.with_process_wide()),
            None => (None, Vec::new()),
        };
        #[cfg(not(feature = "error-tracking"))]
        let (frames, images): (Option<Value>, Vec<Value>) = (None, Vec::new());
        let mut frames = frames;
        let list: Vec<Value> = self
            .chain
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let mut mechanism = Map::new();
                let kind = if i == 0 { self.mechanism } else { "chained" };
                mechanism.insert("type".into(), kind.into());
                mechanism.insert("handled".into(), self.handled.into());
                mechanism.insert("synthetic".into(), false.into());
                if count > 1 {
                    mechanism.insert("exception_id".into(), i.into());
                    if i > 0 {
                        mechanism.insert("parent_id".into(), (i - 1).into());
                    }
                }
                let mut item = Map::new();
                item.insert("type".into(), entry.type_name.into());
                item.insert("value".into(), entry.value.into());
                item.insert("mechanism".into(), Value::Object(mechanism));
                if let Some(frames) = frames.take().filter(|_| i == 0) {
                    item.insert(
                        "stacktrace".into(),
                        json!({"type": "raw", "frames": frames}),
                    );
                }
                Value::Object(item)
            })
            .collect();
        let mut event = self.event;
        event.insert_value("$exception_level", self.level.as_str().into());
        if let Some(fingerprint) = self.fingerprint {
            event.insert_value("$exception_fingerprint", fingerprint.into());
        }
        if !images.is_empty() {
            event.insert_value("$debug_images", Value::Array(images));
        }
        event.insert_value("$exception_list", Value::Array(list));
        event
    }
}

/// The value of an error whose `Display` panicked.
const PANICKED_DISPLAY: &str = "<the error's Display implementation panicked>";

/// An error and its `source()` chain as entries named `Error` (they are seen as `dyn Error`),
/// read while the error is at hand, for an exception to carry after its own entry
/// ([`Exception::caused_by`]).
#[derive(Debug)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))] // Used by the `tracing` layer.
pub(crate) struct Causes(Vec<Entry>);

#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
impl Causes {
    pub(crate) fn of(error: &(dyn StdError + 'static)) -> Causes {
        let mut entries = Vec::new();
        let mut next = Some(error);
        while let Some(e) = next {
            if entries.len() == MAX_CHAIN {
                break;
            }
            entries.push(Entry {
                type_name: "Error".to_owned(),
                value: message(e),
            });
            next = e.source();
        }
        Causes(entries)
    }

    /// The first error's message.
    pub(crate) fn message(&self) -> &str {
        self.0.first().map_or("Error", |entry| &entry.value)
    }

    /// Without the first error (its message used elsewhere).
    pub(crate) fn sources(mut self) -> Causes {
        if !self.0.is_empty() {
            self.0.remove(0);
        }
        self
    }
}

/// An error's message, cut at [`MAX_VALUE_CHARS`]; a placeholder when its `Display` panics,
/// `Error` when it is empty.
fn message(error: &(impl StdError + ?Sized)) -> String {
    let text = catch_unwind(AssertUnwindSafe(|| error.to_string()))
        .unwrap_or_else(|_| PANICKED_DISPLAY.to_owned());
    if text.is_empty() {
        return "Error".to_owned();
    }
    cut(&text)
}

/// `text`, at most [`MAX_VALUE_CHARS`] characters of it.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// A type's name as PostHog groups by it: its full path, without references, `dyn`, auto
/// traits (`+ Send + Sync`) and generic arguments; `Error` for the standard library's trait
/// object.
fn simple_type_name(name: &str) -> String {
    let name = name.trim().trim_start_matches('&');
    let name = name.strip_prefix("dyn ").unwrap_or(name);
    // `dyn Error + Send + Sync`'s bounds, and generic arguments.
    let name = name.split(['<', '+']).next().unwrap_or(name).trim();
    match name {
        "" | "core::error::Error" | "std::error::Error" => "Error".to_owned(),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests;
