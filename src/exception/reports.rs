//! Exceptions of the error-report types that do not implement `std::error::Error`:
//! `anyhow::Error` (feature `anyhow`) and `eyre::Report` (feature `eyre`).

use std::error::Error as StdError;

use super::{message, Entry, Exception, MAX_CHAIN};

impl Exception {
    /// The exception of an `anyhow::Error`: its [`chain`](anyhow::Error::chain), outermost
    /// first (the contexts, then the error they wrap and its sources), and the stack where
    /// the error arose when anyhow captured one.
    ///
    /// - **Types**: anyhow erases the wrapped error's type, so the first entry's `type` is
    ///   `anyhow::Error` and the others' `Error` (as a `source()` chain's). Give the issue a
    ///   stable name with [`fingerprint`](Self::fingerprint) if you know more.
    /// - **Stack** (feature `error-tracking`): anyhow captures a `std::backtrace::Backtrace`
    ///   where the error was created when `RUST_LIB_BACKTRACE=1` or `RUST_BACKTRACE=1` is set.
    ///   When it did, its frames are sent (read from its text, the only form the standard
    ///   library gives them in): each frame's instruction and image addresses, function, file
    ///   and line, from the frame that created the error (anyhow's and the backtrace's own
    ///   frames left out), with `$debug_images`; no `symbol_addr` (the text has none).
    ///   Otherwise (backtraces off, or a text this crate cannot read) the stack is captured
    ///   here, at the call, as [`Exception::new`] does.
    ///
    /// [`Exception::without_stack(&*error)`](Self::without_stack) sends the chain alone (its
    /// first `type` is then `Error`).
    ///
    /// ```
    /// use anyhow::Context;
    /// use posthog_tower::exception::Exception;
    ///
    /// let error = std::fs::read("/no/such/config.toml")
    ///     .context("reading the configuration")
    ///     .unwrap_err();
    /// let event = Exception::from_anyhow(&error).into_event();
    /// let list = event.properties().get("$exception_list").unwrap();
    /// assert_eq!(list[0]["type"], "anyhow::Error");
    /// assert_eq!(list[0]["value"], "reading the configuration");
    /// assert_eq!(list[1]["type"], "Error");
    /// ```
    #[cfg(feature = "anyhow")]
    #[cfg_attr(docsrs, doc(cfg(feature = "anyhow")))]
    #[inline(never)]
    pub fn from_anyhow(error: &anyhow::Error) -> Self {
        let exception = Exception::of_chain("anyhow::Error", error.chain());
        #[cfg(feature = "error-tracking")]
        {
            use std::backtrace::BacktraceStatus;

            let backtrace = error.backtrace();
            let arose = match backtrace.status() {
                BacktraceStatus::Captured => {
                    super::backtrace_text::parse(&format!("{backtrace:#}"))
                }
                _ => None,
            };
            let stack = match arose {
                Some(frames) => super::stack::Stack::from_frames(frames),
                None => super::stack::Stack::capture(),
            };
            Exception {
                stack: Some(stack),
                ..exception
            }
        }
        #[cfg(not(feature = "error-tracking"))]
        exception
    }

    /// The exception of an `eyre::Report`: its [`chain`](eyre::Report::chain), outermost
    /// first, and the stack where the report arose when eyre's default handler captured one.
    ///
    /// - **Types**: the first entry's `type` is `eyre::Report`, the others' `Error`.
    /// - **Stack** (feature `error-tracking`): eyre's default handler (`eyre::DefaultHandler`)
    ///   captures a `std::backtrace::Backtrace` when `RUST_LIB_BACKTRACE=1` or
    ///   `RUST_BACKTRACE=1` is set, and shows it only in the report's `Debug` text, without
    ///   addresses: its frames are sent from there with their function, file and line, and no
    ///   addresses (the server shows them as they are, without symbolicating them), from the
    ///   frame that created the report. Other handlers (color-eyre's, your own) keep their
    ///   backtraces to themselves: then, as when none was captured, the stack is captured here,
    ///   at the call, as [`Exception::new`] does.
    ///
    /// ```
    /// use eyre::WrapErr;
    /// use posthog_tower::exception::Exception;
    ///
    /// let report = std::fs::read("/no/such/config.toml")
    ///     .wrap_err("reading the configuration")
    ///     .unwrap_err();
    /// let event = Exception::from_eyre(&report).into_event();
    /// let list = event.properties().get("$exception_list").unwrap();
    /// assert_eq!(list[0]["type"], "eyre::Report");
    /// assert_eq!(list[0]["value"], "reading the configuration");
    /// ```
    #[cfg(feature = "eyre")]
    #[cfg_attr(docsrs, doc(cfg(feature = "eyre")))]
    #[inline(never)]
    pub fn from_eyre(report: &eyre::Report) -> Self {
        let exception = Exception::of_chain("eyre::Report", report.chain());
        #[cfg(feature = "error-tracking")]
        {
            let stack = match eyre_backtrace(report) {
                Some(frames) => super::stack::Stack::from_frames(frames),
                None => super::stack::Stack::capture(),
            };
            Exception {
                stack: Some(stack),
                ..exception
            }
        }
        #[cfg(not(feature = "error-tracking"))]
        exception
    }

    /// The exception of an error chain seen as `dyn Error`: the first entry named
    /// `type_name`, the others `Error`; no stack.
    fn of_chain<'a>(
        type_name: &str,
        chain: impl Iterator<Item = &'a (dyn StdError + 'static)>,
    ) -> Exception {
        let mut exception = Exception::message_only(type_name, "Error");
        let entries: Vec<Entry> = chain
            .take(MAX_CHAIN)
            .enumerate()
            .map(|(i, error)| Entry {
                type_name: if i == 0 { type_name } else { "Error" }.to_owned(),
                value: message(error),
            })
            .collect();
        if !entries.is_empty() {
            exception.chain = entries;
        }
        exception
    }
}

/// The frames of the backtrace eyre's default handler captured, from the report's `Debug`
/// text (`…\n\nStack backtrace:\n<the backtrace>`, last); `None` for another handler, without a
/// backtrace, or a text that is not one.
#[cfg(all(feature = "eyre", feature = "error-tracking"))]
fn eyre_backtrace(report: &eyre::Report) -> Option<Vec<super::stack::Frame>> {
    report.handler().downcast_ref::<eyre::DefaultHandler>()?;
    // The text holds the chain's messages: an error's `Display` may panic.
    let text =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| format!("{report:?}"))).ok()?;
    let (_, backtrace) = text.rsplit_once("\n\nStack backtrace:\n")?;
    super::backtrace_text::parse(backtrace)
}
