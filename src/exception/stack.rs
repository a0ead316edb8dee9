//! The stack at a capture, as PostHog's error tracking reads it: frames with instruction,
//! symbol and image addresses (and, when the binary has debug info, function, file and line),
//! and the loaded images they point into (`$debug_images`), found with `findshlibs`.
//!
//! As posthog-rs sends them: a frame's addresses only when its image has a debug id (the
//! server can symbolicate nothing else; without them the frame is the client's resolution,
//! passed through as it is), and a frame with neither a name nor such an address is left out.

use std::ffi::c_void;

use backtrace::Backtrace;
use findshlibs::{SharedLibrary, SharedLibraryId, TargetSharedLibrary};
use serde_json::{json, Map, Value};

use super::{in_app::InAppCrates, MAX_FRAMES};

/// One frame (an inlined function gets a frame of its own, at the same addresses).
#[derive(Debug)]
pub(super) struct Frame {
    /// `None` when only the frame's text is known (a standard library backtrace's).
    pub(super) instruction: Option<usize>,
    /// 0 when unknown.
    pub(super) symbol: usize,
    pub(super) image: Option<usize>,
    pub(super) function: Option<String>,
    pub(super) filename: Option<String>,
    pub(super) lineno: Option<u32>,
    /// An inlined function's frame: the frames of one instruction are innermost first, the
    /// last of them (the function the instruction is in) not inlined.
    pub(super) inlined: bool,
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
    /// A stack of these frames (innermost first), their images among the loaded ones.
    #[cfg(any(feature = "anyhow", feature = "eyre"))]
    pub(super) fn from_frames(mut frames: Vec<Frame>) -> Stack {
        let images = images();
        for frame in &mut frames {
            frame.image = frame
                .instruction
                .and_then(|ip| image_of(&images, ip))
                .map(|i| i.base);
        }
        Stack { frames, images }
    }

    /// The calling thread's stack, without the frames of the capture itself.
    #[inline(never)]
    pub(super) fn capture() -> Stack {
        let images = images();
        let backtrace = Backtrace::new();
        let mut frames = Vec::new();
        for frame in backtrace.frames() {
            let ip = frame.ip() as usize;
            let instruction = Some(ip);
            let symbol = frame.symbol_address() as usize;
            let image = image_of(&images, ip).map(|i| i.base);
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

    /// The `frames` of the stack trace (outermost first, at most [`MAX_FRAMES`]), `in_app`
    /// as `crates` decide, and the `$debug_images` they point into.
    pub(super) fn to_json(&self, crates: &InAppCrates) -> (Option<Value>, Vec<Value>) {
        let symbolicable = |frame: &Frame| {
            frame.instruction.is_some()
                && frame.image.is_some_and(|base| {
                    self.images
                        .iter()
                        .any(|i| i.base == base && !i.debug_id.is_empty())
                })
        };
        let mut frames: Vec<Wire<'_>> = self
            .frames
            .iter()
            .rev()
            .map(|frame| Wire {
                frame,
                addressed: symbolicable(frame),
            })
            .filter(|w| w.addressed || w.frame.function.is_some() || w.frame.filename.is_some())
            .collect();
        if frames.len() > MAX_FRAMES {
            // Cut the outermost frames, and an inlined group whole.
            let mut cut = frames.len() - MAX_FRAMES;
            while frames.get(cut).is_some_and(Wire::inline) {
                cut += 1;
            }
            frames.drain(..cut);
        }
        if frames.is_empty() {
            return (None, Vec::new());
        }
        let json_frames: Vec<Value> = frames.iter().map(|w| w.to_json(crates)).collect();
        let images = self
            .images
            .iter()
            .filter(|image| !image.debug_id.is_empty())
            .filter(|image| {
                frames
                    .iter()
                    .any(|w| w.addressed && w.frame.image == Some(image.base))
            })
            .map(image_json)
            .collect();
        (Some(Value::Array(json_frames)), images)
    }
}

/// A frame as it is sent.
struct Wire<'a> {
    frame: &'a Frame,
    /// Its image has a debug id: its addresses are sent, and its inline marker.
    addressed: bool,
}

impl Wire<'_> {
    /// A member of an inline group (the frames of one address): only addressed frames form
    /// groups, which the server resolves together.
    fn inline(&self) -> bool {
        self.addressed && self.frame.inlined
    }

    fn to_json(&self, crates: &InAppCrates) -> Value {
        let frame = self.frame;
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
            crates
                .in_app(frame.filename.as_deref(), frame.function.as_deref())
                .into(),
        );
        out.insert(
            "client_resolved".into(),
            (frame.function.is_some() || frame.filename.is_some()).into(),
        );
        if let (true, Some(instruction)) = (self.addressed, frame.instruction) {
            out.insert("instruction_addr".into(), hex(instruction).into());
            if frame.symbol != 0 {
                out.insert("symbol_addr".into(), hex(frame.symbol).into());
            }
            if let Some(image) = frame.image {
                out.insert("image_addr".into(), hex(image).into());
            }
        }
        if self.inline() {
            out.insert("inline".into(), true.into());
        }
        Value::Object(out)
    }
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

/// The functions a capture goes through before the caller's frame.
fn is_capture_machinery(function: &str) -> bool {
    let function = function.replace(['<', '>'], "");
    function.starts_with("backtrace::")
        || function.contains("exception::stack::Stack::capture")
        || function.contains("exception::panic::")
        || function.contains("exception::Exception::new")
        || function.contains("exception::Exception::from_message")
        || function.contains("exception::Exception::from_anyhow")
        || function.contains("exception::Exception::from_eyre")
        || function.contains("PostHog::capture_exception")
        // A `tracing` event's dispatch to `integrations::tracing`'s layer.
        || function.contains("integrations::tracing::")
        || function.starts_with("tracing_subscriber::")
        || function.starts_with("tracing_core::")
        || function.starts_with("std::thread::local::LocalKey")
        || function.contains("PostHog::capture_anyhow")
        || function.contains("PostHog::capture_eyre")
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

    fn frame(instruction: usize, function: Option<&str>, inlined: bool) -> Frame {
        Frame {
            instruction: Some(instruction),
            symbol: 0x10,
            image: Some(instruction & !0xfff),
            function: function.map(str::to_owned),
            filename: None,
            lineno: None,
            inlined,
        }
    }

    fn image(base: usize, debug_id: &str) -> Image {
        Image {
            base,
            len: 0x1000,
            stated: 0,
            name: format!("lib{base:x}.so"),
            code_id: None,
            debug_id: debug_id.to_owned(),
        }
    }

    /// As posthog-rs: addresses (and inline groups) only for frames in an image with a debug
    /// id, which alone go to `$debug_images`; a frame with neither a name nor such an address
    /// is left out.
    #[test]
    fn only_symbolicable_frames_carry_addresses() {
        let stack = Stack {
            // Innermost first.
            frames: vec![
                frame(0x1010, Some("my_app::inlined"), true),
                frame(0x1010, Some("my_app::handler"), false),
                frame(0x2020, Some("libfoo_inlined"), true),
                frame(0x2020, Some("libfoo_call"), false),
                frame(0x2030, None, false),
                frame(0x1040, None, false),
            ],
            images: vec![
                image(0x1000, "04030201-0605-0807-090a-0b0c0d0e0f10"),
                image(0x2000, ""),
            ],
        };
        let (frames, images) = stack.to_json(&InAppCrates::default());
        let frames = frames.expect("frames");
        let frames = frames.as_array().expect("an array");
        let summary: Vec<(Option<&str>, Option<&str>, bool)> = frames
            .iter()
            .map(|f| {
                (
                    f["function"].as_str(),
                    f["instruction_addr"].as_str(),
                    f.get("inline").is_some(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (None, Some("0x1040"), false),
                (Some("libfoo_call"), None, false),
                (Some("libfoo_inlined"), None, false),
                (Some("my_app::handler"), Some("0x1010"), false),
                (Some("my_app::inlined"), Some("0x1010"), true),
            ]
        );
        assert!(frames[1].get("image_addr").is_none() && frames[1].get("symbol_addr").is_none());
        assert_eq!(frames[3]["image_addr"], "0x1000");
        assert_eq!(frames[3]["symbol_addr"], "0x10");
        assert_eq!(frames[0]["client_resolved"], false);
        assert_eq!(images.len(), 1);
        assert_eq!(images[0]["image_addr"], "0x1000");
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
