//! Frames read from the text of a standard library backtrace (`std::backtrace::Backtrace`,
//! whose frames are not public API): its alternate `Display` (`{:#}`, what anyhow gives) has
//! each frame's instruction address, function, file and line; the plain one (in eyre's report)
//! the same without addresses.
//!
//! ```text
//!    4:     0x5646cae3be94 - <E as anyhow::context::ext::StdError>::ext_context::hbfc1367ef13bc3f7
//!                                at /root/.cargo/registry/src/…/anyhow-1.0.105/src/backtrace.rs:10:14
//!    6:     0x5646cae3753e - my_app::inner::h822a0f9bd4e64664
//!                                at /app/src/main.rs:5:7
//! ```

use super::stack::Frame;

/// The frames of a backtrace's text, innermost first, from the frame that created the error:
/// without the backtrace's own frames and those of the error library that took it (anyhow,
/// eyre, the `?` conversion into it). `None` when `text` has a line that is not a frame's
/// (not a backtrace, or a format this parser does not know) or no frame is left.
pub(super) fn parse(text: &str) -> Option<Vec<Frame>> {
    let mut frames: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(location) = line.strip_prefix("at ") {
            let frame = frames.last_mut().filter(|f| f.filename.is_none())?;
            let (file, line) = split_location(location);
            frame.filename = Some(file.to_owned());
            frame.lineno = line;
            continue;
        }
        let (index, rest) = line.split_once(": ")?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let rest = rest.trim_start();
        let (instruction, name) = match rest.split_once(" - ") {
            Some((address, name)) if address.starts_with("0x") => {
                let address = usize::from_str_radix(&address[2..], 16).ok()?;
                (Some(address).filter(|a| *a != 0), name)
            }
            _ => (None, rest),
        };
        let function = Some(name.trim())
            .filter(|n| !n.is_empty() && *n != "<unknown>")
            .map(normalize_function);
        // The standard library prints each function inlined at an address as a frame of its
        // own at that address, innermost first: a run of one address is one inline group.
        // (Frames of a recursion returning to one address look the same, and are grouped.)
        if let (Some(previous), Some(_)) = (frames.last_mut(), instruction) {
            if previous.instruction == instruction {
                previous.inlined = true;
            }
        }
        frames.push(Frame {
            instruction,
            symbol: 0,
            image: None,
            function,
            filename: None,
            lineno: None,
            inlined: false,
        });
    }
    let machinery = frames
        .iter()
        .take(32)
        .rposition(|f| f.function.as_deref().is_some_and(is_error_machinery))
        .map_or(0, |at| at + 1);
    frames.drain(..machinery);
    let conversions = frames
        .iter()
        .take_while(|f| {
            f.function.as_deref().is_some_and(|name| {
                name.contains("FromResidual") && name.ends_with("from_residual")
            })
        })
        .count();
    frames.drain(..conversions);
    (!frames.is_empty()).then_some(frames)
}

/// `file:line:column` (the line and column optional) as the file and the line.
fn split_location(location: &str) -> (&str, Option<u32>) {
    let number = |text: &str| -> Option<(usize, u32)> {
        let (head, tail) = text.rsplit_once(':')?;
        tail.parse::<u32>().ok().map(|n| (head.len(), n))
    };
    match number(location) {
        Some((end, last)) => match number(&location[..end]) {
            Some((file_end, line)) => (&location[..file_end], Some(line)),
            None => (&location[..end], Some(last)),
        },
        None => (location, None),
    }
}

/// The frames that take a backtrace and make the error around it.
fn is_error_machinery(function: &str) -> bool {
    let path = function.trim_start_matches('<');
    ["std::backtrace", "backtrace::", "anyhow::", "eyre::"]
        .iter()
        .any(|p| path.starts_with(p))
        || path.contains(" as anyhow::")
        || path.contains(" as eyre::")
}

/// A function's name without the compiler's hashes: the legacy mangling's `::h<16 hex>` at
/// its end and the crate disambiguators (`std[e28293b1aa0f68bd]::…`) of the v0 mangling, as
/// the names of [`Stack::capture`](super::stack::Stack::capture) are.
fn normalize_function(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let bracketed = &rest[open..];
        let Some(close) = bracketed.find(']') else {
            out.push_str(bracketed);
            rest = "";
            break;
        };
        if !is_disambiguator(&bracketed[1..close]) {
            out.push_str(&bracketed[..=close]);
        }
        rest = &bracketed[close + 1..];
    }
    out.push_str(rest);
    match out.rsplit_once("::") {
        Some((head, hash))
            if hash.len() == 17
                && hash.starts_with('h')
                && hash[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            head.to_owned()
        }
        _ => out,
    }
}

fn is_disambiguator(text: &str) -> bool {
    text.len() >= 8
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:#}` of the backtrace of `inner().context("starting")`, where `inner` returns
    /// `Err(io_error).context("reading config")?` (rustc 1.9x, debug build).
    const ANYHOW: &str = "   0:     0x5646cae654cb - std[e28293b1aa0f68bd]::backtrace_rs::backtrace::libunwind::trace
                               at /rustc/5980761/library/std/src/../../backtrace/src/backtrace/libunwind.rs:117:9
   1:     0x5646cae654cb - <std[e28293b1aa0f68bd]::backtrace::Backtrace>::create
                               at /rustc/5980761/library/std/src/backtrace.rs:331:13
   2:     0x5646cae656dc - <std[e28293b1aa0f68bd]::backtrace::Backtrace>::capture
                               at /rustc/5980761/library/std/src/backtrace.rs:296:9
   3:     0x5646cae3be94 - <E as anyhow::context::ext::StdError>::ext_context::hbfc1367ef13bc3f7
                               at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/anyhow-1.0.105/src/backtrace.rs:10:14
   4:     0x5646cae39d1f - anyhow::context::<impl anyhow::Context<T,E> for core::result::Result<T,E>>::context::hc4daf05627ddbbb3
                               at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/anyhow-1.0.105/src/context.rs:54:37
   5:     0x5646cae3753e - my_app::inner::h822a0f9bd4e64664
                               at /app/src/main.rs:5:7
   6:     0x5646cae375a6 - my_app::outer::hc37417ecbdbcfc73
                               at /app/src/main.rs:9:36
   7:     0x5646cae70bd4 - std[e28293b1aa0f68bd]::panicking::catch_unwind::do_call::<std[e28293b1aa0f68bd]::rt::lang_start_internal::{closure#0}, isize>
                               at /rustc/5980761/library/std/src/panicking.rs:581:40
   8:     0x5646cae70bd4 - std[e28293b1aa0f68bd]::rt::lang_start_internal
                               at /rustc/5980761/library/std/src/rt.rs:171:5
   9:     0x5646cae375de - main
  10:     0x7fc1571dc24a - __libc_start_call_main
                               at ./csu/../sysdeps/nptl/libc_start_call_main.h:58:16
  11:                0x0 - <unknown>
";

    #[test]
    fn an_alternate_backtrace_from_the_frame_that_made_the_error() {
        let frames = parse(ANYHOW).expect("frames");
        let names: Vec<&str> = frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect();
        assert_eq!(
            names,
            [
                "my_app::inner",
                "my_app::outer",
                "std::panicking::catch_unwind::do_call::<std::rt::lang_start_internal::{closure#0}, isize>",
                "std::rt::lang_start_internal",
                "main",
                "__libc_start_call_main",
            ]
        );
        assert_eq!(frames[0].instruction, Some(0x5646cae3753e));
        assert_eq!(frames[0].filename.as_deref(), Some("/app/src/main.rs"));
        assert_eq!(frames[0].lineno, Some(5));
        assert_eq!(frames[4].filename, None);
        // The two frames at 0x5646cae70bd4: the inlined one first.
        let inlined: Vec<bool> = frames.iter().map(|f| f.inlined).collect();
        assert_eq!(inlined, [false, false, true, false, false, false, false]);
        assert_eq!(frames.last().map(|f| f.instruction), Some(None), "0x0");
    }

    #[test]
    fn a_plain_backtrace_has_no_addresses() {
        let text = "   0: eyre::DefaultHandler::default_with
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/eyre-0.6.14/src/backtrace.rs:10:14
   1: core::ops::function::Fn::call
             at /rustc/5980761/library/core/src/ops/function.rs:79:5
   2: eyre::capture_handler
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/eyre-0.6.14/src/lib.rs:601:23
   3: <core::result::Result<T, F> as core::ops::try_trait::FromResidual<core::result::Result<core::convert::Infallible, E>>>::from_residual
             at /rustc/5980761/library/core/src/result.rs:2000:27
   4: my_app::load
             at ./src/main.rs:10:102
   5: my_app::main
             at ./src/main.rs:18
";
        let frames = parse(text).expect("frames");
        let names: Vec<&str> = frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect();
        assert_eq!(names, ["my_app::load", "my_app::main"]);
        assert!(frames.iter().all(|f| f.instruction.is_none() && !f.inlined));
        assert_eq!(frames[1].filename.as_deref(), Some("./src/main.rs"));
        assert_eq!(frames[1].lineno, Some(18));
    }

    #[test]
    fn other_text_is_not_a_backtrace() {
        assert!(parse("").is_none());
        assert!(parse("disabled backtrace").is_none());
        assert!(parse("   0: anyhow::msg\n").is_none(), "nothing left");
        assert!(parse("   0: my_app::f\nsomething else\n").is_none());
        assert!(parse("   0: my_app::f\n   at a.rs:1\n   at b.rs:2\n").is_none());
        assert!(parse("x: my_app::f\n").is_none());
    }

    #[test]
    fn locations_and_names() {
        assert_eq!(split_location("/a/b.rs:10:14"), ("/a/b.rs", Some(10)));
        assert_eq!(split_location("/a/b.rs:10"), ("/a/b.rs", Some(10)));
        assert_eq!(split_location(r"C:\a\b.rs:3:1"), (r"C:\a\b.rs", Some(3)));
        assert_eq!(split_location("/a/b.rs"), ("/a/b.rs", None));
        assert_eq!(
            normalize_function("std[e28293b1aa0f68bd]::rt::lang_start::<()>"),
            "std::rt::lang_start::<()>"
        );
        assert_eq!(
            normalize_function("my_app::f::h822a0f9bd4e64664"),
            "my_app::f"
        );
        assert_eq!(
            normalize_function("<[u8; 32] as x::Y>::z"),
            "<[u8; 32] as x::Y>::z"
        );
        assert_eq!(normalize_function("f[abc"), "f[abc");
    }
}
