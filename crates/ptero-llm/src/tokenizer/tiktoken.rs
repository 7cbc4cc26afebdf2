use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use base64::Engine;

use super::Tokenizer;
use crate::{Error, Result};

/// Llama 3's pre-tokenization pattern.
const PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3 has 256 special tokens after the byte-pair vocabulary: these eleven, then
/// `<|reserved_special_token_N|>` for the rest.
const NAMED_SPECIAL: [&str; 11] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
];
const NUM_SPECIAL: usize = 256;

/// A Llama 3 `tokenizer.model`: one `base64(token) rank` line per byte-pair token.
pub struct TiktokenTokenizer {
    ranks: HashMap<Vec<u8>, u32>,
    decoder: Vec<Vec<u8>>,
    special: Vec<(String, u32)>,
    special_ids: HashMap<String, u32>,
    /// Longest byte-pair token: longer spans need no vocabulary lookup.
    max_token_len: usize,
    /// Longest special-token name.
    max_special_len: usize,
    regex: fancy_regex::Regex,
    pub(crate) max_input_bytes: usize,
}

impl TiktokenTokenizer {
    /// True when the first line looks like `<base64> <integer>`.
    pub fn looks_like(bytes: &[u8]) -> bool {
        let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let mut parts = line.split(|&b| b == b' ');
        let (Some(tok), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        !tok.is_empty()
            && tok
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            && !rank.is_empty()
            && rank.iter().all(|b| b.is_ascii_digit() || *b == b'\r')
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TiktokenTokenizer> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::Encoding("tiktoken file is not UTF-8".into()))?;
        // Ranks are dense (0..n), so a rank past the number of lines is corrupt; checking
        // keeps the decoder table proportional to the file rather than to a number in it.
        let lines = text.lines().filter(|l| !l.trim_end().is_empty()).count();
        let mut ranks = HashMap::new();
        let mut decoder: Vec<Vec<u8>> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let bad = || Error::Encoding(format!("line {}: expected '<base64> <rank>'", n + 1));
            let (tok, rank) = line.split_once(' ').ok_or_else(bad)?;
            let tok = base64::engine::general_purpose::STANDARD
                .decode(tok)
                .map_err(|_| bad())?;
            let rank: u32 = rank.parse().map_err(|_| bad())?;
            if rank as usize >= lines || rank as usize >= 1 << 24 {
                return Err(Error::Encoding(format!(
                    "line {}: rank {rank} is beyond the file's {lines} tokens",
                    n + 1
                )));
            }
            if decoder.len() <= rank as usize {
                decoder.resize(rank as usize + 1, Vec::new());
            }
            decoder[rank as usize] = tok.clone();
            ranks.insert(tok, rank);
        }
        if ranks.is_empty() {
            return Err(Error::Encoding("no tokens".into()));
        }
        let base = decoder.len() as u32;
        let special: Vec<(String, u32)> = (0..NUM_SPECIAL)
            .map(|i| {
                let name = match NAMED_SPECIAL.get(i) {
                    Some(n) => n.to_string(),
                    None => format!("<|reserved_special_token_{}|>", i - NAMED_SPECIAL.len() + 2),
                };
                (name, base + i as u32)
            })
            .collect();
        let regex = fancy_regex::Regex::new(PATTERN).map_err(|e| Error::Encoding(e.to_string()))?;
        Ok(TiktokenTokenizer {
            max_token_len: ranks.keys().map(Vec::len).max().unwrap_or(1),
            max_special_len: special.iter().map(|(s, _)| s.len()).max().unwrap_or(0),
            special_ids: special.iter().cloned().collect(),
            ranks,
            decoder,
            special,
            regex,
            max_input_bytes: crate::Limits::default().max_input_bytes,
        })
    }

    /// The rank of `piece[start..end]` as one token.
    fn rank(&self, piece: &[u8], start: usize, end: usize) -> Option<u32> {
        if end - start > self.max_token_len {
            return None;
        }
        self.ranks.get(&piece[start..end]).copied()
    }

    /// Byte-pair merges `piece` by rank, appending ids to `out`: tiktoken's algorithm
    /// (merge the adjacent pair whose concatenation ranks lowest, leftmost first) with a
    /// heap of candidate pairs over a linked list of parts, so a long run of one letter
    /// costs O(n log n) instead of O(n²).
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        if let Some(&r) = self.ranks.get(piece) {
            out.push(r);
            return Ok(());
        }
        let n = piece.len();
        // Parts start at every byte; `next[i]` is where the part starting at i ends.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut alive = vec![true; n];
        // Min-heap of (rank, left start, right end); stale entries are skipped when popped.
        let mut heap = BinaryHeap::new();
        for i in 0..n.saturating_sub(1) {
            if let Some(r) = self.rank(piece, i, i + 2) {
                heap.push(Reverse((r, i, i + 2)));
            }
        }
        while let Some(Reverse((_, left, end))) = heap.pop() {
            let mid = next[left];
            if !alive[left] || mid >= n || next[mid] != end {
                continue;
            }
            alive[mid] = false;
            next[left] = end;
            if end < n {
                prev[end] = Some(left);
            }
            if let Some(p) = prev[left] {
                if let Some(r) = self.rank(piece, p, end) {
                    heap.push(Reverse((r, p, end)));
                }
            }
            if end < n {
                let after = next[end];
                if let Some(r) = self.rank(piece, left, after) {
                    heap.push(Reverse((r, left, after)));
                }
            }
        }
        let mut start = 0;
        while start < n {
            let end = next[start];
            let part = &piece[start..end];
            let id = self.ranks.get(part).ok_or_else(|| {
                Error::Encoding(format!("byte sequence {part:?} is not in the vocabulary"))
            })?;
            out.push(*id);
            start = end;
        }
        Ok(())
    }

    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        for m in self.regex.find_iter(text) {
            let m = m.map_err(|e| Error::Encoding(e.to_string()))?;
            self.bpe(m.as_str().as_bytes(), out)?;
        }
        Ok(())
    }

    /// The first special token in `text`: (byte offset, length, id). Every special token
    /// is `<|...|>`, so one scan for `<|` with a bounded look for `|>` is linear in the
    /// text, however many special tokens it holds.
    fn next_special(&self, text: &str) -> Option<(usize, usize, u32)> {
        let bytes = text.as_bytes();
        let mut from = 0;
        while let Some(p) = find(&bytes[from..], b"<|") {
            let start = from + p;
            let window_end = bytes.len().min(start + self.max_special_len);
            let window = bytes.get(start + 2..window_end).unwrap_or(&[]);
            if let Some(q) = find(window, b"|>") {
                let end = start + 2 + q + 2;
                // Both ends are ASCII, so they are character boundaries.
                if let Some(&id) = text.get(start..end).and_then(|s| self.special_ids.get(s)) {
                    return Some((start, end - start, id));
                }
            }
            from = start + 1;
        }
        None
    }
}

impl TiktokenTokenizer {
    /// Special tokens follow the byte-pair ranks, in order.
    fn special_by_id(&self, id: u32) -> Option<&(String, u32)> {
        let i = (id as usize).checked_sub(self.decoder.len())?;
        self.special.get(i)
    }
}

/// The first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Tokenizer for TiktokenTokenizer {
    fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        super::check_input_len(text, self.max_input_bytes)?;
        let mut out = Vec::new();
        if bos {
            out.extend(self.bos_id());
        }
        // Special tokens written in the text (chat templates) become their ids.
        let mut rest = text;
        while !rest.is_empty() {
            match self.next_special(rest) {
                Some((p, len, id)) => {
                    self.encode_ordinary(&rest[..p], &mut out)?;
                    out.push(id);
                    rest = &rest[p + len..];
                }
                None => {
                    self.encode_ordinary(rest, &mut out)?;
                    break;
                }
            }
        }
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.decoder.get(id as usize) {
                Some(b) if !b.is_empty() => bytes.extend_from_slice(b),
                _ => match self.special_by_id(id) {
                    Some((s, _)) => bytes.extend_from_slice(s.as_bytes()),
                    None => {
                        return Err(Error::Encoding(format!(
                            "id {id} is outside the vocabulary"
                        )))
                    }
                },
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn vocab_size(&self) -> usize {
        self.decoder.len() + self.special.len()
    }

    fn bos_id(&self) -> Option<u32> {
        self.token_to_id("<|begin_of_text|>")
    }

    fn eos_id(&self) -> Option<u32> {
        self.token_to_id("<|end_of_text|>")
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(&id) = self.special_ids.get(token) {
            return Some(id);
        }
        self.ranks.get(token.as_bytes()).copied()
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        if let Some((s, _)) = self.special_by_id(id) {
            return Some(s.clone());
        }
        self.decoder
            .get(id as usize)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn kind(&self) -> &'static str {
        "tiktoken tokenizer.model (Llama 3)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: every byte, plus a few merges.
    fn toy() -> TiktokenTokenizer {
        let mut lines = String::new();
        let e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        for b in 0..=255u8 {
            lines.push_str(&format!("{} {}\n", e(&[b]), b));
        }
        for (i, t) in ["he", "ll", "hell", "hello", " w", " wor"]
            .iter()
            .enumerate()
        {
            lines.push_str(&format!("{} {}\n", e(t.as_bytes()), 256 + i));
        }
        TiktokenTokenizer::from_bytes(lines.as_bytes()).unwrap()
    }

    #[test]
    fn encodes_by_rank_and_round_trips() {
        let t = toy();
        assert!(TiktokenTokenizer::looks_like(b"aGU= 256\n"));
        assert!(!TiktokenTokenizer::looks_like(b"{\"model\": 1}"));
        let ids = t.encode("hello world", false).unwrap();
        assert_eq!(ids[0], 256 + 3); // "hello" is a whole token
        assert_eq!(ids[1], 256 + 4); // " w": " wo" is not a token, so " wor" cannot form
        assert_eq!(t.decode(&ids).unwrap(), "hello world");
        // Special tokens in the text, and BOS.
        let ids = t.encode("<|start_header_id|>hi<|eot_id|>", true).unwrap();
        assert_eq!(ids.first(), Some(&262));
        assert_eq!(ids[1], 262 + 6);
        assert_eq!(ids.last(), Some(&(262 + 9)));
        assert_eq!(
            t.decode(&ids).unwrap(),
            "<|begin_of_text|><|start_header_id|>hi<|eot_id|>"
        );
        assert_eq!(
            t.token_to_id("<|reserved_special_token_2|>"),
            Some(262 + 11)
        );
        assert_eq!(t.vocab_size(), 262 + 256);
        // Non-ASCII text goes through the byte tokens.
        let s = "héllo ✓";
        assert_eq!(t.decode(&t.encode(s, false).unwrap()).unwrap(), s);
        assert!(t.decode(&[99_999]).is_err());
    }

    /// The straightforward quadratic merge (what `bpe` did before), as a reference.
    fn reference_bpe(t: &TiktokenTokenizer, piece: &[u8]) -> Vec<u32> {
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..bounds.len().saturating_sub(2) {
                if let Some(&r) = t.ranks.get(&piece[bounds[i]..bounds[i + 2]]) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            match best {
                Some((_, i)) => {
                    bounds.remove(i + 1);
                }
                None => break,
            }
        }
        bounds
            .windows(2)
            .map(|w| t.ranks[&piece[w[0]..w[1]]])
            .collect()
    }

    /// A vocabulary with runs of one letter ("aa", "aaaa"...) and overlapping merges.
    fn runs() -> TiktokenTokenizer {
        let e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut lines = String::new();
        for b in 0..=255u8 {
            lines.push_str(&format!("{} {}\n", e(&[b]), b));
        }
        let merges = [
            "aa", "ab", "ba", "bb", "aaaa", "aba", "bab", "abab", "aab", "baa", "aaaaaaaa", "bbbb",
        ];
        for (i, t) in merges.iter().enumerate() {
            lines.push_str(&format!("{} {}\n", e(t.as_bytes()), 256 + i));
        }
        TiktokenTokenizer::from_bytes(lines.as_bytes()).unwrap()
    }

    #[test]
    fn heap_merge_matches_the_reference() {
        let t = runs();
        let mut seed = 12345u64;
        for len in (1..60).chain([200, 1000]) {
            for _ in 0..20 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if (seed >> 33).is_multiple_of(3) {
                            b'b'
                        } else {
                            b'a'
                        }
                    })
                    .collect();
                let mut got = Vec::new();
                t.bpe(&piece, &mut got).unwrap();
                assert_eq!(
                    got,
                    reference_bpe(&t, &piece),
                    "{:?}",
                    String::from_utf8_lossy(&piece)
                );
            }
        }
    }

    /// Long words and many special tokens: linear-ish, so 64 KB inputs take well under a
    /// second in release (the quadratic versions took tens of seconds).
    #[test]
    fn long_inputs_encode_quickly() {
        let t = runs();
        let cases = [
            "a".repeat(64 << 10),
            "ab".repeat(32 << 10),
            "<|eot_id|>".repeat(6 << 10),
            "<|".repeat(32 << 10),
            "<|x".repeat(20 << 10),
            " ".repeat(64 << 10),
            "a ".repeat(32 << 10),
        ];
        for text in &cases {
            let t0 = std::time::Instant::now();
            let ids = t.encode(text, false).unwrap();
            assert!(!ids.is_empty());
            assert_eq!(t.decode(&ids).unwrap(), *text);
            // Generous: the tests also run in debug on a busy machine.
            assert!(
                t0.elapsed().as_secs() < 10,
                "{:?}: {:?}",
                &text[..8],
                t0.elapsed()
            );
        }
        assert_eq!(
            t.encode(&"<|eot_id|>".repeat(1000), false).unwrap(),
            vec![256 + 12 + 9; 1000]
        );
    }

    #[test]
    fn hostile_files_and_inputs_are_errors() {
        let e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        // A rank far beyond the file's size would size the decoder table.
        let bad = [
            format!("{} 16777215\n", e(b"a")),
            format!("{} 0\n{} 5\n", e(b"a"), e(b"b")),
            format!("{} 4294967296\n", e(b"a")),
            format!("{} -1\n", e(b"a")),
            "!!!! 0\n".to_string(),
            String::new(),
        ];
        for file in &bad {
            assert!(
                TiktokenTokenizer::from_bytes(file.as_bytes()).is_err(),
                "{file}"
            );
        }
        // Text beyond the input limit is refused before any work.
        let mut t = runs();
        t.max_input_bytes = 10;
        let err = t
            .encode("a".repeat(11).as_str(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Limits::max_input_bytes"), "{err}");
        assert!(t.encode("a".repeat(10).as_str(), false).is_ok());
        // Ids past the vocabulary and the special tokens.
        assert!(t.decode(&[u32::MAX]).is_err());
        assert_eq!(t.id_to_token(u32::MAX), None);
    }
}
