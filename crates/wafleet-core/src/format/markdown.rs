//! Markdown (as LLMs write it) → WhatsApp text (as WhatsApp renders it).
//!
//! Two passes: pulldown-cmark's events are folded into a small tree of [`Block`]s and [`Inline`]s,
//! then the tree is written out. The tree step exists because the hard cases are about context: a
//! list item's continuation lines need its indent, a bold span inside a heading must not emit a
//! second pair of `*`, and an emphasis marker is only valid in WhatsApp when the characters around it
//! are not letters, which is only known once the neighbours are written.

use std::ops::Range;

use pulldown_cmark::{Event, Options, Parser, Tag};

/// What a horizontal rule becomes: WhatsApp has none, a short line of em dashes reads as one.
const RULE: &str = "———";

/// WhatsApp's monospace marker, which opens and closes a code block (or a span within a line).
const MONO: &str = "```";

/// Put between backticks of the code so that no three stand together: WhatsApp has no escape,
/// and would end the monospace at the first ```` ``` ```` inside it. Invisible, so the code reads
/// as written.
const ZERO_WIDTH_SPACE: char = '\u{200B}';

/// Converts Markdown to WhatsApp's text formatting. See the [module docs](crate::format) for the
/// mapping.
pub fn markdown_to_whatsapp(md: &str) -> String {
    let blocks = parse(md);
    let lines = render_blocks(&blocks, false, false);
    finish(&lines)
}

// ---------------------------------------------------------------------------------------------
// Tree
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Bold,
    Italic,
    Strike,
}

impl Style {
    fn marker(self) -> char {
        match self {
            Style::Bold => '*',
            Style::Italic => '_',
            Style::Strike => '~',
        }
    }
}

#[derive(Debug)]
enum Inline {
    Text(String),
    Code(String),
    Break,
    /// `delim` is the Markdown source of the delimiter (`*`, `__`, `~~`…), written back literally
    /// when WhatsApp could not render the span (e.g. `2*3*4`, emphasis inside a word).
    Styled {
        style: Style,
        delim: String,
        children: Vec<Inline>,
    },
    /// Links and images alike: `label (url)`.
    Link {
        url: String,
        label: Vec<Inline>,
    },
}

#[derive(Debug)]
enum Block {
    Paragraph(Vec<Inline>),
    /// Inline content placed directly in a list item, as tight lists do.
    Plain(Vec<Inline>),
    Heading(Vec<Inline>),
    Code(String),
    Quote(Vec<Block>),
    List {
        start: Option<u64>,
        items: Vec<Vec<Block>>,
    },
    Rule,
    Table(Vec<Row>),
    Html(String),
}

#[derive(Debug)]
struct Row {
    head: bool,
    cells: Vec<Vec<Inline>>,
}

/// One open Markdown element while folding events into the tree.
enum Frame {
    /// The document, block quotes, list items, and containers we do not render specially
    /// (footnote definitions, definition lists…), whose children are kept.
    Blocks(Container, Vec<Block>),
    List(Option<u64>, Vec<Vec<Block>>),
    Inlines(InlineKind, Vec<Inline>),
    Code(String),
    Html(String),
    Table(Vec<Row>),
    Row(bool, Vec<Vec<Inline>>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Root,
    Quote,
    Item,
    Other,
}

enum InlineKind {
    Paragraph,
    Heading,
    Cell,
    Styled(Style, String),
    Link(String),
    /// Inline containers we do not render specially (superscript, subscript…).
    Other,
}

fn parse(md: &str) -> Vec<Block> {
    let options = Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES;
    let mut tree = TreeBuilder {
        stack: vec![Frame::Blocks(Container::Root, Vec::new())],
        row_end: 0,
        cell_end: 0,
    };
    for (event, range) in Parser::new_ext(md, options).into_offset_iter() {
        tree.event(md, event, range);
    }
    // The parser closes everything it opens; unwind defensively anyway.
    while tree.stack.len() > 1 {
        tree.end();
    }
    match tree.stack.pop() {
        Some(Frame::Blocks(_, blocks)) => blocks,
        _ => Vec::new(),
    }
}

struct TreeBuilder {
    stack: Vec<Frame>,
    /// Where the source of the current table row ends, and of its last cell the parser gave.
    row_end: usize,
    cell_end: usize,
}

impl TreeBuilder {
    fn event(&mut self, source: &str, event: Event<'_>, range: Range<usize>) {
        match event {
            Event::Start(tag) => self.start(source, tag, range),
            Event::End(_) => {
                if matches!(self.stack.last(), Some(Frame::Row(..))) {
                    self.keep_dropped_cells(source);
                }
                self.end()
            }
            Event::Text(text) => match self.stack.last_mut() {
                Some(Frame::Code(code)) | Some(Frame::Html(code)) => code.push_str(&text),
                _ => self.inline(Inline::Text(text.into_string())),
            },
            Event::Code(code) => self.inline(Inline::Code(code.into_string())),
            Event::InlineMath(math) | Event::DisplayMath(math) => {
                self.inline(Inline::Text(math.into_string()))
            }
            Event::Html(html) => match self.stack.last_mut() {
                Some(Frame::Html(block)) => block.push_str(&html),
                _ => self.inline_html(&html),
            },
            Event::InlineHtml(html) => self.inline_html(&html),
            Event::FootnoteReference(label) => self.inline(Inline::Text(format!("[{label}]"))),
            // A `<br>` at the end of a source line is already its break: the newline after it is
            // only whitespace, as in HTML (it made a blank line).
            Event::SoftBreak if self.ends_in_break() => {}
            Event::SoftBreak | Event::HardBreak => self.inline(Inline::Break),
            Event::Rule => self.block(Block::Rule),
            Event::TaskListMarker(done) => {
                self.inline(Inline::Text(if done { "[x] " } else { "[ ] " }.into()))
            }
        }
    }

    fn start(&mut self, source: &str, tag: Tag<'_>, range: Range<usize>) {
        let delim = |max: usize| -> String {
            let text = source.get(range.clone()).unwrap_or_default();
            let first = text.chars().next().unwrap_or('*');
            text.chars().take_while(|c| *c == first).take(max).collect()
        };
        match tag {
            Tag::TableHead | Tag::TableRow => self.row_end = range.end,
            Tag::TableCell => self.cell_end = range.end,
            _ => {}
        }
        let frame = match tag {
            Tag::Paragraph => Frame::Inlines(InlineKind::Paragraph, Vec::new()),
            Tag::Heading { .. } => Frame::Inlines(InlineKind::Heading, Vec::new()),
            Tag::BlockQuote(_) => Frame::Blocks(Container::Quote, Vec::new()),
            // Fenced and indented code alike; the info string is dropped (WhatsApp has no
            // syntax highlighting).
            Tag::CodeBlock(_) => Frame::Code(String::new()),
            Tag::HtmlBlock => Frame::Html(String::new()),
            Tag::List(start) => Frame::List(start, Vec::new()),
            Tag::Item => Frame::Blocks(Container::Item, Vec::new()),
            Tag::Table(_) => Frame::Table(Vec::new()),
            Tag::TableHead => Frame::Row(true, Vec::new()),
            Tag::TableRow => Frame::Row(false, Vec::new()),
            Tag::TableCell => Frame::Inlines(InlineKind::Cell, Vec::new()),
            Tag::Emphasis => {
                Frame::Inlines(InlineKind::Styled(Style::Italic, delim(1)), Vec::new())
            }
            Tag::Strong => Frame::Inlines(InlineKind::Styled(Style::Bold, delim(2)), Vec::new()),
            Tag::Strikethrough => {
                Frame::Inlines(InlineKind::Styled(Style::Strike, delim(2)), Vec::new())
            }
            Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                Frame::Inlines(InlineKind::Link(dest_url.into_string()), Vec::new())
            }
            Tag::Superscript | Tag::Subscript => Frame::Inlines(InlineKind::Other, Vec::new()),
            Tag::FootnoteDefinition(_)
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::MetadataBlock(_) => Frame::Blocks(Container::Other, Vec::new()),
        };
        self.stack.push(frame);
    }

    fn end(&mut self) {
        if self.stack.len() <= 1 {
            return;
        }
        let Some(frame) = self.stack.pop() else {
            return;
        };
        match frame {
            Frame::Blocks(Container::Quote, blocks) => self.block(Block::Quote(blocks)),
            Frame::Blocks(Container::Item, blocks) => match self.stack.last_mut() {
                Some(Frame::List(_, items)) => items.push(blocks),
                _ => self.blocks(blocks),
            },
            Frame::Blocks(_, blocks) => self.blocks(blocks),
            Frame::List(start, items) => self.block(Block::List { start, items }),
            Frame::Inlines(kind, inlines) => match kind {
                InlineKind::Paragraph => self.block(Block::Paragraph(inlines)),
                InlineKind::Heading => self.block(Block::Heading(inlines)),
                InlineKind::Cell => match self.stack.last_mut() {
                    Some(Frame::Row(_, cells)) => cells.push(inlines),
                    _ => self.block(Block::Plain(inlines)),
                },
                InlineKind::Styled(style, delim) => self.inline(Inline::Styled {
                    style,
                    delim,
                    children: inlines,
                }),
                InlineKind::Link(url) => self.inline(Inline::Link {
                    url,
                    label: inlines,
                }),
                InlineKind::Other => {
                    for inline in inlines {
                        self.inline(inline);
                    }
                }
            },
            Frame::Code(code) => self.block(Block::Code(code)),
            Frame::Html(html) => self.block(Block::Html(html)),
            Frame::Table(rows) => self.block(Block::Table(rows)),
            Frame::Row(head, cells) => match self.stack.last_mut() {
                Some(Frame::Table(rows)) => rows.push(Row { head, cells }),
                _ => {
                    for cell in cells {
                        self.block(Block::Plain(cell));
                    }
                }
            },
        }
    }

    fn blocks(&mut self, blocks: Vec<Block>) {
        for block in blocks {
            self.block(block);
        }
    }

    /// Adds a block to the innermost frame that holds blocks.
    fn block(&mut self, block: Block) {
        for frame in self.stack.iter_mut().rev() {
            match frame {
                Frame::Blocks(_, blocks) => {
                    blocks.push(block);
                    return;
                }
                Frame::List(_, items) => {
                    items.push(vec![block]);
                    return;
                }
                _ => {}
            }
        }
    }

    /// Adds inline content to the innermost frame; loose inline content in a block container (a
    /// tight list item) becomes a [`Block::Plain`].
    fn inline(&mut self, inline: Inline) {
        match self.stack.last_mut() {
            Some(Frame::Inlines(_, inlines)) => inlines.push(inline),
            Some(Frame::Blocks(_, blocks)) => match blocks.last_mut() {
                Some(Block::Plain(inlines)) => inlines.push(inline),
                _ => blocks.push(Block::Plain(vec![inline])),
            },
            Some(Frame::Code(text)) | Some(Frame::Html(text)) => {
                text.push_str(&plain_text(std::slice::from_ref(&inline)))
            }
            Some(Frame::Row(_, cells)) => cells.push(vec![inline]),
            Some(Frame::Table(_)) | Some(Frame::List(..)) | None => {
                self.block(Block::Plain(vec![inline]))
            }
        }
    }

    /// GFM drops a row's cells beyond the header's count, and a `|` inside a code span still ends
    /// a cell, so `` | `a|b` | c | `` in a two-column table would lose `c`: whatever the row's
    /// source holds after the last cell the parser gave is kept as one more cell.
    fn keep_dropped_cells(&mut self, source: &str) {
        let rest = source
            .get(self.cell_end..self.row_end)
            .unwrap_or_default()
            .trim();
        let rest = rest.strip_prefix('|').unwrap_or(rest);
        let rest = match rest.strip_suffix('|') {
            Some(inner) if !inner.ends_with('\\') => inner,
            _ => rest,
        }
        .trim();
        if rest.is_empty() {
            return;
        }
        let mut cell = Vec::new();
        for block in parse(rest) {
            match block {
                Block::Paragraph(inlines) | Block::Plain(inlines) | Block::Heading(inlines) => {
                    cell.extend(inlines)
                }
                _ => {
                    cell = vec![Inline::Text(rest.to_owned())];
                    break;
                }
            }
        }
        if let Some(Frame::Row(_, cells)) = self.stack.last_mut() {
            cells.push(cell);
        }
    }

    /// Whether the inline content being built ends in a line break.
    fn ends_in_break(&self) -> bool {
        let inlines = match self.stack.last() {
            Some(Frame::Inlines(_, inlines)) => inlines,
            Some(Frame::Blocks(_, blocks)) => match blocks.last() {
                Some(Block::Plain(inlines)) => inlines,
                _ => return false,
            },
            _ => return false,
        };
        matches!(inlines.last(), Some(Inline::Break))
    }

    /// Inline HTML elements are dropped, except `<br>` which is a line break. Anything else
    /// CommonMark reads as a tag (`<order number>`, `<nombre>`: a placeholder the model wrote
    /// for the customer to fill in) stays as written.
    fn inline_html(&mut self, html: &str) {
        if is_break_tag(html) {
            self.inline(Inline::Break);
        } else if !is_html_markup(html) {
            self.inline(Inline::Text(html.to_owned()));
        }
    }
}

/// The lowercase element name of a tag (`<br/>`, `</B>`, `<a href=…>` → `br`, `b`, `a`).
fn tag_name(tag: &str) -> String {
    tag.trim()
        .trim_start_matches('<')
        .trim_start_matches('/')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn is_break_tag(html: &str) -> bool {
    tag_name(html) == "br"
}

/// Whether CommonMark's "HTML" is markup to remove: a comment, a declaration or processing
/// instruction, or a tag of an HTML element. Other tags are words in angle brackets.
fn is_html_markup(html: &str) -> bool {
    let html = html.trim_start();
    html.starts_with("<!")
        || html.starts_with("<?")
        || HTML_ELEMENTS.contains(&tag_name(html).as_str())
}

/// The HTML elements a model might write (HTML's own list, less the obsolete and the obscure).
#[rustfmt::skip]
const HTML_ELEMENTS: &[&str] = &[
    "a", "abbr", "address", "area", "article", "aside", "audio", "b", "base", "bdi", "bdo", "big",
    "blockquote", "body", "br", "button", "canvas", "caption", "center", "cite", "code", "col",
    "colgroup", "data", "datalist", "dd", "del", "details", "dfn", "dialog", "div", "dl", "dt",
    "em", "embed", "fieldset", "figcaption", "figure", "font", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "head", "header", "hgroup", "hr", "html", "i", "iframe", "img", "input",
    "ins", "kbd", "label", "legend", "li", "link", "main", "map", "mark", "menu", "meta", "meter",
    "nav", "noscript", "object", "ol", "optgroup", "option", "output", "p", "param", "picture",
    "pre", "progress", "q", "rp", "rt", "ruby", "s", "samp", "script", "search", "section",
    "select", "slot", "small", "source", "span", "strike", "strong", "style", "sub", "summary",
    "sup", "svg", "table", "tbody", "td", "template", "textarea", "tfoot", "th", "thead", "time",
    "title", "tr", "track", "tt", "u", "ul", "var", "video", "wbr",
];

// ---------------------------------------------------------------------------------------------
// Blocks → lines
// ---------------------------------------------------------------------------------------------

/// Renders sibling blocks, separated by a blank line (or by nothing, inside a tight list item).
/// `quoted`: the blocks are inside a block quote, whose every line will start with `> `.
fn render_blocks(blocks: &[Block], tight: bool, quoted: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for block in blocks {
        let rendered = render_block(block, quoted);
        if rendered.iter().all(|line| line.trim().is_empty()) {
            continue;
        }
        if !lines.is_empty() && !tight {
            lines.push(String::new());
        }
        lines.extend(rendered);
    }
    lines
}

fn render_block(block: &Block, quoted: bool) -> Vec<String> {
    match block {
        Block::Paragraph(inlines) | Block::Plain(inlines) => {
            split_lines(&render_inlines(inlines, None))
        }
        Block::Heading(inlines) => split_lines(&render_inlines(inlines, Some(Style::Bold))),
        Block::Code(code) => {
            if code.trim().is_empty() {
                return Vec::new();
            }
            let code = code
                .trim_end_matches(['\n', '\r'])
                .lines()
                .map(str::trim_end);
            if quoted {
                // A quote is a property of each line (`> ` at its start), while a monospace
                // block runs from fence to fence across lines: a block inside a quote would hold
                // the next lines' `> ` in its monospace. Each line gets its own span instead.
                return code
                    .map(|line| {
                        if line.trim().is_empty() {
                            String::new()
                        } else {
                            monospace_span(line)
                        }
                    })
                    .collect();
            }
            let mut lines = vec![MONO.to_owned()];
            lines.extend(code.map(defuse_backticks));
            lines.push(MONO.to_owned());
            lines
        }
        Block::Quote(blocks) => render_blocks(blocks, false, true)
            .into_iter()
            .map(|line| {
                if line.is_empty() {
                    line
                } else {
                    format!("> {line}")
                }
            })
            .collect(),
        Block::List { start, items } => render_list(*start, items, quoted),
        Block::Rule => vec![RULE.to_owned()],
        Block::Table(rows) => rows
            .iter()
            .map(|row| {
                let bold = row.head.then_some(Style::Bold);
                row.cells
                    .iter()
                    .map(|cell| render_inlines(cell, bold).replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect(),
        Block::Html(html) => strip_html(html)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

fn render_list(start: Option<u64>, items: &[Vec<Block>], quoted: bool) -> Vec<String> {
    // Tight lists (no blank lines in the source) put item text directly in the item; loose
    // lists wrap it in paragraphs, and keep a blank line between items.
    let tight = !items
        .iter()
        .flatten()
        .any(|block| matches!(block, Block::Paragraph(_)));
    let mut lines = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let marker = match start {
            Some(first) => format!("{}. ", first.saturating_add(index as u64)),
            None => "- ".to_owned(),
        };
        if !tight && index > 0 {
            lines.push(String::new());
        }
        let body = render_blocks(item, tight, quoted);
        let mut body = body.into_iter();
        match body.next() {
            Some(first) => lines.push(format!("{marker}{first}")),
            None => lines.push(marker.trim_end().to_owned()),
        }
        // Nested content is indented by two spaces per level, whatever the marker's width.
        lines.extend(body.map(|line| {
            if line.is_empty() {
                line
            } else {
                format!("  {line}")
            }
        }));
    }
    lines
}

fn split_lines(text: &str) -> Vec<String> {
    text.split('\n').map(str::to_owned).collect()
}

/// Joins the lines: no trailing whitespace on any line, at most one blank line in a row, none at
/// the start or the end.
fn finish(lines: &[String]) -> String {
    let mut out = String::new();
    let mut blank_run = 0;
    for line in lines.iter().flat_map(|line| line.split('\n')) {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Inlines → text
// ---------------------------------------------------------------------------------------------

/// A flattened inline run: text and code between style markers that may or may not survive.
#[derive(Debug, Clone)]
enum Tok {
    Text(String),
    Code(String),
    Open(Style, String),
    Close(Style, String),
}

/// Writes inline content, optionally wrapped in one style (headings and table heads are bold).
fn render_inlines(inlines: &[Inline], wrap: Option<Style>) -> String {
    let mut toks = Vec::new();
    let mut active = Vec::new();
    if let Some(style) = wrap {
        toks.push(Tok::Open(style, String::new()));
        active.push(style);
    }
    flatten(inlines, &mut active, false, &mut toks);
    if let Some(style) = wrap {
        toks.push(Tok::Close(style, String::new()));
    }
    let toks = split_marks_at_newlines(toks);
    serialize(&toks)
}

/// `in_link`: the inlines are a link's label, where a link (an image as a link's label) is shown
/// by its label alone; the outer link's target is the one the customer needs.
fn flatten(inlines: &[Inline], active: &mut Vec<Style>, in_link: bool, out: &mut Vec<Tok>) {
    for inline in inlines {
        match inline {
            Inline::Text(text) => out.push(Tok::Text(text.clone())),
            Inline::Code(code) => out.push(Tok::Code(code.replace(['\n', '\r'], " "))),
            Inline::Break => out.push(Tok::Text("\n".into())),
            Inline::Styled {
                style,
                delim,
                children,
            } => {
                // WhatsApp cannot nest a style inside itself (`_a _b_ c_` closes early): the inner
                // span is already styled, so its markers are simply left out.
                if active.contains(style) {
                    flatten(children, active, in_link, out);
                } else {
                    out.push(Tok::Open(*style, delim.clone()));
                    active.push(*style);
                    flatten(children, active, in_link, out);
                    active.pop();
                    out.push(Tok::Close(*style, delim.clone()));
                }
            }
            Inline::Link { url, label } => {
                let text = plain_text(label);
                // An e-mail address or a phone number is shown as itself, which WhatsApp links;
                // `mailto:` or `tel:` in front of it only reads as jargon.
                let shown = ["mailto:", "tel:"]
                    .iter()
                    .find_map(|scheme| url.strip_prefix(scheme))
                    .filter(|target| !target.trim().is_empty())
                    .unwrap_or(url);
                if in_link || url.trim().is_empty() {
                    flatten(label, active, in_link, out);
                } else if text.trim().is_empty() || same_target(&text, url) {
                    out.push(Tok::Text(shown.to_owned()));
                } else {
                    flatten(label, active, true, out);
                    out.push(Tok::Text(format!(" ({shown})")));
                }
            }
        }
    }
}

/// The label and the URL say the same thing (`[example.com](https://example.com/)`, autolinks).
fn same_target(label: &str, url: &str) -> bool {
    fn bare(s: &str) -> &str {
        let s = s.trim();
        let s = ["mailto:", "tel:", "https://", "http://"]
            .iter()
            .find_map(|scheme| s.strip_prefix(scheme))
            .unwrap_or(s);
        let s = s.strip_prefix("www.").unwrap_or(s);
        s.trim_end_matches('/')
    }
    bare(label).eq_ignore_ascii_case(bare(url))
}

fn plain_text(inlines: &[Inline]) -> String {
    let mut out = String::new();
    for inline in inlines {
        match inline {
            Inline::Text(text) | Inline::Code(text) => out.push_str(text),
            Inline::Break => out.push(' '),
            Inline::Styled { children, .. } => out.push_str(&plain_text(children)),
            Inline::Link { label, .. } => out.push_str(&plain_text(label)),
        }
    }
    out
}

/// WhatsApp styles do not span lines, so every style open across a newline is closed before it
/// and reopened after it.
fn split_marks_at_newlines(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    let mut open: Vec<(Style, String)> = Vec::new();
    for tok in toks {
        match tok {
            Tok::Text(text) if text.contains('\n') && !open.is_empty() => {
                for (i, segment) in text.split('\n').enumerate() {
                    if i > 0 {
                        for (style, delim) in open.iter().rev() {
                            out.push(Tok::Close(*style, delim.clone()));
                        }
                        out.push(Tok::Text("\n".into()));
                        for (style, delim) in &open {
                            out.push(Tok::Open(*style, delim.clone()));
                        }
                    }
                    if !segment.is_empty() {
                        out.push(Tok::Text(segment.to_owned()));
                    }
                }
            }
            Tok::Open(style, delim) => {
                open.push((style, delim.clone()));
                out.push(Tok::Open(style, delim));
            }
            Tok::Close(style, delim) => {
                open.pop();
                out.push(Tok::Close(style, delim));
            }
            other => out.push(other),
        }
    }
    out
}

/// What a marker pair becomes in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Written as WhatsApp's marker.
    Marker,
    /// Dropped: the span is empty or starts/ends with a space, WhatsApp would show stray markers.
    Drop,
    /// Written as the original Markdown delimiter: a letter touches it (`2*3*4`, `foo**bar**`),
    /// so WhatsApp will not render it and the source text is the most readable thing to show.
    Literal,
}

fn serialize(toks: &[Tok]) -> String {
    // Pair every Open with its Close; the token stream is well nested by construction.
    let mut fate = vec![Fate::Marker; toks.len()];
    let mut stack = Vec::new();
    for (i, tok) in toks.iter().enumerate() {
        match tok {
            Tok::Open(..) => stack.push(i),
            Tok::Close(..) => {
                if let Some(open) = stack.pop() {
                    let verdict = judge(toks, open, i);
                    fate[open] = verdict;
                    fate[i] = verdict;
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    for (tok, fate) in toks.iter().zip(fate) {
        match tok {
            Tok::Text(text) => out.push_str(text),
            Tok::Code(code) => out.push_str(&code_span(code)),
            Tok::Open(style, delim) | Tok::Close(style, delim) => match fate {
                Fate::Marker => out.push(style.marker()),
                Fate::Drop => {}
                Fate::Literal => out.push_str(delim),
            },
        }
    }
    out
}

/// Whether the marker at `open` is within a bare URL (`https://x.co/*a*/b`, `www.x.co/_a_`): the
/// Markdown parser reads emphasis there, but the address must reach the customer as written.
fn in_url(toks: &[Tok], open: usize) -> bool {
    let mut word = String::new();
    for tok in toks[..open].iter().rev() {
        match tok {
            Tok::Text(text) => {
                let tail = text.rsplit(char::is_whitespace).next().unwrap_or_default();
                word.insert_str(0, tail);
                if tail.len() < text.len() {
                    break;
                }
            }
            Tok::Code(_) => break,
            Tok::Open(_, delim) | Tok::Close(_, delim) => word.insert_str(0, delim),
        }
    }
    word.contains("://")
        || word
            .trim_start_matches(|c: char| !c.is_alphanumeric())
            .to_ascii_lowercase()
            .starts_with("www.")
}

/// Inline code. WhatsApp's `` `code` `` ends at the next backtick, so code holding one becomes a
/// monospace span instead, which only a run of three backticks ends.
fn code_span(code: &str) -> String {
    if code.contains('`') {
        monospace_span(code)
    } else {
        format!("`{code}`")
    }
}

/// ```` ```code``` ````, with the code's backticks kept from joining the markers or each other
/// into a run of three.
fn monospace_span(code: &str) -> String {
    let mut out = String::from(MONO);
    if code.starts_with('`') {
        out.push(ZERO_WIDTH_SPACE);
    }
    out.push_str(&defuse_backticks(code));
    if code.ends_with('`') {
        out.push(ZERO_WIDTH_SPACE);
    }
    out.push_str(MONO);
    out
}

/// `code` with a [`ZERO_WIDTH_SPACE`] after every second backtick of a longer run, so that
/// WhatsApp finds no ```` ``` ```` in it.
fn defuse_backticks(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut run = 0;
    for c in code.chars() {
        if c == '`' {
            if run == 2 {
                out.push(ZERO_WIDTH_SPACE);
                run = 0;
            }
            run += 1;
        } else {
            run = 0;
        }
        out.push(c);
    }
    out
}

fn judge(toks: &[Tok], open: usize, close: usize) -> Fate {
    let content: String = toks[open + 1..close]
        .iter()
        .filter_map(|tok| match tok {
            Tok::Text(text) => Some(text.as_str()),
            Tok::Code(_) => Some("`"),
            _ => None,
        })
        .collect();
    if content.trim().is_empty()
        || content.starts_with(char::is_whitespace)
        || content.ends_with(char::is_whitespace)
    {
        return Fate::Drop;
    }
    let before = toks[..open].iter().rev().find_map(|tok| match tok {
        Tok::Text(text) => text.chars().next_back(),
        Tok::Code(_) => Some('`'),
        _ => None,
    });
    let after = toks[close + 1..].iter().find_map(|tok| match tok {
        Tok::Text(text) => text.chars().next(),
        Tok::Code(_) => Some('`'),
        _ => None,
    });
    if before.is_some_and(char::is_alphanumeric)
        || after.is_some_and(char::is_alphanumeric)
        || in_url(toks, open)
    {
        Fate::Literal
    } else {
        Fate::Marker
    }
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

/// Block-level HTML reduced to its text: tags and comments removed, line-breaking tags turned into
/// newlines, the common entities decoded.
fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let after = &rest[lt..];
        if let Some(comment) = after.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        let looks_like_tag = after[1..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?'));
        match after.find('>') {
            Some(gt) if looks_like_tag && is_html_markup(&after[..=gt]) => {
                let tag = &after[..=gt];
                if is_break_tag(tag) || is_block_tag(tag) {
                    out.push('\n');
                }
                rest = &after[gt + 1..];
            }
            _ => {
                out.push('<');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    decode_entities(&out)
}

fn is_block_tag(tag: &str) -> bool {
    matches!(
        tag_name(tag).as_str(),
        "p" | "div"
            | "li"
            | "tr"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "ul"
            | "ol"
            | "table"
            | "blockquote"
            | "pre"
            | "details"
            | "summary"
            | "section"
    )
}

fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let decoded = after.find(';').filter(|semi| *semi <= 10).and_then(|semi| {
            let name = &after[1..semi];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(String::from)
                .or_else(|| named_entity(name))
                .map(|text| (text, semi))
        });
        match decoded {
            Some((text, semi)) => {
                out.push_str(&text);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Any other HTML entity (`&eacute;`, `&euro;`, `&hellip;`…), as the Markdown parser decodes it
/// in ordinary text; HTML blocks reach us undecoded.
fn named_entity(name: &str) -> Option<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let source = format!("&{name};");
    let text: String = Parser::new(&source)
        .filter_map(|event| match event {
            Event::Text(text) => Some(text.into_string()),
            _ => None,
        })
        .collect();
    (text != source).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_converts(cases: &[(&str, &str)]) {
        for (md, expected) in cases {
            assert_eq!(markdown_to_whatsapp(md), *expected, "{md:?}");
        }
    }

    #[test]
    fn inline_markdown_becomes_whatsapp_markers() {
        let cases = [
            ("**bold**", "*bold*"),
            ("__bold__", "*bold*"),
            ("*italic*", "_italic_"),
            ("_italic_", "_italic_"),
            ("~~strike~~", "~strike~"),
            ("`code`", "`code`"),
            ("***both***", "_*both*_"),
            ("**bold _italic_ bold**", "*bold _italic_ bold*"),
            ("*italic **bold** italic*", "_italic *bold* italic_"),
            ("**outer **inner** outer**", "*outer inner outer*"),
            ("~~**gone**~~", "~*gone*~"),
            ("**`x` done**", "*`x` done*"),
        ];
        assert_converts(&cases);
    }

    #[test]
    fn literal_asterisks_and_underscores_stay_readable() {
        let cases = [
            ("2 * 3 = 6", "2 * 3 = 6"),
            ("2*3*4", "2*3*4"),
            ("snake_case_name", "snake_case_name"),
            ("foo**bar**baz", "foo**bar**baz"),
            ("\\*not emphasis\\*", "*not emphasis*"),
            ("a * b * c", "a * b * c"),
            ("a ** b", "a ** b"),
            ("** **", "———"),
            ("precio: 5€ * unidad", "precio: 5€ * unidad"),
        ];
        assert_converts(&cases);
    }

    #[test]
    fn markers_within_a_bare_url_stay_as_written() {
        assert_converts(&[
            (
                "Ver https://x.co/*promo*/hoy",
                "Ver https://x.co/*promo*/hoy",
            ),
            ("(www.x.co/**a**)", "(www.x.co/**a**)"),
            ("https://x.co/~~a~~ y ~~b~~", "https://x.co/~~a~~ y ~b~"),
            ("https://x.co/_a_/b y _b_", "https://x.co/_a_/b y _b_"),
            ("https://x.co/a_*b*", "https://x.co/a_*b*"),
            // Emphasis around a whole URL is still emphasis.
            ("**https://x.co/a_b**", "*https://x.co/a_b*"),
        ]);
    }

    #[test]
    fn emphasis_across_a_line_break_is_closed_and_reopened() {
        assert_eq!(markdown_to_whatsapp("**one\ntwo**"), "*one*\n*two*");
        assert_eq!(markdown_to_whatsapp("*a  \nb*"), "_a_\n_b_");
    }

    #[test]
    fn code_holding_backticks_stays_monospace() {
        let cases = [
            // WhatsApp's `code` would end at the inner backtick: monospace ends only at three.
            ("Use `` a`b `` here", "Use ```a`b``` here"),
            // Backticks at the edges or three in a row are kept apart by a zero-width space.
            ("`` `x` ``", "```\u{200B}`x`\u{200B}```"),
            ("```` ``` ````", "```\u{200B}``\u{200B}`\u{200B}```"),
            ("````\n```rust\nx\n````", "```\n``\u{200B}`rust\nx\n```"),
            ("```\na ```` b\n```", "```\na ``\u{200B}`` b\n```"),
            // No backtick: as before.
            ("`a*b*c`", "`a*b*c`"),
        ];
        assert_converts(&cases);
    }

    #[test]
    fn code_in_a_quote_is_monospace_line_by_line() {
        let cases = [
            (
                "> ```\n> let x = 1;\n>   y();  \n> ```",
                "> ```let x = 1;```\n> ```  y();```",
            ),
            ("> - a\n>\n>   ```\n>   b\n>   ```", "> - a\n\n>   ```b```"),
            // Outside a quote the block keeps its fences, in a list too.
            ("- a\n\n  ```\n  b\n  ```", "- a\n\n  ```\n  b\n  ```"),
        ];
        assert_converts(&cases);
    }

    #[test]
    fn links_and_images_show_their_target() {
        let cases = [
            ("[Tienda](https://kaiu.co)", "Tienda (https://kaiu.co)"),
            ("[https://kaiu.co](https://kaiu.co)", "https://kaiu.co"),
            ("[kaiu.co](https://kaiu.co/)", "https://kaiu.co/"),
            ("<https://kaiu.co/a?b=1>", "https://kaiu.co/a?b=1"),
            ("<hola@kaiu.co>", "hola@kaiu.co"),
            ("[](https://kaiu.co)", "https://kaiu.co"),
            (
                "[**Tienda**](https://kaiu.co)",
                "*Tienda* (https://kaiu.co)",
            ),
            (
                "![logo](https://kaiu.co/l.png)",
                "logo (https://kaiu.co/l.png)",
            ),
            ("![](https://kaiu.co/l.png)", "https://kaiu.co/l.png"),
            ("see https://kaiu.co now", "see https://kaiu.co now"),
            ("[ref][1]\n\n[1]: https://kaiu.co", "ref (https://kaiu.co)"),
            ("<mailto:hola@kaiu.co>", "hola@kaiu.co"),
            // An image as a link's label: the link's target only.
            (
                "[![Camiseta](https://kaiu.co/c.png)](https://kaiu.co/c)",
                "Camiseta (https://kaiu.co/c)",
            ),
            ("[](mailto:hola@kaiu.co)", "hola@kaiu.co"),
            (
                "[escríbenos](mailto:hola@kaiu.co)",
                "escríbenos (hola@kaiu.co)",
            ),
            ("[Llámanos](tel:+573001234567)", "Llámanos (+573001234567)"),
        ];
        assert_converts(&cases);
    }

    #[test]
    fn blocks_are_rendered_line_by_line() {
        let cases = [
            ("# Title", "*Title*"),
            ("### Sub **bold** _it_", "*Sub bold _it_*"),
            ("Title\n=====", "*Title*"),
            ("- a\n- b", "- a\n- b"),
            ("* a\n+ b", "- a\n\n- b"),
            ("- a\n  - b\n    - c\n- d", "- a\n  - b\n    - c\n- d"),
            ("3. c\n4. d", "3. c\n4. d"),
            ("1. a\n   - x\n2. b", "1. a\n  - x\n2. b"),
            ("- a\n\n- b", "- a\n\n- b"),
            ("> quoted\n> more", "> quoted\n> more"),
            ("> a\n>> b", "> a\n\n> > b"),
            ("a\n\n---\n\nb", "a\n\n———\n\nb"),
            ("```rust\nlet x = **1**;\n```", "```\nlet x = **1**;\n```"),
            ("    indented *code*", "```\nindented *code*\n```"),
            ("| a | b |\n|---|---|\n| 1 | 2 |", "*a* | *b*\n1 | 2"),
            ("para one\n\n\n\npara two", "para one\n\npara two"),
            ("line one\nline two", "line one\nline two"),
            ("trailing  \nspaces   ", "trailing\nspaces"),
            ("", ""),
        ];
        assert_converts(&cases);
    }

    #[test]
    fn html_is_reduced_to_its_text() {
        let cases = [
            ("Hola <b>mundo</b>", "Hola mundo"),
            ("uno<br>dos", "uno\ndos"),
            ("<div>\n<p>Hola &amp; adiós</p>\n</div>", "Hola & adiós"),
            ("a <!-- hidden --> b", "a  b"),
            ("<!-- comment -->\n\ntext", "text"),
            ("x &lt; y", "x < y"),
            ("<p>Caf&eacute; &mdash; 5&euro;</p>", "Café — 5€"),
            // Words in angle brackets are not HTML elements: the model's placeholders stay.
            (
                "Envíanos tu <order number>, por favor",
                "Envíanos tu <order number>, por favor",
            ),
            (
                "Escribe a <nombre>@ejemplo.com",
                "Escribe a <nombre>@ejemplo.com",
            ),
            ("<nombre>\n\nGracias", "<nombre>\n\nGracias"),
            (
                "<div>Tu <codigo> es <b>válido</b></div>",
                "Tu <codigo> es válido",
            ),
            ("a <B>b</B> <Br/>c", "a b\nc"),
            // A <br> at the end of a line breaks it once.
            ("uno<br>\ndos<br/>\ntres", "uno\ndos\ntres"),
            ("- uno<br>\n  dos", "- uno\n  dos"),
        ];
        assert_converts(&cases);
    }

    #[test]
    fn entities_decode_only_when_well_formed() {
        let cases = [
            ("a &amp; b", "a & b"),
            ("&#233;&#xE9;", "éé"),
            ("AT&T", "AT&T"),
            ("&unknown;", "&unknown;"),
            ("&#xD800;", "&#xD800;"),
            ("Caf&eacute; &mdash; 5&euro;&hellip; &copy;", "Café — 5€… ©"),
            ("&Eacute;&ntilde;&ccedil;&atilde;", "Éñçã"),
        ];
        for (html, expected) in cases {
            assert_eq!(decode_entities(html), expected, "{html:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_converts_without_trailing_whitespace_or_extra_blank_lines(
            md in r"(\PC|[*_~`#>\-\[\]()!<>|\n ]){0,200}"
        ) {
            let text = markdown_to_whatsapp(&md);
            proptest::prop_assert!(text.lines().all(|line| line == line.trim_end()), "{:?}", text);
            proptest::prop_assert!(!text.contains("\n\n\n"), "{:?}", text);
            proptest::prop_assert!(!text.starts_with('\n') && !text.ends_with(char::is_whitespace));
        }

        #[test]
        fn plain_words_pass_through_unchanged(words in proptest::collection::vec("[a-zA-Záéíóúñãç0-9]{1,10}", 1..20)) {
            let text = words.join(" ");
            proptest::prop_assert_eq!(markdown_to_whatsapp(&text), text);
        }
    }
}
