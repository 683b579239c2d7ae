//! Splitting a reply into WhatsApp-sized parts.
//!
//! Greedy: each part takes as much of the remaining text as fits, cut at the coarsest boundary
//! found inside that window. The order of preference is
//!
//! 1. a paragraph boundary (blank line) outside a code block,
//! 2. a line boundary outside a code block,
//! 3. a line boundary inside a code block (the fence is closed at the end of the part and reopened
//!    at the start of the next),
//! 4. a word boundary (whitespace) outside, then inside a code block,
//! 5. a grapheme cluster boundary, so an emoji with ZWJ, skin tone or a flag stays whole (closing
//!    the styled spans it falls inside, or, when their markers would not fit, leaving them open),
//! 6. a `char` boundary, only when a single grapheme cluster is longer than the limit.
//!
//! Meta documents `text.body` as at most 4096 "characters" without saying whether it counts
//! Unicode scalar values (`char`s) or UTF-16 code units, as JavaScript and Java do; the two differ
//! for every character outside the Basic Multilingual Plane, emoji among them (👍 is one `char`,
//! two UTF-16 units). A part must fit in both, and since a `char` is one or two UTF-16 units, the
//! UTF-16 length is the one measured ([`measure`]).
//!
//! Whitespace at a cut is dropped (it would be invisible at the end or start of a bubble); every
//! other character is kept, in order. A cut inside a styled span (`*bold*`, `_italic_`, `~strike~`,
//! `` `code` ``, as WhatsApp pairs their markers on a line) closes the span at the end of the part
//! and reopens it at the start of the next, so neither bubble shows raw markers; three backticks
//! within a line are such a span (monospace), not a code fence. A cut within a quoted line repeats
//! its `> ` at the start of the next part. Code fences, spans and quotes are only repaired when the
//! limit leaves room for them ([`MIN_CHARS_FOR_FENCES`]); below that, they are split like any
//! text.

use unicode_segmentation::UnicodeSegmentation;

/// Meta's limit for `text.body`: 4096 characters, which [`split_message`] takes to mean both 4096
/// Unicode scalar values and 4096 UTF-16 code units (see the [module docs](self)).
pub const WHATSAPP_MAX_CHARS: usize = 4096;

/// Below this limit code blocks are split as plain text: closing and reopening a fence costs 8
/// characters per part, which would leave almost no room for the code itself.
pub const MIN_CHARS_FOR_FENCES: usize = 16;

const FENCE: &str = "```";
/// What closing a fence at the end of a part costs: `"\n```"`.
const FENCE_CLOSE_CHARS: usize = 4;
/// WhatsApp's inline markers: bold, italic, strikethrough, inline code.
const MARKERS: [char; 4] = ['*', '_', '~', '`'];
/// [`MARKERS`] as strings, as a [`StyledSpan`] holds them.
const MARKER_STRS: [&str; 4] = ["*", "_", "~", "`"];

/// Splits `text` into parts of at most `max_chars` characters each, counted both as `char`s and
/// as UTF-16 code units (see the [module docs](self)).
///
/// Parts are in order, never empty, have no leading blank line and no trailing whitespace. An
/// empty or whitespace-only `text` gives no parts. `max_chars == 0` is treated as 1; a part is
/// never less than one `char`, so below 2 a character outside the BMP still makes a part of two
/// UTF-16 units.
pub fn split_message(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(1);
    let mut fences = max >= MIN_CHARS_FOR_FENCES;
    let mut parts = Vec::new();
    let mut rest = skip_blank_lines(text).to_owned();
    loop {
        let content = rest.trim_end();
        if content.is_empty() {
            break;
        }
        if measure(content) <= max {
            parts.push(content.to_owned());
            break;
        }
        let cut = choose_cut(&rest, max, fences);
        let mut part = skip_blank_lines(rest[..cut.end].trim_end()).to_owned();
        let next = if !cut.marks.is_empty() || !cut.quote.is_empty() {
            part.extend(cut.marks.chars().rev());
            format!("{}{}{}", cut.quote, cut.marks, &rest[cut.resume..])
        } else if cut.inside {
            part.push('\n');
            part.push_str(FENCE);
            let tail = &rest[cut.resume..];
            match fence_line_end(tail) {
                // The code block ends right here: the fence just written closes it.
                Some(after_fence) => tail[after_fence..].to_owned(),
                None => format!("{FENCE}\n{tail}"),
            }
        } else {
            rest[cut.resume..].to_owned()
        };
        if !part.trim().is_empty() {
            parts.push(part);
        }
        if next.len() >= rest.len() {
            // Cannot happen (every cut consumes more than a reopened fence or span adds), but a splitter
            // that loops forever would stall a worker: fall back to plain splitting.
            fences = false;
            continue;
        }
        rest = skip_blank_lines(&next).to_owned();
    }
    parts
}

/// Where to cut: the part is `rest[..end]`, the remainder starts at `rest[resume..]`.
#[derive(Debug, Clone, Default)]
struct Cut {
    end: usize,
    resume: usize,
    /// The cut falls inside a code block, whose fence must be closed and reopened.
    inside: bool,
    /// The markers of the styled spans the cut falls inside, outermost first: closed (in reverse)
    /// at the end of the part and reopened at the start of the next.
    marks: String,
    /// The block-quote marks of the line the cut falls inside, repeated at the start of the next
    /// part so that the rest of the line is still quoted.
    quote: String,
}

/// Candidate kinds, best first. The discriminant indexes the `best` table in [`choose_cut`].
#[derive(Debug, Clone, Copy)]
enum Rank {
    ParagraphOutside = 0,
    LineOutside,
    LineInside,
    WordOutside,
    WordInside,
    Grapheme,
    /// A grapheme boundary inside styled spans whose markers would not fit to be closed there:
    /// raw markers at the cut are better than a cluster cut in two.
    GraphemeUnrepaired,
}
const RANKS: usize = 7;

/// The length that must not exceed the limit: UTF-16 code units, which are never fewer than the
/// `char`s of the same text, so a part within it fits whichever way Meta counts.
pub fn measure(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Finds the best cut in `rest`, which is known to measure more than `max`.
fn choose_cut(rest: &str, max: usize, fences: bool) -> Cut {
    let mut best: [Option<Cut>; RANKS] = Default::default();
    let mut graphemes = rest.grapheme_indices(true).map(|(i, _)| i).peekable();

    let mut in_code = false; // inside a code block at the start of the current line
    let mut fence_line = fences && is_fence_line(rest);
    let mut seen_content = false; // non-whitespace before the position
    let mut code_content = false; // non-whitespace since the last fence line
    let mut prev: Option<char> = None;
    // The furthest char boundary that fits, never the start (a part holds at least one char).
    let mut raw_end = rest.chars().next().map_or(rest.len(), char::len_utf8);
    // Styled spans of the current line (outside code), those not yet passed, and those open.
    let line_spans = |start: usize, plain: bool| {
        if fences && plain {
            styled_spans(rest, start)
        } else {
            Vec::new()
        }
        .into_iter()
        .peekable()
    };
    let mut spans = line_spans(0, !fence_line);
    let mut open_spans: Vec<StyledSpan> = Vec::new();
    // The current line's start and block-quote marks (outside code).
    let quote_at = |start: usize, plain: bool| {
        if fences && plain {
            quote_prefix(&rest[start..])
        } else {
            ""
        }
    };
    let mut line_start = 0;
    let mut quote = quote_at(0, !fence_line);

    // UTF-16 units before the position.
    let mut count = 0;
    for (p, c) in rest.char_indices() {
        if count > max {
            break;
        }
        if p > 0 {
            raw_end = p;
        }
        while graphemes.next_if(|&g| g < p).is_some() {}
        let at_grapheme = graphemes.peek() == Some(&p);
        open_spans.retain(|span| span.close + span.marker.len() > p);
        open_spans.extend(std::iter::from_fn(|| spans.next_if(|span| span.open < p)));
        let at_marker = open_spans.iter().any(|span| span.bad_cut(p));
        // Every marker reads the same backwards, so the closing ones are these chars reversed.
        let marks: String = open_spans.iter().map(|span| span.marker).collect();
        let fits = |rank: Rank, inside: bool| {
            let marks = match rank {
                Rank::GraphemeUnrepaired => 0,
                _ => marks.len(),
            };
            count + marks + if inside { FENCE_CLOSE_CHARS } else { 0 } <= max
        };
        // A part must hold something visible. The one exception, at the lowest ranks, is a cut
        // right after leading indentation: dropping those spaces keeps an emoji that fits whole.
        let usable = |rank: Rank, inside: bool| match rank {
            Rank::GraphemeUnrepaired => fits(rank, inside) && (!inside || code_content),
            _ => {
                fits(rank, inside)
                    && (seen_content || matches!(rank, Rank::Grapheme))
                    && (!inside || code_content)
                    && !at_marker
            }
        };
        // A heading ending here would be left at the end of the part, its section in the next:
        // an earlier paragraph boundary, when there is one, takes it along.
        let heading_last = c == '\n'
            && best[Rank::ParagraphOutside as usize].is_some()
            && is_heading(rest, line_start, p);
        let mut offer = |rank: Rank, inside: bool, resume: usize| {
            if usable(rank, inside) {
                let marks = match rank {
                    Rank::GraphemeUnrepaired => String::new(),
                    _ => marks.clone(),
                };
                // Within a quoted line, past its marks (a cut among them leaves nothing quoted).
                let within_line = !matches!(
                    rank,
                    Rank::ParagraphOutside | Rank::LineOutside | Rank::LineInside
                );
                let carried = within_line && p > line_start + quote.len();
                best[rank as usize] = Some(Cut {
                    end: p,
                    resume,
                    inside,
                    marks,
                    quote: if carried { quote } else { "" }.to_owned(),
                });
            }
        };

        if c == '\n' {
            let after = in_code != fence_line;
            let opening_fence = fence_line && !in_code;
            let next_line = &rest[p + 1..];
            let next_is_fence = fences && is_fence_line(next_line);
            // No cut right after an opening fence (the part would end in an empty code block)
            // nor right before a closing one (the next part would start with one).
            let pointless = opening_fence || (after && next_is_fence);
            let rank = match (after, is_blank_line(next_line)) {
                (true, _) => Rank::LineInside,
                (false, true) => Rank::ParagraphOutside,
                (false, false) => Rank::LineOutside,
            };
            let heading_last = heading_last && matches!(rank, Rank::ParagraphOutside);
            if !pointless && !heading_last {
                let resume = if after {
                    p + 1
                } else {
                    skip_whitespace(rest, p)
                };
                offer(rank, after, resume);
            }
            in_code = after;
            fence_line = next_is_fence;
            if fence_line {
                code_content = false;
            }
            open_spans.clear();
            spans = line_spans(p + 1, !in_code && !fence_line);
            line_start = p + 1;
            quote = quote_at(p + 1, !in_code && !fence_line);
        } else if fence_line {
            // A fence line longer than the limit: the fence is lost whatever we do, so cut it
            // like plain text rather than between chars.
            if at_grapheme && p > 0 {
                offer(Rank::Grapheme, false, p);
                offer(Rank::GraphemeUnrepaired, false, p);
            }
        } else if c.is_whitespace() && prev.is_some_and(|prev| !prev.is_whitespace()) {
            let rank = if in_code {
                Rank::WordInside
            } else {
                Rank::WordOutside
            };
            offer(rank, in_code, skip_whitespace(rest, p));
        } else if at_grapheme && p > 0 {
            offer(Rank::Grapheme, in_code, p);
            offer(Rank::GraphemeUnrepaired, in_code, p);
        }

        if !c.is_whitespace() {
            seen_content = true;
            if !fence_line {
                code_content = true;
            }
        }
        prev = Some(c);
        count += c.len_utf16();
    }

    best.into_iter().flatten().next().unwrap_or(Cut {
        end: raw_end,
        resume: raw_end,
        ..Cut::default()
    })
}

/// Whether the line `rest[start..end]` is a heading as the formatter writes one (`## Envíos` →
/// `*Envíos*`): a paragraph of that one line, all of it one bold span.
fn is_heading(rest: &str, start: usize, end: usize) -> bool {
    let line = rest[start..end].trim();
    let alone = start == 0
        || rest[..start - 1]
            .rsplit('\n')
            .next()
            .is_some_and(|previous| previous.trim().is_empty());
    alone
        && line.len() > 2
        && line.starts_with('*')
        && line.ends_with('*')
        && !line[1..line.len() - 1].contains('*')
}

/// A pair of markers WhatsApp renders as a style: byte positions of the opening and closing marker.
#[derive(Debug, Clone, Copy)]
struct StyledSpan {
    open: usize,
    close: usize,
    /// One of [`MARKERS`], or [`FENCE`] for a monospace span within the line.
    marker: &'static str,
}

impl StyledSpan {
    /// A cut at `p` would split one of the span's markers, or leave the span with nothing on one
    /// side (right after the opening marker, right before the closing one); the cut one
    /// character further away is as good.
    fn bad_cut(&self, p: usize) -> bool {
        let len = self.marker.len();
        (self.open < p && p <= self.open + len) || (self.close <= p && p < self.close + len)
    }
}

/// The styled spans of the line of `text` that starts at `start`, in order of their opening
/// marker, paired the way WhatsApp pairs them: a marker opens when it is followed by non-space
/// and not preceded by a letter or digit, and closes at the first same marker after it that is
/// preceded by non-space and not followed by a letter or digit; a span of a style holds no other
/// span of that style, and inline code holds none at all. Three backticks are monospace, which
/// ends at the next three and holds no other span either.
fn styled_spans(text: &str, start: usize) -> Vec<StyledSpan> {
    let line = &text[start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let mono = |i: usize| (i..i + FENCE.len()).all(|i| at(i) == Some('`'));
    let closers: Vec<Vec<usize>> = MARKERS
        .iter()
        .map(|&marker| {
            (1..chars.len())
                .filter(|&j| {
                    at(j) == Some(marker)
                        && at(j - 1).is_some_and(|c| !c.is_whitespace())
                        && !at(j + 1).is_some_and(char::is_alphanumeric)
                })
                .collect()
        })
        .collect();
    let mut spans = Vec::new();
    // Per marker, the index of the closing marker of the span of that style that is open.
    let mut open_until = [None::<usize>; MARKERS.len()];
    let mut i = 0;
    while i < chars.len() {
        if mono(i) {
            match (i + FENCE.len()..chars.len()).find(|&j| mono(j)) {
                Some(close) => {
                    spans.push(StyledSpan {
                        open: start + chars[i].0,
                        close: start + chars[close].0,
                        marker: FENCE,
                    });
                    i = close + FENCE.len();
                }
                // Never closed: the backticks are text.
                None => {
                    i = (i..chars.len())
                        .find(|&j| at(j) != Some('`'))
                        .unwrap_or(chars.len())
                }
            }
            continue;
        }
        let c = chars[i].1;
        let kind = MARKERS.iter().position(|&marker| marker == c);
        if let Some(kind) = kind.filter(|&kind| open_until[kind].is_none_or(|end| i > end)) {
            let opens = at(i + 1).is_some_and(|c| !c.is_whitespace())
                && !i
                    .checked_sub(1)
                    .and_then(at)
                    .is_some_and(char::is_alphanumeric);
            let closers = &closers[kind];
            let close = closers
                .get(closers.partition_point(|&j| j < i + 2))
                .copied()
                .filter(|_| opens);
            if let Some(close) = close {
                spans.push(StyledSpan {
                    open: start + chars[i].0,
                    close: start + chars[close].0,
                    marker: MARKER_STRS[kind],
                });
                if c == '`' {
                    i = close + 1;
                    continue;
                }
                open_until[kind] = Some(close);
            }
        }
        i += 1;
    }
    spans
}

/// The block-quote marks that start `line` (`> `, `> > `…).
fn quote_prefix(line: &str) -> &str {
    let mut end = 0;
    while line[end..].starts_with("> ") {
        end += 2;
    }
    &line[..end]
}

/// Position after the whitespace that starts at `p`: past the last newline of that run (so the
/// next line keeps its indentation), or past the whole run when it holds no newline.
fn skip_whitespace(text: &str, p: usize) -> usize {
    let run_len = text[p..]
        .find(|c: char| !c.is_whitespace())
        .unwrap_or(text.len() - p);
    let run = &text[p..p + run_len];
    match run.rfind('\n') {
        Some(newline) => p + newline + 1,
        None => p + run_len,
    }
}

/// `text` without its leading whitespace-only lines (the first line with content keeps its indent).
fn skip_blank_lines(text: &str) -> &str {
    let run_len = text
        .find(|c: char| !c.is_whitespace())
        .unwrap_or(text.len());
    match text[..run_len].rfind('\n') {
        Some(newline) => &text[newline + 1..],
        None => text,
    }
}

fn is_blank_line(text: &str) -> bool {
    text.split('\n')
        .next()
        .is_none_or(|line| line.trim().is_empty())
}

/// A line that opens or closes a code block: it starts with three backticks (after indentation)
/// and has no other three on it, which would make it a monospace span within the line.
fn is_fence_line(text: &str) -> bool {
    let line = text.split('\n').next().unwrap_or_default();
    line.trim_start_matches([' ', '\t'])
        .strip_prefix(FENCE)
        .is_some_and(|rest| !rest.contains(FENCE))
}

/// When `text` starts (after blank lines) with a closing fence, a line of only backticks, the
/// position just after that line.
fn fence_line_end(text: &str) -> Option<usize> {
    let start = skip_whitespace(text, 0);
    let line_end = text[start..]
        .find('\n')
        .map_or(text.len(), |newline| start + newline);
    let line = text[start..line_end].trim();
    let closing = line.len() >= FENCE.len() && line.chars().all(|c| c == '`');
    closing.then(|| (line_end + 1).min(text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_splits(cases: &[(&str, usize, &[&str])]) {
        for (text, max, expected) in cases {
            assert_eq!(split_message(text, *max), *expected, "{text:?} / {max}");
        }
    }

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    /// Within the limit both ways; a single char is allowed past it (below 2, nothing else fits).
    fn fits(s: &str, max: usize) -> bool {
        chars(s) <= max && (s.encode_utf16().count() <= max || chars(s) == 1)
    }

    #[test]
    fn short_text_is_one_trimmed_part() {
        let cases: &[(&str, &[&str])] = &[
            ("hola", &["hola"]),
            ("\n\n  hola  \n\n", &["  hola"]),
            ("", &[]),
            (" \n\t\n ", &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(split_message(text, 10), *expected, "{text:?}");
        }
    }

    #[test]
    fn boundaries_are_preferred_from_paragraph_to_char() {
        let cases: &[(&str, usize, &[&str])] = &[
            // Paragraph beats a later line break.
            ("aaa\n\nbbb\nccc", 10, &["aaa", "bbb\nccc"]),
            // Line beats a later word break.
            ("aaa bbb\nccc ddd eee", 12, &["aaa bbb", "ccc ddd eee"]),
            // Word breaks drop the space.
            ("uno dos tres cuatro", 8, &["uno dos", "tres", "cuatro"]),
            // No whitespace: graphemes.
            ("abcdefghij", 4, &["abcd", "efgh", "ij"]),
            // Indentation of the line after a cut is kept.
            ("- a\n  - b", 5, &["- a", "  - b"]),
            // Blank lines at a cut disappear.
            ("a\n\n\n\nb", 1, &["a", "b"]),
        ];
        assert_splits(cases);
    }

    #[test]
    fn a_heading_goes_with_the_paragraph_under_it() {
        // A heading (a lone bold line, as the formatter writes `## Envíos`) that would end a
        // part goes to the next one, with what it heads; the customer saw it dangling at the end
        // of a bubble and its section in the next.
        let cases: &[(&str, usize, &[&str])] = &[
            (
                "*Pagos*\n\nTarjeta.\n\n*Envíos*\n\nTres días.",
                30,
                &["*Pagos*\n\nTarjeta.", "*Envíos*\n\nTres días."],
            ),
            // A heading first in the text has no earlier boundary to go to: cut after it.
            (
                "*Envíos*\n\nTres días hábiles.",
                12,
                &["*Envíos*", "Tres días", "hábiles."],
            ),
            // A bold word within a paragraph is no heading.
            (
                "Hola\n\nDe *veras*\n\nAdiós amigo",
                20,
                &["Hola\n\nDe *veras*", "Adiós amigo"],
            ),
        ];
        assert_splits(cases);
    }

    #[test]
    fn emoji_clusters_are_never_cut_when_they_fit() {
        let family = "👨‍👩‍👧‍👦"; // 7 chars, 11 UTF-16 units
        let thumbs = "👍🏽"; // 2 chars, 4 units
        let flag = "🇨🇴"; // 2 chars, 4 units
        let text = format!("{family}{thumbs}{flag}{family}");
        assert_eq!(
            split_message(&text, 15),
            vec![format!("{family}{thumbs}"), format!("{flag}{family}")]
        );
        assert_eq!(
            split_message(&text, 11),
            vec![family, &format!("{thumbs}{flag}"), family]
        );
        // A cluster longer than the limit is cut between chars: the limit wins.
        let parts = split_message(family, 3);
        assert!(parts.iter().all(|p| measure(p) <= 3), "{parts:?}");
        assert_eq!(parts.concat(), family);
    }

    #[test]
    fn a_code_block_is_kept_whole_when_it_fits_in_the_next_part() {
        let text = "Mira:\n```\nlet a = 1;\nlet b = 2;\n```\nListo.";
        assert_eq!(
            split_message(text, 30),
            vec!["Mira:", "```\nlet a = 1;\nlet b = 2;\n```", "Listo."]
        );
    }

    #[test]
    fn a_long_code_block_is_closed_and_reopened_across_parts() {
        let text = "```rust\nline one\nline two\nline three\nline four\n```\nend";
        let parts = split_message(text, 30);
        assert_eq!(
            parts,
            vec![
                "```rust\nline one\nline two\n```",
                "```\nline three\nline four\n```",
                "end"
            ]
        );
        for part in &parts {
            assert_eq!(part.matches(FENCE).count() % 2, 0, "{part:?}");
        }
    }

    #[test]
    fn a_cut_inside_a_styled_span_closes_it_and_reopens_it_in_the_next_part() {
        let cases: &[(&str, usize, &[&str])] = &[
            (
                "hola *esto es un texto en negrita bastante largo* fin",
                30,
                &["hola *esto es un texto en*", "*negrita bastante largo* fin"],
            ),
            (
                "ver `cargo build --release --all` ahora",
                20,
                &["ver `cargo build`", "`--release --all`", "ahora"],
            ),
            (
                "_*uno dos tres cuatro cinco seis*_",
                20,
                &["_*uno dos tres*_", "_*cuatro cinco*_", "_*seis*_"],
            ),
            // Markers WhatsApp does not render (glued to a word, or never closed) are plain text.
            (
                "2*3 es seis y mi_var es x",
                16,
                &["2*3 es seis y", "mi_var es x"],
            ),
            (
                "*sin cierre y mas palabras",
                16,
                &["*sin cierre y", "mas palabras"],
            ),
        ];
        assert_splits(cases);
    }

    #[test]
    fn a_cut_within_a_quoted_line_keeps_the_rest_quoted() {
        let cases: &[(&str, usize, &[&str])] = &[
            (
                "> uno dos tres cuatro cinco seis",
                16,
                &["> uno dos tres", "> cuatro cinco", "> seis"],
            ),
            (
                "> > *uno dos tres cuatro*\n> fin",
                18,
                &["> > *uno dos tres*", "> > *cuatro*\n> fin"],
            ),
            // Lines of a code block are code, whatever they start with.
            (
                "```\n> uno dos tres cuatro\n```",
                20,
                &["```\n> uno dos\n```", "```\ntres cuatro\n```"],
            ),
        ];
        assert_splits(cases);
    }

    #[test]
    fn a_monospace_span_within_a_line_is_cut_like_a_styled_span() {
        let cases: &[(&str, usize, &[&str])] = &[
            (
                "ver ```cargo build --release --all``` ahora",
                22,
                &["ver ```cargo build```", "```--release --all```", "ahora"],
            ),
            (
                "> ```let total = precio * 2;```",
                24,
                &["> ```let total =```", "> ```precio * 2;```"],
            ),
            // Three backticks that open a line and close on it are no code block's fence.
            (
                "```a`b``` uno dos tres cuatro cinco seis",
                20,
                &["```a`b``` uno dos", "tres cuatro cinco", "seis"],
            ),
        ];
        assert_splits(cases);
    }

    #[test]
    fn whatsapp_limit_is_counted_in_chars_not_bytes() {
        let text = "ñ".repeat(WHATSAPP_MAX_CHARS);
        assert_eq!(split_message(&text, WHATSAPP_MAX_CHARS), vec![text.clone()]);
        let parts = split_message(&format!("{text} más"), WHATSAPP_MAX_CHARS);
        assert_eq!(parts, vec![text, "más".to_owned()]);
    }

    #[test]
    fn whatsapp_limit_is_also_counted_in_utf16_units() {
        // 4096 chars but 4097 UTF-16 units: over the limit if Meta counts as JavaScript does.
        let text = format!("{}👍", "ñ".repeat(WHATSAPP_MAX_CHARS - 1));
        let parts = split_message(&text, WHATSAPP_MAX_CHARS);
        assert_eq!(
            parts,
            vec!["ñ".repeat(WHATSAPP_MAX_CHARS - 1), "👍".to_owned()]
        );
        // Emoji alone: 2048 of them fill a part, whichever way it is counted.
        let parts = split_message(&"👍".repeat(3000), WHATSAPP_MAX_CHARS);
        assert_eq!(parts, vec!["👍".repeat(2048), "👍".repeat(952)]);
        // Any other limit is counted the same way.
        assert_eq!(split_message("a👍b👍", 3), vec!["a👍", "b👍"]);
    }

    #[test]
    fn zero_max_is_treated_as_one() {
        assert_eq!(split_message("ab", 0), vec!["a", "b"]);
        // Nothing smaller than a char: one outside the BMP is a part of its own.
        assert_eq!(split_message("👍a", 1), vec!["👍", "a"]);
    }

    /// Pieces that stress the splitter: words with accents and combining marks, emoji clusters,
    /// every kind of whitespace, and code fences.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "hola",
            "canción",
            "São",
            "e\u{301}",
            "x",
            "supercalifragilístico",
            "*bold*",
            "👍",
            "👍🏽",
            "👨‍👩‍👧‍👦",
            "🇨🇴",
            "🇧🇷",
            "中文",
            " ",
            " ",
            "  ",
            "\t",
            "\n",
            "\n\n",
            "\r\n",
            "```",
            "```rust\n",
            "\n```\n",
            "- ",
            "1. ",
            "> ",
        ])
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..120).prop_map(|pieces| pieces.concat())
    }

    /// The text without whitespace, markers nor quote marks, which a cut may add (fences, closed
    /// spans, a quoted line's `> `).
    fn visible(s: &str) -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && !MARKERS.contains(c) && *c != '>')
            .collect()
    }

    /// Every visible character with the styles WhatsApp shows it in (markers that pair are not
    /// shown; those that do not are ordinary characters).
    fn rendered(text: &str) -> Vec<(char, String)> {
        let mut out = Vec::new();
        let mut start = 0;
        for line in text.split('\n') {
            let spans = styled_spans(text, start);
            for (i, c) in line.char_indices() {
                let p = start + i;
                let marker_at = |at: usize, s: &StyledSpan| at <= p && p < at + s.marker.len();
                if c.is_whitespace()
                    || spans
                        .iter()
                        .any(|s| marker_at(s.open, s) || marker_at(s.close, s))
                {
                    continue;
                }
                let mut styles: Vec<&str> = spans
                    .iter()
                    .filter(|s| s.open < p && p < s.close)
                    .map(|s| s.marker)
                    .collect();
                styles.sort_unstable();
                out.push((c, styles.concat()));
            }
            start += line.len() + 1;
        }
        out
    }

    fn check_invariants(text: &str, max: usize) -> Result<Vec<String>, TestCaseError> {
        let parts = split_message(text, max);
        for part in &parts {
            prop_assert!(fits(part, max), "part over {max}: {part:?}");
            prop_assert!(!part.trim().is_empty(), "empty part");
            prop_assert_eq!(part.trim_end(), part.as_str(), "trailing whitespace");
            prop_assert!(!part.starts_with('\n'), "leading blank line: {:?}", part);
        }
        prop_assert_eq!(visible(&parts.concat()), visible(text));
        // Below the repair threshold, or without markers, nothing is added but fences.
        if !text.contains(MARKERS) || max < MIN_CHARS_FOR_FENCES && !text.contains('`') {
            let strip = |s: &str| {
                s.chars()
                    .filter(|c| !c.is_whitespace() && *c != '>')
                    .collect::<String>()
            };
            prop_assert_eq!(strip(&parts.concat()), strip(text));
        }
        Ok(parts)
    }

    proptest! {
        #[test]
        fn tiny_limits_keep_every_invariant(text in text(), max in 1usize..=20) {
            check_invariants(&text, max)?;
        }

        #[test]
        fn larger_limits_keep_every_invariant(text in text(), max in 16usize..=200) {
            check_invariants(&text, max)?;
        }

        #[test]
        fn grapheme_clusters_survive_when_the_limit_allows(text in text(), max in 11usize..=60) {
            // The longest cluster the generator makes is the family emoji, 11 UTF-16 units.
            let parts = check_invariants(&text, max)?;
            let clusters = |s: &str| -> Vec<String> {
                s.graphemes(true)
                    .filter(|g| g.chars().any(|c| !c.is_whitespace() && !MARKERS.contains(&c) && c != '>'))
                    .map(str::to_owned)
                    .collect()
            };
            let split: Vec<String> = parts.iter().flat_map(|p| clusters(p)).collect();
            prop_assert_eq!(split, clusters(&text));
        }

        #[test]
        fn cut_code_blocks_are_closed_and_reopened_in_every_part(
            before in prop::collection::vec("[a-záé]{1,12}( [a-z]{1,8}){0,6}", 0..4),
            code in prop::collection::vec("[a-z]{1,10}( [a-z(){};=]{1,10}){0,8}", 1..30),
            after in prop::collection::vec("[a-z]{1,12}( [a-z]{1,8}){0,6}", 0..4),
            max in 24usize..=160,
        ) {
            let text = format!(
                "{}\n\n```rust\n{}\n```\n\n{}",
                before.join("\n\n"),
                code.join("\n"),
                after.join("\n\n"),
            );
            let parts = check_invariants(&text, max)?;
            for part in &parts {
                let fences = part.lines().filter(|line| line.trim_start().starts_with(FENCE)).count();
                prop_assert_eq!(fences % 2, 0, "unbalanced part {:?} of {:?}", part, parts);
            }
        }

        #[test]
        fn styled_text_renders_the_same_once_split(
            lines in prop::collection::vec(
                prop::collection::vec(
                    (
                        prop::sample::select(vec!["", "*", "_", "~", "`", "_*", "*~", "```", "*```"]),
                        prop::collection::vec(
                            prop::sample::select(vec![
                                "hola", "envío", "a", "2*3", "mi_var", "5~10", "👍🏽", "-",
                                "supercalifragilístico",
                            ]),
                            1..9,
                        )
                        .prop_map(|words| words.join(" ")),
                    ),
                    1..8,
                ),
                1..5,
            ),
            max in 16usize..=80,
        ) {
            let text = lines
                .iter()
                .map(|spans| {
                    spans
                        .iter()
                        .map(|(marks, words)| {
                            let close: String = marks.chars().rev().collect();
                            format!("{marks}{words}{close}")
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect::<Vec<_>>()
                .join("\n");
            let parts = check_invariants(&text, max)?;
            let split: Vec<_> = parts.iter().flat_map(|part| rendered(part)).collect();
            prop_assert_eq!(split, rendered(&text), "{:?}", parts);
        }

        #[test]
        fn formatted_markdown_splits_within_the_limit_and_keeps_its_content(
            pieces in prop::collection::vec(
                prop::sample::select(vec![
                    "hola", "envío", "**negrita larga**", "*cursiva*", "~~no~~", "`code`",
                    "`` a`b ``", "https://x.co/*a*/b", "👍🏽", "👨‍👩‍👧‍👦", "🇨🇴", "中文", "&eacute;",
                    " ", " ", "\n", "\n\n", "> ", "- ", "1. ", "# ", "```\n", "\n```\n",
                    "| a | b |\n|---|---|\n| 1 | 2 |\n", "[l](https://x.co)",
                ]),
                0..150,
            ),
            max in 16usize..=300,
        ) {
            let text = crate::format::markdown_to_whatsapp(&pieces.concat());
            check_invariants(&text, max)?;
        }

        #[test]
        fn arbitrary_unicode_never_panics(text in "\\PC{0,300}", max in 0usize..=50) {
            let parts = split_message(&text, max);
            prop_assert!(parts.iter().all(|p| fits(p, max.max(1))), "{:?}", parts);
        }
    }
}
