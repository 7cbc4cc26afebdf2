use std::collections::HashMap;

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
    regex: fancy_regex::Regex,
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
            if rank as usize >= 1 << 24 {
                return Err(Error::Encoding(format!(
                    "line {}: rank {rank} is implausibly large",
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
        let special = (0..NUM_SPECIAL)
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
            ranks,
            decoder,
            special,
            regex,
        })
    }

    /// Byte-pair merges `piece` by rank (tiktoken's algorithm), appending ids to `out`.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        if let Some(&r) = self.ranks.get(piece) {
            out.push(r);
            return Ok(());
        }
        // Part boundaries; merge the adjacent pair whose concatenation ranks lowest.
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..bounds.len().saturating_sub(2) {
                if let Some(&r) = self.ranks.get(&piece[bounds[i]..bounds[i + 2]]) {
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
        for w in bounds.windows(2) {
            let part = &piece[w[0]..w[1]];
            let id = self.ranks.get(part).ok_or_else(|| {
                Error::Encoding(format!("byte sequence {part:?} is not in the vocabulary"))
            })?;
            out.push(*id);
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
}

impl Tokenizer for TiktokenTokenizer {
    fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if bos {
            out.extend(self.bos_id());
        }
        // Special tokens written in the text (chat templates) become their ids.
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .special
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, s.len(), *id)))
                .min_by_key(|&(p, len, _)| (p, usize::MAX - len));
            match next {
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
                _ => match self.special.iter().find(|(_, i)| *i == id) {
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
        if let Some((_, id)) = self.special.iter().find(|(s, _)| s == token) {
            return Some(*id);
        }
        self.ranks.get(token.as_bytes()).copied()
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        if let Some((s, _)) = self.special.iter().find(|(_, i)| *i == id) {
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
}
