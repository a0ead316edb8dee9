//! Which stack frames are the application's (`in_app`): the user's crates, named on the
//! builder (process-wide) or on an exception, then the defaults (library crates, dependency
//! and toolchain paths, process entry points).

use std::sync::{PoisonError, RwLock};

/// Frames of these crates (the first `::` segment of the function) are not the application's.
const LIBRARY_CRATES: &[&str] = &[
    "alloc",
    "anyhow",
    "axum",
    "axum_core",
    "backtrace",
    "color_eyre",
    "core",
    "eyre",
    "futures_core",
    "futures_util",
    "http",
    "hyper",
    "hyper_util",
    "log",
    "posthog_tower",
    "proc_macro",
    "reqwest",
    "stable_eyre",
    "std",
    "test",
    "tokio",
    "tonic",
    "tower",
    "tower_http",
    "tracing",
    "tracing_core",
];

/// Files under these paths are not the application's: dependencies, the toolchain.
const LIBRARY_PATHS: &[&str] = &[
    "/.cargo/registry/",
    "/.cargo/git/",
    "/rustc/",
    "/toolchains/",
    "/library/std/src/",
    "/library/core/src/",
    "/library/alloc/src/",
    "/library/proc_macro/src/",
    "/library/test/src/",
];

/// Process and thread entry points, never the application's.
const ENTRY_POINTS: &[&str] = &[
    "main",
    "_start",
    "__libc_start_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "_pthread_start",
    "thread_start",
];

/// The crates named in-app or not by the application: module paths (`my_app`,
/// `my_app::handlers`) a frame's function is matched against by prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InAppCrates {
    include: Vec<String>,
    exclude: Vec<String>,
}

/// The process-wide crates, set by [`PostHogBuilder::in_app_include`](crate::PostHogBuilder::in_app_include)
/// and [`in_app_exclude`](crate::PostHogBuilder::in_app_exclude).
static PROCESS: RwLock<InAppCrates> = RwLock::new(InAppCrates {
    include: Vec::new(),
    exclude: Vec::new(),
});

impl InAppCrates {
    /// Adds crates whose frames are in-app.
    pub(crate) fn include<I, S>(&mut self, crates: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.include
            .extend(crates.into_iter().filter_map(normalize));
    }

    /// Adds crates whose frames are never in-app.
    pub(crate) fn exclude<I, S>(&mut self, crates: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.exclude
            .extend(crates.into_iter().filter_map(normalize));
    }

    /// Replaces the process-wide crates with these.
    pub(crate) fn set_process_wide(self) {
        *PROCESS.write().unwrap_or_else(PoisonError::into_inner) = self;
    }

    /// The process-wide crates with these added.
    #[cfg_attr(not(feature = "error-tracking"), allow(dead_code))]
    pub(crate) fn with_process_wide(&self) -> InAppCrates {
        let process = PROCESS.read().unwrap_or_else(PoisonError::into_inner);
        let mut all = process.clone();
        all.include.extend(self.include.iter().cloned());
        all.exclude.extend(self.exclude.iter().cloned());
        all
    }

    /// Whether a frame is the application's. A frame whose function is in an excluded crate
    /// is not; one in an included crate is (a library crate, a file of the registry); the
    /// others as [`default_in_app`] decides.
    #[cfg_attr(not(feature = "error-tracking"), allow(dead_code))]
    pub(crate) fn in_app(&self, filename: Option<&str>, function: Option<&str>) -> bool {
        if let Some(path) = function.map(function_path) {
            if self.exclude.iter().any(|c| under(path, c)) {
                return false;
            }
            if self.include.iter().any(|c| under(path, c)) {
                return true;
            }
        }
        default_in_app(filename, function)
    }
}

/// A crate name as Rust writes it in paths (`my-app` is `my_app`), without `::` at either
/// end; `None` when empty.
fn normalize(name: impl AsRef<str>) -> Option<String> {
    let name = name.as_ref().trim().trim_matches(':').replace('-', "_");
    (!name.is_empty()).then_some(name)
}

/// The path a function is named by: without the leading `<` of a qualified path
/// (`<my_app::Order as core::fmt::Display>::fmt` is `my_app::Order as …`).
fn function_path(function: &str) -> &str {
    function.trim_start_matches('<')
}

/// Whether `path` is the module path `prefix` or inside it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| {
        rest.is_empty() || rest.starts_with("::") || rest.starts_with(['<', ' '])
    })
}

/// Whether a frame is the application's by default: not in a dependency's or the toolchain's
/// files, not in a library crate's functions, not a process entry point. A frame with neither
/// a file nor a function (a binary without symbols) is not.
fn default_in_app(filename: Option<&str>, function: Option<&str>) -> bool {
    if let Some(file) = filename {
        let file = file.replace('\\', "/");
        if LIBRARY_PATHS.iter().any(|p| file.contains(p)) || is_registry_source(&file) {
            return false;
        }
    }
    match function {
        Some(function) => {
            if ENTRY_POINTS.contains(&function) || function.starts_with("__libc_start") {
                return false;
            }
            let name = function_path(function);
            let first = name.split("::").next().unwrap_or(name);
            let first = first.split(['<', ' ']).next().unwrap_or(first);
            !(first.is_empty()
                || first.starts_with("__rust")
                || first == "rust_begin_unwind"
                || LIBRARY_CRATES.contains(&first))
        }
        None => filename.is_some(),
    }
}

/// A file of a crate from a registry (`…/registry/src/<index>-<16 hex>/<crate>/…`).
fn is_registry_source(file: &str) -> bool {
    file.split("/registry/src/").nth(1).is_some_and(|rest| {
        rest.split('/').next().is_some_and(|index| {
            index
                .rsplit('-')
                .next()
                .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str =
        "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.0/src/a.rs";

    #[test]
    fn defaults() {
        let none = InAppCrates::default();
        assert!(none.in_app(Some("/app/src/main.rs"), Some("my_app::main")));
        assert!(!none.in_app(Some(REGISTRY), Some("tokio::runtime::run")));
        assert!(!none.in_app(None, Some("std::panicking::begin")));
        assert!(!none.in_app(None, Some("<core::future::Ready<T> as Future>::poll")));
        assert!(!none.in_app(None, Some("main")));
        assert!(!none.in_app(
            Some("./csu/../sysdeps/nptl/libc_start_call_main.h"),
            Some("__libc_start_call_main")
        ));
        assert!(none.in_app(None, Some("my_app::handler")));
        assert!(!none.in_app(None, None));
        assert!(!none.in_app(Some("/rustc/abc/library/std/src/rt.rs"), Some("x")));
        assert!(is_registry_source(
            "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde-1/src/lib.rs"
        ));
        assert!(!is_registry_source("/app/registry/src/lib.rs"));
    }

    #[test]
    fn included_crates_are_in_app_even_as_libraries() {
        let mut crates = InAppCrates::default();
        crates.include(["tokio", "my-lib", ""]);
        assert_eq!(
            crates.include,
            ["tokio", "my_lib"],
            "normalized, empty left out"
        );
        assert!(crates.in_app(Some(REGISTRY), Some("tokio::runtime::run")));
        assert!(crates.in_app(None, Some("<tokio::task::JoinHandle<T> as Future>::poll")));
        assert!(crates.in_app(None, Some("my_lib::query")));
        assert!(
            !crates.in_app(Some(REGISTRY), Some("tokio_util::codec::decode")),
            "`tokio` is not a prefix of `tokio_util`"
        );
        assert!(
            !crates.in_app(None, Some("std::rt::lang_start")),
            "the defaults stay"
        );
        assert!(
            crates.in_app(None, Some("my_app::main")),
            "the defaults stay"
        );
    }

    #[test]
    fn excluded_crates_are_never_in_app() {
        let mut crates = InAppCrates::default();
        crates.include(["my_app"]);
        crates.exclude(["my_app::generated", "vendored_sdk", "my_app"]);
        assert!(!crates.in_app(Some("/app/src/main.rs"), Some("my_app::main")));
        crates = InAppCrates::default();
        crates.include(["my_app"]);
        crates.exclude(["my_app::generated", "vendored_sdk"]);
        assert!(crates.in_app(Some("/app/src/main.rs"), Some("my_app::main")));
        assert!(!crates.in_app(None, Some("my_app::generated::Api::call")));
        assert!(!crates.in_app(None, Some("<my_app::generated::Api as Drop>::drop")));
        assert!(!crates.in_app(Some("/app/vendored/src/lib.rs"), Some("vendored_sdk::send")));
        assert!(!crates.in_app(None, None));
    }

    #[test]
    fn the_process_wide_crates_come_first() {
        // Only this test in the crate's unit tests sets the process-wide crates.
        let mut process = InAppCrates::default();
        process.include(["tokio"]);
        process.set_process_wide();
        let mut own = InAppCrates::default();
        own.exclude(["tokio::fs"]);
        let all = own.with_process_wide();
        assert!(all.in_app(None, Some("tokio::runtime::run")));
        assert!(!all.in_app(None, Some("tokio::fs::read")));
        InAppCrates::default().set_process_wide();
        assert!(!InAppCrates::default()
            .with_process_wide()
            .in_app(None, Some("tokio::runtime::run")));
    }
}
