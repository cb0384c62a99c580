//! The documents of a YAML stream, split while it is read: a file is never held whole, only
//! the document being read, and a syntax error spoils that document, not the file.
//!
//! YAML forbids, inside a document, a line that starts with `---` or `...` followed by a
//! space, a tab or the line's end (the spec's `c-forbidden`, YAML 1.2 §9.1.4): not even a
//! block scalar or a quoted scalar may hold one. Such a line always ends the document, so the
//! stream can be cut there without parsing it, where the parser itself would cut it:
//! - `---` starts a document; its line is kept in the document (`--- |`, `--- !tag`,
//!   `--- {kind: Pod}` and `--- # note` mean what they say);
//! - `...` ends one; its line is kept too, so that the parser checks what follows it;
//! - directives (`%YAML`, `%TAG`) belong to the document whose `---` follows them;
//! - `---#` or `---x` is no marker but text, as the `#` of a comment needs a space before it.
//!
//! Lines end at `\n`, `\r\n` or `\r`, as in YAML. A byte-order mark may start the stream.

use std::io::{self, BufRead};

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";
/// Bytes of a line's start that decide whether it is a marker: the marker and what follows.
const MARKER_HEAD: usize = 4;

/// One document of a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Document {
    /// Its position among the stream's documents, from 1 (documents that hold nothing but
    /// markers, comments and blank lines are not counted: they are empty).
    pub index: usize,
    /// The stream's line it starts on, from 1.
    pub line: usize,
    /// Its text (from its first line that is not blank or a comment), or why it is not read.
    pub text: Result<String, Unread>,
}

/// Why a document's text is not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unread {
    /// It is longer than the limit; its bytes were counted and dropped.
    #[error("the document is {size} bytes long, over the limit of {limit} bytes per document")]
    TooLarge {
        /// Its length in bytes.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// It is not UTF-8.
    #[error("the document is not UTF-8 text (at byte {offset} of it)")]
    NotUtf8 {
        /// Where in the document the first byte that is not UTF-8 is.
        offset: usize,
        /// The text with what is not UTF-8 replaced (U+FFFD): enough to tell which object
        /// the document is, never read as the object.
        lossy: String,
    },
}

/// What a line is, for splitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// `---`: a document starts, with (`true`) or without content on the marker's line.
    Start(bool),
    /// `...`: the document ends.
    End,
    /// A directive (`%...`).
    Directive,
    /// Blank, or only a comment.
    Blank,
    /// Anything else.
    Content,
}

impl Line {
    fn of(line: &[u8]) -> Self {
        let marker_end =
            |rest: &[u8]| matches!(rest.first(), None | Some(b' ' | b'\t' | b'\r' | b'\n'));
        if let Some(rest) = line.strip_prefix(b"---").filter(|r| marker_end(r)) {
            return Self::Start(!Self::blank(rest));
        }
        if line.strip_prefix(b"...").is_some_and(marker_end) {
            return Self::End;
        }
        if line.first() == Some(&b'%') {
            return Self::Directive;
        }
        if Self::blank(line) {
            Self::Blank
        } else {
            Self::Content
        }
    }

    /// Whether `line` holds nothing but white space and maybe a comment. (A `#` after text
    /// is a comment only after white space, but a line that starts with white space and
    /// then `#` is a comment line.)
    fn blank(line: &[u8]) -> bool {
        match line
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            None => true,
            Some(i) => line[i] == b'#',
        }
    }
}

/// The document being read.
#[derive(Default)]
struct Chunk {
    /// Its text so far (cleared once it is over the limit).
    text: Vec<u8>,
    /// Its length so far.
    size: u64,
    /// Its first line.
    line: usize,
    /// Its `---` has been read.
    started: bool,
    /// It holds something: directives, or content.
    holds: bool,
    /// It holds content (not only directives).
    content: bool,
}

/// The documents of a stream, read one at a time (see the module's documentation).
pub struct Documents<R> {
    reader: R,
    /// The longest document read; a longer one is counted and dropped.
    limit: usize,
    /// The line being read.
    line: Vec<u8>,
    /// Lines read so far.
    lines: usize,
    /// Documents given so far.
    given: usize,
    chunk: Chunk,
    /// The stream has ended (or failed).
    done: bool,
}

impl<R: BufRead> Documents<R> {
    /// The documents of `reader`, each at most `limit` bytes long.
    pub fn new(reader: R, limit: usize) -> Self {
        Self {
            reader,
            limit,
            line: Vec::new(),
            lines: 0,
            given: 0,
            chunk: Chunk::default(),
            done: false,
        }
    }

    /// Reads the next line into `self.line`, keeping at most `keep` bytes of it; returns its
    /// whole length (0 at the end of the stream).
    fn read_line(&mut self, keep: usize) -> io::Result<u64> {
        self.line.clear();
        let mut len = 0u64;
        let mut after_cr = false;
        loop {
            let buf = self.reader.fill_buf()?;
            let Some(&first) = buf.first() else {
                return Ok(len);
            };
            if after_cr {
                // `\r\n` is one line break.
                if first == b'\n' {
                    if self.line.len() < keep {
                        self.line.push(b'\n');
                    }
                    self.reader.consume(1);
                    len += 1;
                }
                return Ok(len);
            }
            let (take, ends) = match buf.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    after_cr = buf[i] == b'\r';
                    (i + 1, !after_cr)
                }
                None => (buf.len(), false),
            };
            let room = keep.saturating_sub(self.line.len()).min(take);
            self.line.extend_from_slice(&buf[..room]);
            self.reader.consume(take);
            len += take as u64;
            if ends {
                return Ok(len);
            }
        }
    }

    /// Ends the current document: gives it if it holds anything.
    fn take(&mut self) -> Option<Document> {
        let chunk = std::mem::take(&mut self.chunk);
        if !chunk.holds {
            return None;
        }
        self.given += 1;
        let text = if chunk.size > self.limit as u64 {
            Err(Unread::TooLarge {
                size: chunk.size,
                limit: self.limit,
            })
        } else {
            String::from_utf8(chunk.text).map_err(|e| Unread::NotUtf8 {
                offset: e.utf8_error().valid_up_to(),
                lossy: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })
        };
        Some(Document {
            index: self.given,
            line: chunk.line,
            text,
        })
    }

    /// Adds the line just read (`len` bytes long) to the current document.
    fn push(&mut self, len: u64, kind: Line) {
        let chunk = &mut self.chunk;
        if !chunk.holds && !chunk.started && kind == Line::Blank {
            // Blank lines and comments before a document are nobody's.
            return;
        }
        if chunk.size == 0 {
            chunk.line = self.lines;
        }
        chunk.size += len;
        if chunk.size <= self.limit as u64 {
            chunk.text.extend_from_slice(&self.line);
        } else {
            chunk.text = Vec::new();
        }
        match kind {
            Line::Start(content) => {
                chunk.started = true;
                chunk.holds |= content;
                chunk.content |= content;
            }
            Line::Directive if !chunk.started && !chunk.content => chunk.holds = true,
            Line::Directive | Line::Content => {
                chunk.holds = true;
                chunk.content = true;
            }
            Line::End | Line::Blank => {}
        }
    }
}

impl<R: BufRead> Iterator for Documents<R> {
    type Item = io::Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            // Keep the whole line while the document is under the limit, else its start
            // (the rest is only counted).
            let room = (self.limit as u64 + 1).saturating_sub(self.chunk.size);
            let keep = usize::try_from(room)
                .unwrap_or(usize::MAX)
                .max(BOM.len() + MARKER_HEAD);
            let len = match self.read_line(keep) {
                Ok(0) => {
                    self.done = true;
                    return self.take().map(Ok);
                }
                Ok(len) => len,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.lines += 1;
            if self.lines == 1 && self.line.starts_with(BOM) {
                self.line.drain(..BOM.len());
            }
            let kind = Line::of(&self.line);
            match kind {
                Line::Start(_) if self.chunk.started || self.chunk.content => {
                    let done = self.take();
                    self.push(len, kind);
                    if done.is_some() {
                        return done.map(Ok);
                    }
                }
                Line::End => {
                    self.push(len, kind);
                    if let Some(done) = self.take() {
                        return Some(Ok(done));
                    }
                }
                _ => self.push(len, kind),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text of each document of `text`, with its index and first line.
    fn split(text: &str, limit: usize) -> Vec<(usize, usize, Result<String, Unread>)> {
        Documents::new(text.as_bytes(), limit)
            .map(|d| d.unwrap())
            .map(|d| (d.index, d.line, d.text))
            .collect()
    }

    fn texts(text: &str) -> Vec<String> {
        split(text, usize::MAX / 2)
            .into_iter()
            .map(|(_, _, t)| t.unwrap())
            .collect()
    }

    #[test]
    fn splits_at_markers_and_keeps_their_lines() {
        assert_eq!(
            texts("a: 1\n---\nb: 2\n--- {c: 3}\n--- |\n  text\n...\n# after\n"),
            [
                "a: 1\n",
                "---\nb: 2\n",
                "--- {c: 3}\n",
                "--- |\n  text\n...\n"
            ]
        );
    }

    #[test]
    fn a_marker_is_three_characters_then_white_space_or_the_end_of_the_line() {
        assert_eq!(
            texts("---#x\n----\n--- \n---\tb\n...x\n"),
            ["---#x\n----\n", "---\tb\n...x\n"],
            "`--- ` holds nothing: an empty document"
        );
        // Indented, a marker is text (inside a block scalar, say).
        assert_eq!(texts("a: |\n  ---\n  ...\n"), ["a: |\n  ---\n  ...\n"]);
    }

    #[test]
    fn a_marker_at_column_zero_ends_a_block_scalar_as_yaml_says() {
        assert_eq!(
            texts("a: |\n  x\n---\n  y\n"),
            ["a: |\n  x\n", "---\n  y\n"]
        );
    }

    #[test]
    fn directives_belong_to_the_next_document() {
        assert_eq!(
            texts("a: 1\n...\n%YAML 1.2\n# c\n---\nb: 2\n"),
            ["a: 1\n...\n", "%YAML 1.2\n# c\n---\nb: 2\n"]
        );
    }

    #[test]
    fn empty_documents_are_not_given_nor_counted() {
        let docs = split("# head\n\n---\n# nothing\n---\n...\n---\nx: 1\n", 100);
        assert_eq!(docs, [(1, 7, Ok("---\nx: 1\n".to_owned()))]);
    }

    #[test]
    fn line_breaks_are_lf_crlf_or_cr_and_a_bom_may_start_the_stream() {
        assert_eq!(
            texts("\u{feff}a: 1\r\n---\r\nb: 2\r---\rc: 3"),
            ["a: 1\r\n", "---\r\nb: 2\r", "---\rc: 3"]
        );
    }

    #[test]
    fn a_document_over_the_limit_is_counted_not_kept() {
        let big = format!("---\nx: {}\n", "y".repeat(100));
        let text = format!("a: 1\n{big}---\nb: 2\n");
        let docs = split(&text, 50);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0], (1, 1, Ok("a: 1\n".to_owned())));
        assert_eq!(
            docs[1],
            (
                2,
                2,
                Err(Unread::TooLarge {
                    size: big.len() as u64,
                    limit: 50
                })
            )
        );
        assert_eq!(docs[2], (3, 4, Ok("---\nb: 2\n".to_owned())));
        // One long line, too: it is read in pieces.
        let line = format!("x: {}\n---\nb: 2\n", "y".repeat(10_000));
        let docs = split(&line, 50);
        assert!(matches!(
            docs[0].2,
            Err(Unread::TooLarge { size: 10_004, .. })
        ));
        assert_eq!(docs[1].2, Ok("---\nb: 2\n".to_owned()));
    }

    #[test]
    fn text_that_is_not_utf8_spoils_its_document_only() {
        let docs: Vec<_> = Documents::new(&b"a: \xff\n---\nb: 2\n"[..], 100)
            .map(|d| d.unwrap().text)
            .collect();
        assert_eq!(
            docs,
            [
                Err(Unread::NotUtf8 {
                    offset: 3,
                    lossy: "a: \u{FFFD}\n".to_owned()
                }),
                Ok("---\nb: 2\n".to_owned())
            ]
        );
    }

    #[test]
    fn small_reads_split_the_same() {
        // A reader that gives one byte at a time splits lines (and `\r\n`) across reads.
        let text = "a: 1\r\n---\r\nb: 2\r---\rc: 3\n...\n%TAG ! x\n--- d\n";
        let reader = io::BufReader::with_capacity(1, text.as_bytes());
        let slow: Vec<String> = Documents::new(reader, 1000)
            .map(|d| d.unwrap().text.unwrap())
            .collect();
        assert_eq!(slow, texts(text));
    }
}
