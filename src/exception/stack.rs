//! The stack at a capture, as PostHog's error tracking reads it: frames with instruction,
//! symbol and image addresses (and, when the binary has debug info, function, file and line),
//! and the loaded images they point into (`$debug_images`), found with `findshlibs`.

use std::ffi::c_void;

use backtrace::Backtrace;
use findshlibs::{SharedLibrary, SharedLibraryId, TargetSharedLibrary};
use serde_json::{json, Map, Value};

use super::MAX_FRAMES;

/// Frames of these crates (the first `::` segment of the function) are not the application's.
const LIBRARY_CRATES: &[&str] = &[
    "alloc",
    "anyhow",
    "axum",
    "axum_core",
    "backtrace",
    "core",
    "eyre",
    "futures_core",
    "futures_util",
    "http",
    "hyper",
    "hyper_util",
    "posthog_tower",
    "proc_macro",
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
];

/// Process entry points, never the application's.
const ENTRY_POINTS: &[&str] = &[
    "main",
    "_start",
    "__libc_start_main",
    "start_thread",
    "clone",
];

/// One frame (an inlined function gets a frame of its own, at the same addresses).
#[derive(Debug)]
struct Frame {
    instruction: usize,
    symbol: usize,
    image: Option<usize>,
    function: Option<String>,
    filename: Option<String>,
    lineno: Option<u32>,
    inlined: bool,
}

/// A loaded image.
#[derive(Debug)]
struct Image {
    base: usize,
    len: usize,
    stated: usize,
    name: String,
    code_id: Option<String>,
    debug_id: String,
}

/// The stack at a capture, innermost frame first.
#[derive(Debug)]
pub(super) struct Stack {
    frames: Vec<Frame>,
    images: Vec<Image>,
}

impl Stack {
    /// The calling thread's stack, without the frames of the capture itself.
    #[inline(never)]
    pub(super) fn capture() -> Stack {
        let images = images();
        let backtrace = Backtrace::new();
        let mut frames = Vec::new();
        for frame in backtrace.frames() {
            let instruction = frame.ip() as usize;
            let symbol = frame.symbol_address() as usize;
            let image = image_of(&images, instruction).map(|i| i.base);
            let symbols = frame.symbols();
            if symbols.is_empty() {
                frames.push(Frame {
                    instruction,
                    symbol,
                    image,
                    function: None,
                    filename: None,
                    lineno: None,
                    inlined: false,
                });
                continue;
            }
            // Innermost (inlined) first; the last is the function the instruction is in.
            let last = symbols.len() - 1;
            for (i, s) in symbols.iter().enumerate() {
                frames.push(Frame {
                    instruction,
                    symbol,
                    image,
                    // `{:#}` leaves the legacy mangling's hash out.
                    function: s.name().map(|n| format!("{n:#}")),
                    filename: s.filename().map(|f| f.to_string_lossy().into_owned()),
                    lineno: s.lineno(),
                    inlined: i != last,
                });
            }
        }
        // The capture's own frames come first: the backtrace crate's, this function's and the
        // exception builder's, then the caller's.
        let capture = Stack::capture as fn() -> Stack as *const c_void as usize;
        let own = frames
            .iter()
            .take(32)
            .rposition(|f| f.symbol == capture)
            .map_or(0, |at| at + 1);
        frames.drain(..own);
        let skipped = frames
            .iter()
            .take_while(|f| f.function.as_deref().is_some_and(is_capture_machinery))
            .count();
        frames.drain(..skipped);
        Stack { frames, images }
    }

    /// The stack of a panic, from the frame that panicked: without the capture's frames, the
    /// hook's and the standard library's panic machinery.
    #[inline(never)]
    pub(super) fn capture_panic() -> Stack {
        let mut stack = Stack::capture();
        let machinery = stack
            .frames
            .iter()
            .take(32)
            .rposition(|f| {
                f.function.as_deref().is_some_and(|name| {
                    // The panic's dispatch, not the `catch_unwind` frames further out.
                    name.contains("core::panicking::")
                        || name.contains("rust_panic_with_hook")
                        || name.contains("begin_panic")
                        || name.contains("rust_begin_unwind")
                        || name.contains("__rust_end_short_backtrace")
                        || name.contains("exception::panic::")
                })
            })
            .map_or(0, |at| at + 1);
        stack.frames.drain(..machinery);
        stack
    }

    /// The `frames` of the stack trace (outermost first, at most [`MAX_FRAMES`]) and the
    /// `$debug_images` they point into.
    pub(super) fn to_json(&self) -> (Option<Value>, Vec<Value>) {
        let mut frames: Vec<&Frame> = self.frames.iter().rev().collect();
        if frames.len() > MAX_FRAMES {
            // Cut the outermost frames, and an inlined group whole.
            let mut cut = frames.len() - MAX_FRAMES;
            while frames.get(cut).is_some_and(|f| f.inlined) {
                cut += 1;
            }
            frames.drain(..cut);
        }
        if frames.is_empty() {
            return (None, Vec::new());
        }
        let json_frames: Vec<Value> = frames.iter().map(|f| frame_json(f)).collect();
        let images = self
            .images
            .iter()
            .filter(|image| !image.debug_id.is_empty())
            .filter(|image| frames.iter().any(|f| f.image == Some(image.base)))
            .map(image_json)
            .collect();
        (Some(Value::Array(json_frames)), images)
    }
}

fn frame_json(frame: &Frame) -> Value {
    let mut out = Map::new();
    if let Some(filename) = &frame.filename {
        out.insert("filename".into(), filename.clone().into());
    }
    if let Some(lineno) = frame.lineno {
        out.insert("lineno".into(), lineno.into());
    }
    if let Some(function) = frame.function.as_ref().filter(|f| !f.is_empty()) {
        out.insert("function".into(), function.clone().into());
    }
    out.insert("lang".into(), "rust".into());
    out.insert("platform".into(), "native".into());
    out.insert("synthetic".into(), false.into());
    out.insert(
        "in_app".into(),
        in_app(frame.filename.as_deref(), frame.function.as_deref()).into(),
    );
    out.insert(
        "client_resolved".into(),
        (frame.function.is_some() || frame.filename.is_some()).into(),
    );
    out.insert("instruction_addr".into(), hex(frame.instruction).into());
    if frame.symbol != 0 {
        out.insert("symbol_addr".into(), hex(frame.symbol).into());
    }
    if let Some(image) = frame.image {
        out.insert("image_addr".into(), hex(image).into());
    }
    if frame.inlined {
        out.insert("inline".into(), true.into());
    }
    Value::Object(out)
}

fn image_json(image: &Image) -> Value {
    let mut out = json!({
        "type": if cfg!(target_vendor = "apple") { "macho" } else if cfg!(windows) { "pe" } else { "elf" },
        "debug_id": image.debug_id,
        "image_addr": hex(image.base),
        "image_size": image.len,
        "image_vmaddr": hex(image.stated),
        "code_file": image.name,
        "arch": match std::env::consts::ARCH { "aarch64" => "arm64", arch => arch },
    });
    if let (Some(code_id), Value::Object(map)) = (&image.code_id, &mut out) {
        map.insert("code_id".into(), code_id.clone().into());
    }
    out
}

fn hex(address: usize) -> String {
    format!("{address:#x}")
}

/// Whether a frame is the application's: not in a dependency's or the toolchain's files, not
/// in a library crate's functions, not a process entry point. A frame with neither a file nor
/// a function (a binary without symbols) is not.
fn in_app(filename: Option<&str>, function: Option<&str>) -> bool {
    if let Some(file) = filename {
        let file = file.replace('\\', "/");
        if LIBRARY_PATHS.iter().any(|p| file.contains(p)) || is_registry_source(&file) {
            return false;
        }
    }
    match function {
        Some(function) => {
            if ENTRY_POINTS.contains(&function) {
                return false;
            }
            let name = function.trim_start_matches('<');
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

/// The functions a capture goes through before the caller's frame.
fn is_capture_machinery(function: &str) -> bool {
    let function = function.replace(['<', '>'], "");
    function.starts_with("backtrace::")
        || function.contains("exception::stack::Stack::capture")
        || function.contains("exception::panic::")
        || function.contains("exception::Exception::new")
        || function.contains("exception::Exception::from_message")
        || function.contains("PostHog::capture_exception")
        // A `tracing` event's dispatch to `integrations::tracing`'s layer.
        || function.contains("integrations::tracing::")
        || function.starts_with("tracing_subscriber::")
        || function.starts_with("tracing_core::")
        || function.starts_with("std::thread::local::LocalKey")
}

/// The image `address` is in.
fn image_of(images: &[Image], address: usize) -> Option<&Image> {
    images
        .iter()
        .find(|i| address >= i.base && address - i.base < i.len)
}

/// The images loaded in the process.
fn images() -> Vec<Image> {
    let mut images = Vec::new();
    TargetSharedLibrary::each(|lib| {
        let mut name = lib.name().to_string_lossy().into_owned();
        if name.is_empty() {
            if let Ok(exe) = std::env::current_exe() {
                name = exe.to_string_lossy().into_owned();
            }
        }
        let code_id = match lib.id() {
            Some(SharedLibraryId::GnuBuildId(bytes)) => Some(to_hex(&bytes)),
            _ => None,
        };
        images.push(Image {
            base: lib.actual_load_addr().0,
            len: lib.len(),
            stated: lib.stated_load_addr().0,
            name,
            code_id,
            debug_id: lib.debug_id().map(debug_id).unwrap_or_default(),
        });
    });
    images.sort_by_key(|i| i.base);
    images
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The debug id symbol servers index an image by: a GNU build id's first 16 bytes as a UUID
/// whose first three fields are little-endian on little-endian targets; a Mach-O UUID as it
/// is; a PDB signature with its age.
fn debug_id(id: SharedLibraryId) -> String {
    let swapped = |mut bytes: [u8; 16]| {
        if cfg!(target_endian = "little") {
            bytes[0..4].reverse();
            bytes[4..6].reverse();
            bytes[6..8].reverse();
        }
        uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
    };
    match id {
        SharedLibraryId::GnuBuildId(build_id) => {
            let mut bytes = [0u8; 16];
            let n = build_id.len().min(16);
            bytes[..n].copy_from_slice(&build_id[..n]);
            swapped(bytes)
        }
        SharedLibraryId::Uuid(bytes) => uuid::Uuid::from_bytes(bytes)
            .hyphenated()
            .to_string()
            .to_uppercase(),
        SharedLibraryId::PdbSignature(guid, age) => {
            let id = swapped(guid);
            if age > 0 {
                format!("{id}-{age:x}")
            } else {
                id
            }
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_app_rules() {
        assert!(in_app(Some("/app/src/main.rs"), Some("my_app::main")));
        assert!(!in_app(
            Some("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.0/src/a.rs"),
            Some("tokio::runtime::run")
        ));
        assert!(!in_app(None, Some("std::panicking::begin")));
        assert!(!in_app(
            None,
            Some("<core::future::Ready<T> as Future>::poll")
        ));
        assert!(!in_app(None, Some("main")));
        assert!(in_app(None, Some("my_app::handler")));
        assert!(!in_app(None, None));
        assert!(!in_app(Some("/rustc/abc/library/std/src/rt.rs"), Some("x")));
        assert!(is_registry_source(
            "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde-1/src/lib.rs"
        ));
        assert!(!is_registry_source("/app/registry/src/lib.rs"));
    }

    #[test]
    fn debug_ids_from_build_ids() {
        let build_id: Vec<u8> = (1..=20).collect();
        let id = debug_id(SharedLibraryId::GnuBuildId(build_id));
        if cfg!(target_endian = "little") {
            assert_eq!(id, "04030201-0605-0807-090a-0b0c0d0e0f10");
        }
    }
}
