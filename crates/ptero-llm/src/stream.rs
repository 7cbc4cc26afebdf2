//! Turns generated ids into text pieces as they arrive, holding back a token that ends in
//! the middle of a UTF-8 character (or of a multi-token glyph) until it is complete.

use crate::tokenizer::Tokenizer;
use crate::Result;

/// Most tokens held back waiting for the rest of a character (UTF-8 needs at most 4).
const MAX_HELD: usize = 8;

/// Incremental detokenizer: decodes a sliding window so that each piece is what the
/// whole text gains, including spaces that depend on the previous token.
pub struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStream {
    /// `context` is the last prompt token, if any: it decides e.g. leading spaces.
    pub fn new(context: Option<u32>) -> TextStream {
        let ids: Vec<u32> = context.into_iter().collect();
        let n = ids.len();
        TextStream {
            ids,
            prefix_offset: 0,
            read_offset: n,
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &dyn Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        // A model can keep producing bytes that never complete a character (or tokens
        // that decode to nothing); past a few tokens, move on rather than re-decoding an
        // ever longer window for every new token.
        let held = self.ids.len() - self.read_offset;
        let complete = full.len() > prefix.len() && !full.ends_with('\u{FFFD}');
        if complete || held > MAX_HELD {
            let piece = match full.strip_prefix(prefix.as_str()) {
                Some(p) => p.to_string(),
                // Decoding is not always prefix-stable; fall back to the new characters.
                None => full.chars().skip(prefix.chars().count()).collect(),
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok((!piece.is_empty()).then_some(piece));
        }
        Ok(None)
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self, tokenizer: &dyn Tokenizer) -> Result<Option<String>> {
        if self.read_offset >= self.ids.len() {
            return Ok(None);
        }
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.read_offset = self.ids.len();
        Ok(full
            .strip_prefix(prefix.as_str())
            .map(String::from)
            .filter(|s| !s.is_empty()))
    }
}
