//! Panics as `$exception` events: a panic hook, chained to the one installed before it.

use std::{any::Any, cell::Cell, panic::Location};

use super::{Entry, Exception, Level};
use crate::event::Event;

thread_local! {
    /// Set while this thread runs the hook's own work: a panic there is not captured again.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Installs a panic hook that hands `sink` the `$exception` of every panic (unhandled,
/// level fatal, mechanism `panic`, the message, where it happened and, with the
/// `error-tracking` feature, the stack), then calls the hook installed before it.
///
/// The hook's work must not panic (a panic while panicking aborts the process): nothing in it
/// unwraps, and the message is read from the payload without formatting it.
pub(crate) fn install_panic_hook(sink: impl Fn(Exception) + Send + Sync + 'static) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_HOOK.with(|flag| flag.replace(true)) {
            sink(panic_exception(
                payload_text(info.payload()),
                info.location(),
            ));
            IN_HOOK.with(|flag| flag.set(false));
        }
        previous(info);
    }));
}

/// A panic's message: the payload of `panic!("…")` with or without arguments.
fn payload_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// The `$exception` of a panic.
#[inline(never)]
fn panic_exception(message: Option<&str>, location: Option<&Location<'_>>) -> Exception {
    let message = message
        .filter(|m| !m.is_empty())
        .unwrap_or("panic occurred");
    let mut exception = Exception {
        chain: vec![Entry {
            type_name: "Panic".to_owned(),
            value: super::cut(message),
        }],
        event: Event::named("$exception"),
        level: Level::Fatal,
        handled: false,
        fingerprint: None,
        mechanism: "panic",
        in_app: super::InAppCrates::default(),
        #[cfg(feature = "error-tracking")]
        stack: Some(super::stack::Stack::capture_panic()),
    };
    if let Some(location) = location {
        exception = exception
            .property("$exception_panic_file", location.file())
            .property("$exception_panic_line", location.line())
            .property("$exception_panic_column", location.column());
    }
    exception
}

/// The `$exception` of a panic caught while unwinding (by the HTTP layer): the message only,
/// the stack having unwound already (the panic hook, when installed, has the stack and the
/// location).
pub(crate) fn caught_panic(payload: &(dyn Any + Send)) -> Exception {
    let message = payload_text(payload)
        .filter(|m| !m.is_empty())
        .unwrap_or("panic occurred");
    let mut exception = Exception::message_only("Panic", message)
        .level(Level::Fatal)
        .handled(false);
    exception.mechanism = "panic";
    exception
}
