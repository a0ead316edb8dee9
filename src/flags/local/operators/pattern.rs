//! `regex` / `not_regex` filters, as posthog-python 7.91.1 runs them.
//!
//! posthog-python only runs a pattern locally when it is in the syntax Python's `re` and the
//! flags service's Rust engine read alike (its `_RegexTranslator`); anything else is left to
//! the server. We apply the same screen, then decide what Python's `re.compile` would do with
//! the pattern (invalid patterns match nothing, for both operators) and compile the pattern
//! for the `regex` crate in an equivalent spelling. Some values are also left to the server
//! (`$` with a final newline, Unicode word characters, Python-only whitespace).

use std::sync::OnceLock;

use regex::Regex;

/// A compiled regex filter.
#[derive(Debug)]
pub(super) enum Pattern {
    /// The empty pattern matches everything.
    Empty,
    /// Python's `re` rejects the pattern: no match for `regex` nor `not_regex`.
    Invalid,
    /// Only the server can run the pattern.
    Deferred(&'static str),
    Compiled(Box<Compiled>),
}

#[derive(Debug)]
pub(super) struct Compiled {
    regex: Regex,
    uses_word_class: bool,
    uses_space_class: bool,
    /// `$` and a quantifier or alternation: values ending in a newline are deferred.
    strict_end: bool,
}

/// Why a value is matched by the server instead.
pub(super) const DEFERRED_VALUE: &str =
    "unsupported definition: regex must run on the server for this value";

impl Compiled {
    /// Whether the pattern matches somewhere in `text`, or `Err` when the server must decide.
    pub(super) fn search(&self, text: &str) -> Result<bool, &'static str> {
        if self.strict_end && text.ends_with('\n') {
            return Err(DEFERRED_VALUE);
        }
        if self.uses_word_class && !text.is_ascii() && non_word_non_ascii().is_match(text) {
            return Err(DEFERRED_VALUE);
        }
        if self.uses_space_class && text.bytes().any(|b| (0x1c..=0x1f).contains(&b)) {
            return Err(DEFERRED_VALUE);
        }
        Ok(self.regex.is_match(text))
    }
}

/// Non-ASCII characters that are neither letters nor decimal digits: where Python's and Rust's
/// `\w` part ways.
fn non_word_non_ascii() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // The pattern is a constant that the tests compile: it cannot fail.
    RE.get_or_init(|| Regex::new(r"[^\x00-\x7F\p{L}\p{Nd}]").expect("valid regex"))
}

const DEFERRED_SYNTAX: &str = "unsupported definition: regex syntax must run on the server";
const DEFERRED_COMPILE: &str = "unsupported definition: regex cannot be compiled locally";

/// What the previous piece of the pattern was, as posthog-python's translator tracks it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    Start,
    Literal,
    Quantifier,
    EmptyGroup,
    Char(char),
}

/// posthog-python's `_RegexTranslator`: rejects the syntax the two engines read differently
/// and records what the matching needs to know.
struct Screen<'a> {
    p: &'a [char],
    i: usize,
    class_start: Option<usize>,
    previous: Prev,
    group_has_quantifier: Vec<bool>,
    closed_group_has_quantifier: bool,
    uses_word_class: bool,
    uses_space_class: bool,
    uses_end_anchor: bool,
    uses_quantifier_or_alternation: bool,
}

type Deferred = ();

impl Screen<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.p.get(i).copied()
    }

    fn run(&mut self) -> Result<(), Deferred> {
        while self.i < self.p.len() {
            let c = self.p[self.i];
            if self.class_start.is_none() {
                self.scan_group(c)?;
            }
            self.character(c)?;
            self.i += 1;
        }
        Ok(())
    }

    fn scan_group(&mut self, c: char) -> Result<(), Deferred> {
        self.uses_end_anchor |= c == '$';
        self.uses_quantifier_or_alternation |= "*+?{|".contains(c);
        match c {
            '(' => self.group_has_quantifier.push(false),
            ')' => {
                self.closed_group_has_quantifier = self.group_has_quantifier.pop().unwrap_or(false);
                if let Some(last) = self.group_has_quantifier.last_mut() {
                    *last |= self.closed_group_has_quantifier;
                }
            }
            '*' | '+' | '?' | '{' => {
                // A quantified group that is quantified again: nested repetition.
                if self.previous == Prev::Char(')') && self.closed_group_has_quantifier {
                    return Err(());
                }
                if let Some(last) = self.group_has_quantifier.last_mut() {
                    *last = true;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn character(&mut self, c: char) -> Result<(), Deferred> {
        match c {
            '\\' => self.escape(),
            '[' => {
                if self.class_start.is_some() {
                    return Err(());
                }
                self.class_start = Some(self.i);
                Ok(())
            }
            ']' if self.class_start.is_some() => self.close_class(),
            _ if self.class_start.is_some() => self.class_character(c),
            _ => self.outside_class(c),
        }
    }

    fn escape(&mut self) -> Result<(), Deferred> {
        self.i += 1;
        let Some(escaped) = self.at(self.i) else {
            return Ok(());
        };
        if escaped == 'x' {
            let hex = self.p.get(self.i + 1..self.i + 3).unwrap_or_default();
            if hex.len() != 2 || !hex.iter().all(char::is_ascii_hexdigit) {
                return Err(());
            }
            self.i += 2;
            self.previous = Prev::Literal;
            return Ok(());
        }
        let in_class = self.class_start.is_some();
        if "bB<>".contains(escaped) && !in_class {
            return Err(());
        }
        if !"dDsSwWbfnrt".contains(escaped) {
            if !(escaped.is_ascii_graphic() || escaped == ' ') || escaped.is_ascii_alphanumeric() {
                return Err(());
            }
            if in_class && !r"\-[]^.$*+?(){}|".contains(escaped) {
                return Err(());
            }
        }
        self.uses_word_class |= "wW".contains(escaped);
        self.uses_space_class |= "sS".contains(escaped);
        self.previous = Prev::Literal;
        Ok(())
    }

    fn close_class(&mut self) -> Result<(), Deferred> {
        let start = self.class_start.take().unwrap_or_default();
        let content_start = start
            + if self.at(start + 1) == Some('^') {
                2
            } else {
                1
            };
        if self.i == content_start {
            return Err(());
        }
        self.previous = Prev::Literal;
        Ok(())
    }

    fn class_character(&mut self, c: char) -> Result<(), Deferred> {
        let next = self.at(self.i + 1);
        if matches!(
            (c, next),
            ('&', Some('&')) | ('-', Some('-')) | ('~', Some('~'))
        ) {
            return Err(());
        }
        if c == '-' && next.is_some_and(|n| n != ']') {
            let shorthand = |a: Option<char>, b: Option<char>| {
                a == Some('\\') && b.is_some_and(|b| "dDsSwW".contains(b))
            };
            if shorthand(next, self.at(self.i + 2))
                || (self.i >= 2 && shorthand(self.at(self.i - 2), self.at(self.i - 1)))
            {
                return Err(());
            }
        }
        Ok(())
    }

    fn outside_class(&mut self, c: char) -> Result<(), Deferred> {
        if c == '(' && self.at(self.i + 1) == Some('?') {
            if self.at(self.i + 2) != Some(':') {
                return Err(());
            }
            self.i += 2;
            self.previous = Prev::Char('(');
            return Ok(());
        }
        if c == '{' {
            return self.repetition();
        }
        if "*+?".contains(c) {
            let next = self.at(self.i + 1);
            if matches!(
                self.previous,
                Prev::Char('^') | Prev::Char('$') | Prev::EmptyGroup
            ) || matches!(next, Some('+' | '{'))
            {
                return Err(());
            }
            self.previous = Prev::Quantifier;
        } else {
            self.previous =
                if c == ')' && matches!(self.previous, Prev::Char('(') | Prev::EmptyGroup) {
                    Prev::EmptyGroup
                } else {
                    Prev::Char(c)
                };
        }
        Ok(())
    }

    fn repetition(&mut self) -> Result<(), Deferred> {
        let (len, counts) = repetition_at(&self.p[self.i..]).ok_or(())?;
        if matches!(
            self.previous,
            Prev::Start
                | Prev::Char('|')
                | Prev::Char('(')
                | Prev::Char('^')
                | Prev::Char('$')
                | Prev::EmptyGroup
                | Prev::Quantifier
        ) {
            return Err(());
        }
        for count in counts.into_iter().flatten() {
            if count.len() > 10 || parse_count(count) > 0xFFFF_FFFF {
                return Err(());
            }
        }
        self.i += len - 1;
        if matches!(self.at(self.i + 1), Some('+' | '{')) {
            return Err(());
        }
        self.previous = Prev::Quantifier;
        Ok(())
    }
}

fn parse_count(digits: &[char]) -> u64 {
    digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10)
            .saturating_add(u64::from(*d as u32 - '0' as u32))
    })
}

/// `\{([0-9]+)(?:,([0-9]*))?\}` at the start of `p`: its length and its digit runs (the
/// second is `None` for `{m}`, and may be empty for `{m,}`).
fn repetition_at(p: &[char]) -> Option<(usize, [Option<&[char]>; 2])> {
    let digits_from = |start: usize| {
        let n = p[start.min(p.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        &p[start..start + n]
    };
    if p.first() != Some(&'{') || p.len() < 2 {
        return None;
    }
    let low = digits_from(1);
    if low.is_empty() {
        return None;
    }
    let mut at = 1 + low.len();
    let mut high = None;
    if p.get(at) == Some(&',') {
        let digits = digits_from(at + 1);
        high = Some(digits);
        at += 1 + digits.len();
    }
    if p.get(at) != Some(&'}') {
        return None;
    }
    Some((at + 1, [Some(low), high]))
}

/// Python's `sre_parse` on a screened pattern: is it valid, and how does the `regex` crate
/// spell it.
enum Verdict {
    Valid(String),
    Invalid,
    /// Python raises something other than `re.error` (a repetition count past its limit).
    Overflow,
}

/// The last item of the current branch, for Python's "nothing to repeat" and "multiple repeat".
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Nothing,
    Item,
    Assertion,
    Repeat,
}

/// Python's `MAXREPEAT`: repetition counts from here on overflow.
const MAX_REPEAT: u64 = 0xFFFF_FFFF;

/// Writes `c` so that the `regex` crate reads it as that literal character, in or out of a class.
fn push_literal(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() || !c.is_ascii() {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:X}}}", c as u32));
    }
}

/// A class item: a single character or a shorthand class.
enum ClassAtom {
    Char(char),
    Shorthand(char),
}

fn class_escape(p: &[char], i: &mut usize) -> Option<ClassAtom> {
    // `p[*i]` is the backslash; the screen guarantees a supported escape follows.
    *i += 1;
    let c = *p.get(*i)?;
    *i += 1;
    Some(match c {
        'd' | 'D' | 's' | 'S' | 'w' | 'W' => ClassAtom::Shorthand(c),
        'b' => ClassAtom::Char('\u{8}'),
        'f' => ClassAtom::Char('\u{c}'),
        'n' => ClassAtom::Char('\n'),
        'r' => ClassAtom::Char('\r'),
        't' => ClassAtom::Char('\t'),
        'x' => {
            let hex: String = p.get(*i..*i + 2)?.iter().collect();
            *i += 2;
            ClassAtom::Char(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?)
        }
        c => ClassAtom::Char(c),
    })
}

fn push_atom(out: &mut String, atom: &ClassAtom) {
    match atom {
        ClassAtom::Char(c) => push_literal(out, *c),
        ClassAtom::Shorthand(c) => {
            out.push('\\');
            out.push(*c);
        }
    }
}

/// Parses a class from `p[*i]` (the `[`) as Python does; `None` when Python rejects it.
fn parse_class(p: &[char], i: &mut usize, out: &mut String) -> Option<()> {
    *i += 1;
    out.push('[');
    if p.get(*i) == Some(&'^') {
        *i += 1;
        out.push('^');
    }
    let mut empty = true;
    loop {
        let this = *p.get(*i)?;
        if this == ']' && !empty {
            *i += 1;
            out.push(']');
            return Some(());
        }
        let first = if this == '\\' {
            class_escape(p, i)?
        } else {
            *i += 1;
            ClassAtom::Char(this)
        };
        empty = false;
        if p.get(*i) == Some(&'-') {
            *i += 1;
            let that = *p.get(*i)?;
            if that == ']' {
                push_atom(out, &first);
                push_literal(out, '-');
                *i += 1;
                out.push(']');
                return Some(());
            }
            let second = if that == '\\' {
                class_escape(p, i)?
            } else {
                *i += 1;
                ClassAtom::Char(that)
            };
            let (ClassAtom::Char(lo), ClassAtom::Char(hi)) = (first, second) else {
                return None;
            };
            if hi < lo {
                return None;
            }
            push_literal(out, lo);
            out.push('-');
            push_literal(out, hi);
        } else {
            push_atom(out, &first);
        }
    }
}

fn python_parse(p: &[char]) -> Verdict {
    let mut out = String::with_capacity(p.len() * 2);
    let mut i = 0;
    let mut depth = 0usize;
    let mut last = Last::Nothing;
    while i < p.len() {
        let c = p[i];
        match c {
            '\\' => {
                let Some(&escaped) = p.get(i + 1) else {
                    return Verdict::Invalid; // bad escape (end of pattern)
                };
                match escaped {
                    'd' | 'D' | 's' | 'S' | 'w' | 'W' => {
                        out.push('\\');
                        out.push(escaped);
                        i += 2;
                    }
                    'x' => {
                        let hex: String = p[i + 2..i + 4].iter().collect();
                        let code = u32::from_str_radix(&hex, 16).unwrap_or_default();
                        push_literal(&mut out, char::from_u32(code).unwrap_or_default());
                        i += 4;
                    }
                    'f' => {
                        push_literal(&mut out, '\u{c}');
                        i += 2;
                    }
                    'n' => {
                        push_literal(&mut out, '\n');
                        i += 2;
                    }
                    'r' => {
                        push_literal(&mut out, '\r');
                        i += 2;
                    }
                    't' => {
                        push_literal(&mut out, '\t');
                        i += 2;
                    }
                    other => {
                        push_literal(&mut out, other);
                        i += 2;
                    }
                }
                last = Last::Item;
            }
            '[' => {
                if parse_class(p, &mut i, &mut out).is_none() {
                    return Verdict::Invalid;
                }
                last = Last::Item;
            }
            '(' => {
                depth += 1;
                if p.get(i + 1) == Some(&'?') {
                    out.push_str("(?:");
                    i += 3;
                } else {
                    out.push('(');
                    i += 1;
                }
                last = Last::Nothing;
            }
            ')' => {
                if depth == 0 {
                    return Verdict::Invalid; // unbalanced parenthesis
                }
                depth -= 1;
                out.push(')');
                i += 1;
                last = Last::Item;
            }
            '|' => {
                out.push('|');
                i += 1;
                last = Last::Nothing;
            }
            '^' | '$' => {
                out.push(c);
                i += 1;
                last = Last::Assertion;
            }
            '.' => {
                out.push('.');
                i += 1;
                last = Last::Item;
            }
            '*' | '+' | '?' | '{' => {
                let len = if c == '{' {
                    let Some((len, [low, high])) = repetition_at(&p[i..]) else {
                        return Verdict::Invalid;
                    };
                    let low = parse_count(low.unwrap_or_default());
                    if low >= MAX_REPEAT {
                        return Verdict::Overflow;
                    }
                    if let Some(high) = high.filter(|h| !h.is_empty()) {
                        let high = parse_count(high);
                        if high >= MAX_REPEAT {
                            return Verdict::Overflow;
                        }
                        if high < low {
                            return Verdict::Invalid; // min repeat greater than max repeat
                        }
                    }
                    len
                } else {
                    1
                };
                match last {
                    Last::Nothing | Last::Assertion => return Verdict::Invalid, // nothing to repeat
                    Last::Repeat => return Verdict::Invalid,                    // multiple repeat
                    Last::Item => {}
                }
                out.extend(&p[i..i + len]);
                i += len;
                if p.get(i) == Some(&'?') {
                    out.push('?');
                    i += 1;
                }
                last = Last::Repeat;
            }
            c => {
                push_literal(&mut out, c);
                i += 1;
                last = Last::Item;
            }
        }
    }
    if depth > 0 {
        return Verdict::Invalid; // missing ), unterminated subpattern
    }
    Verdict::Valid(out)
}

/// Compiles a regex filter's pattern.
pub(super) fn compile(pattern: &str) -> Pattern {
    if pattern.is_empty() {
        return Pattern::Empty;
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut screen = Screen {
        p: &chars,
        i: 0,
        class_start: None,
        previous: Prev::Start,
        group_has_quantifier: Vec::new(),
        closed_group_has_quantifier: false,
        uses_word_class: false,
        uses_space_class: false,
        uses_end_anchor: false,
        uses_quantifier_or_alternation: false,
    };
    if screen.run().is_err() {
        return Pattern::Deferred(DEFERRED_SYNTAX);
    }
    let translated = match python_parse(&chars) {
        Verdict::Valid(translated) => translated,
        Verdict::Invalid => return Pattern::Invalid,
        Verdict::Overflow => return Pattern::Deferred(DEFERRED_COMPILE),
    };
    // Python accepts the pattern; where the `regex` crate cannot build it (nesting or size
    // limits), the server decides.
    match Regex::new(&translated) {
        Ok(regex) => Pattern::Compiled(Box::new(Compiled {
            regex,
            uses_word_class: screen.uses_word_class,
            uses_space_class: screen.uses_space_class,
            strict_end: screen.uses_end_anchor && screen.uses_quantifier_or_alternation,
        })),
        Err(_) => Pattern::Deferred(DEFERRED_COMPILE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Some(true/false)`: a local answer; `None`: deferred; invalid patterns are `Some(false)`
    /// for `regex` (and for `not_regex`).
    fn run(pattern: &str, value: &str) -> Option<bool> {
        match compile(pattern) {
            Pattern::Empty => Some(true),
            Pattern::Invalid => Some(false),
            Pattern::Deferred(_) => None,
            Pattern::Compiled(c) => c.search(value).ok(),
        }
    }

    fn is_invalid(pattern: &str) -> bool {
        matches!(compile(pattern), Pattern::Invalid)
    }

    #[test]
    fn deferred_constructs() {
        // Constructs the engines read differently, or that need the service's budgets.
        for (pattern, value) in [
            (r"^\p{L}+$", "é"),
            (r"^\P{L}+$", "123"),
            (r"(?<=a+)b", "aab"),
            (r"a(?=b)", "ab"),
            (r"(a)\1", "aa"),
            (r"(?i)^foo$", "FOO"),
            (r"(?m)^foo$", "foo\nbar"),
            (r"(?P<n>a)", "a"),
            (r"\Afoo\z", "foo"),
            (r"^[a&&b]$", "a"),
            (r"^[a-z&&[^aeiou]]+$", "bcdf"),
            (r"^[a-z--b]$", "b"),
            (r"^[a~~b]$", "~"),
            (r"^[[:alpha:]]+$", "foo"),
            (r"[]", "a"),
            (r"[^]", "a"),
            (r"[]a]", "a"),
            (r"\141", "a"),
            (r"\q", "q"),
            (r"\é", "é"),
            (r"^\x{41}$", "A"),
            (r"\x4", "A"),
            (r"a++", "aa"),
            (r"a{,2}", "aa"),
            (r"a*{2}", "aa"),
            (r"a{2}+", "aa"),
            (r"a{2}{3}", "aa"),
            (r"{foo}", "{foo}"),
            (r"a{x}", "a{x}"),
            (r"[\s-9]", "-"),
            (r"[a-\d]", "-"),
            (r"^?https?://", "https://a"),
            (r"$?", "x"),
            (r"\b+", "x"),
            (r"{2}", "x"),
            (r"a|{2}", "x"),
            (r"({2})", "x"),
            (r"(?:{2})", "x"),
            (r"(?:)*", "x"),
            (r"()+", "x"),
            (r"(?:){2}", "x"),
            (r"a{0,4294967296}", "x"),
            (r"a{4294967296,}", "x"),
            (r"a{12345678901}", "x"),
            (r".*\bbot\b.*", "a"),
            (r".*\Bbot\B.*", "a"),
            (r"\<foo\>", "foo"),
            (r"[\@]", "@"),
            (r"[\B]", "B"),
            (r"^\w+$", "\u{301}"),
            (r"^\W+$", "²"),
            (r"^\s$", "\u{1c}"),
            (r"^\S$", "\u{1f}"),
            (r"^(a+)+$", "aa"),
            (r"^(?:ab*)+$", "ab"),
            (r"^(a{1,2}){2}$", "aa"),
            (r"^(a?b)*$", "ab"),
            (r"^(a+|b)+$", "a"),
            (r"^((a+))+$", "aa"),
            (r"^((a+)b)+$", "ab"),
            (r"^((a+)*b)+$", "aab"),
            (r"^(a+)+?$", "aa"),
            (r"(a+)+", "aa"),
            (r"^\s+$", "\u{2003}\u{1c}"),
            (r"^\w+$", "a\u{301}"),
            (r"^(a|aa)+$", "aa\n"),
            (r"^a+$", "aa\n"),
            (r"^a*$", "a\n"),
            (r"^a?$", "a\n"),
            (r"^a{2}$", "aa\n"),
            (r"^(?:ab|cd){2,3}$", "abcd\n"),
            (r"^(?:foo|bar)$", "foo\n"),
            (r"foo|bar$", "foo\n"),
            // Python overflows on the repetition limit itself.
            (r"a{4294967295}", "a"),
            (r"a{0,4294967295}", "a"),
            (r"a{4294967295}(", "a"),
        ] {
            assert_eq!(run(pattern, value), None, "{pattern:?} on {value:?}");
        }
    }

    #[test]
    fn portable_patterns_run_locally() {
        for (pattern, value, want) in [
            ("pro", "a pro plan", true),
            ("^pro$", "a pro plan", false),
            ("^pro$", "PRO", false),
            (r"^\d+$", "123", true),
            (r"^\d+$", "١", true),
            (r"^\D+$", "é", true),
            (r"^\w+$", "abc_123", true),
            (r"^\w+$", "é١", true),
            (r"^\W+$", "é١", false),
            (r"^\w+$", "!", false),
            (r"^\s$", "\u{2003}", true),
            (r"^\s$", "\u{feff}", false),
            ("^.$", "😀", true),
            ("^.$", "\n", false),
            ("^é+$", "éé", true),
            ("^.$", "\r", true),
            (r"^[\w.+-]+@example\.com$", "a.b+tag@example.com", true),
            (r"^(?:ab|cd){2,3}$", "abcdab", true),
            (r"^\\p\{L\}$", r"\p{L}", true),
            (r"^\(\?i\)$", "(?i)", true),
            (r"^\x41+$", "AA", true),
            (r"^nu", "null", true),
            (r"^\++$", "++", true),
            (r"[\b]", "\u{8}", true),
            (r"^a\-b$", "a-b", true),
            (r"\@example\.com$", "a@example.com", true),
            (r"^a\:b$", "a:b", true),
            (r"^a\_b$", "a_b", true),
            (r"^a\=b$", "a=b", true),
            (r"^a\ b$", "a b", true),
            (r"^\^?$", "", true),
            (r"^\${2}$", "$$", true),
            (r"^\({2}$", "((", true),
            (r"^\|{2}$", "||", true),
            (r"^[\^$?]+$", "$?^", true),
            (r"^[\w-]+$", "a-b", true),
            ("^foo$", "foo\n", false),
            ("^foo$", "foo\nbar", false),
            ("foo$", "foo\r\n", false),
            (r"^([+*?])+$", "+*?", true),
            (r"^(\++)$", "++", true),
            (r"^(\+)+$", "++", true),
            (r"^\(+a+\)+$", "(aa)", true),
            (r"^(a+)(b+)$", "aabb", true),
            (r"^((ab)){2}$", "abab", true),
            (r"^([()]+)$", "()", true),
            (r"^(a)+(b)+$", "aabb", true),
            (r"^((a)+b)$", "aab", true),
            (r"^(a+)(?:b)+$", "aabb", true),
            ("^$", "", true),
            (r"^[+*?{}|]$", "+\n", false),
            (r"^\+$", "+\n", false),
            (r"^\|$", "|\n", false),
            (r"^a\{$", "a{\n", false),
            (r"^a+\$", "aa$\n", true),
            (r"^foo\$$", "foo$\n", false),
            (r"^a+", "aa\n", true),
            (r"^(?:a|aa)+$", "aa", true),
            (r"\.com$", "value.com", true),
            (r"\.com$", "value2com", false),
            (r"\.com$", r"value\com", false),
            ("3", "323", true),
            (r"[a-z-9]", "-", true),
            (r"^[a-z-9]$", "9", true),
            (r"^[a-]$", "-", true),
            (r"^[\d-]$", "-", true),
            (r"^[^\]]$", "x", true),
            (r"^[\x41-\x43]+$", "ABC", true),
            (r"^[\n-\r]$", "\u{b}", true),
            (r"a]b}", "a]b}", true),
            (r"^a{2}?$", "aa", true),
            (r"a??b", "b", true),
            (r"^(|a)$", "", true),
            (r"^a|$", "b", true),
            ("a#b c", "a#b c", true),
            ("^[&~]+$", "&~", true),
            (r"^\#\&\~$", "#&~", true),
        ] {
            assert_eq!(run(pattern, value), Some(want), "{pattern:?} on {value:?}");
        }
        assert!(matches!(compile(""), Pattern::Empty));
    }

    #[test]
    fn invalid_patterns_match_nothing() {
        for pattern in [
            "[",
            "(",
            "*",
            "?*",
            "*foo$",
            "(a|b$",
            "a{3,2}",
            "a**",
            "a*?*",
            "a{2}*",
            "a?*",
            "a)",
            "a|*",
            "(*)",
            "(?:*)",
            "[z-a]",
            "a\\",
            "[a",
            "[a-",
            "*a{4294967295}",
        ] {
            assert!(is_invalid(pattern), "{pattern:?}");
        }
        // An unclosed group: Python rejects it, whatever the value.
        assert_eq!(run("(a|b$", "foo\n"), Some(false));
    }

    #[test]
    fn resource_limits_defer() {
        let deep = format!("{}a{}", "(".repeat(1000), ")".repeat(1000));
        assert_eq!(run(&deep, "a"), None);
        assert_eq!(run("x{99999}", "x"), Some(false));
        assert_eq!(run(r"\w{1000000}", "x"), None);
        let shallow = format!("{}a{}", "(".repeat(50), ")".repeat(50));
        assert_eq!(run(&shallow, "a"), Some(true));
    }
}
