use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::Tokenizer;
use crate::{Error, Result};

/// SentencePiece's whitespace marker.
const SPACE: char = '\u{2581}';

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// A Llama 2 `tokenizer.model`: a SentencePiece `ModelProto` (BPE, byte fallback).
pub struct SentencePieceTokenizer {
    pieces: Vec<(String, f32, PieceType)>,
    index: HashMap<String, u32>,
    /// Ids of the `<0xNN>` byte pieces.
    bytes: [Option<u32>; 256],
    unk: u32,
    bos: Option<u32>,
    eos: Option<u32>,
    add_dummy_prefix: bool,
    /// Longest mergeable piece, in bytes: longer spans need no vocabulary lookup.
    max_piece_len: usize,
    pub(crate) max_input_bytes: usize,
}

/// A candidate merge of the parts from `left` to `end` into piece `id`. The heap's top is
/// the highest score, then the leftmost pair, as in SentencePiece.
struct Pair {
    score: f32,
    left: usize,
    end: usize,
    id: u32,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
            .then(other.end.cmp(&self.end))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

/// A minimal protobuf reader: just what `ModelProto` needs.
struct Proto<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Proto<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| Error::Encoding("truncated varint".into()))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Encoding("varint too long".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| Error::Encoding("truncated field".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => {
                return Err(Error::Encoding(format!(
                    "unsupported protobuf wire type {w}"
                )))
            }
        };
        Ok(Some((key >> 3, f)))
    }
}

impl SentencePieceTokenizer {
    /// True when the file starts like a `ModelProto` with pieces.
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.first() == Some(&0x0a) && SentencePieceTokenizer::from_bytes(bytes).is_ok()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SentencePieceTokenizer> {
        let mut pieces = Vec::new();
        let (mut model_type, mut unk, mut bos, mut eos) = (2u64, 0i64, 1i64, 2i64);
        let mut add_dummy_prefix = true;
        let mut p = Proto { buf: bytes, pos: 0 };
        while let Some((field, value)) = p.next()? {
            match (field, value) {
                (1, Field::Bytes(b)) => {
                    let mut q = Proto { buf: b, pos: 0 };
                    let (mut piece, mut score, mut ty) = (String::new(), 0f32, PieceType::Normal);
                    while let Some((f, v)) = q.next()? {
                        match (f, v) {
                            (1, Field::Bytes(s)) => {
                                piece = String::from_utf8(s.to_vec())
                                    .map_err(|_| Error::Encoding("piece is not UTF-8".into()))?
                            }
                            (2, Field::Fixed32(bits)) => score = f32::from_bits(bits),
                            (3, Field::Varint(t)) => {
                                ty = match t {
                                    2 => PieceType::Unknown,
                                    3 => PieceType::Control,
                                    4 => PieceType::UserDefined,
                                    5 => PieceType::Unused,
                                    6 => PieceType::Byte,
                                    _ => PieceType::Normal,
                                }
                            }
                            _ => {}
                        }
                    }
                    pieces.push((piece, score, ty));
                }
                (2, Field::Bytes(b)) => {
                    let mut q = Proto { buf: b, pos: 0 };
                    while let Some((f, v)) = q.next()? {
                        match (f, v) {
                            (3, Field::Varint(t)) => model_type = t,
                            (40, Field::Varint(v)) => unk = v as i32 as i64,
                            (41, Field::Varint(v)) => bos = v as i32 as i64,
                            (42, Field::Varint(v)) => eos = v as i32 as i64,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(b)) => {
                    let mut q = Proto { buf: b, pos: 0 };
                    while let Some((f, v)) = q.next()? {
                        if let (3, Field::Varint(v)) = (f, v) {
                            add_dummy_prefix = v != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if pieces.is_empty() {
            return Err(Error::Encoding("no pieces".into()));
        }
        if model_type != 2 {
            return Err(Error::Encoding(format!(
                "SentencePiece model type {model_type} is not supported (only BPE, as in Llama 2)"
            )));
        }
        let n = pieces.len() as i64;
        let id = |v: i64| (0..n).contains(&v).then_some(v as u32);
        let mut index = HashMap::new();
        let mut byte_ids = [None; 256];
        for (i, (piece, _, ty)) in pieces.iter().enumerate() {
            if *ty == PieceType::Byte {
                if let Some(hex) = piece.strip_prefix("<0x").and_then(|s| s.strip_suffix('>')) {
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        byte_ids[b as usize] = Some(i as u32);
                    }
                }
            } else {
                index.entry(piece.clone()).or_insert(i as u32);
            }
        }
        let max_piece_len = pieces
            .iter()
            .filter(|(_, _, ty)| matches!(ty, PieceType::Normal | PieceType::UserDefined))
            .map(|(p, _, _)| p.len())
            .max()
            .unwrap_or(0);
        Ok(SentencePieceTokenizer {
            max_piece_len,
            max_input_bytes: crate::Limits::default().max_input_bytes,
            pieces,
            index,
            bytes: byte_ids,
            unk: id(unk).unwrap_or(0),
            bos: id(bos),
            eos: id(eos),
            add_dummy_prefix,
        })
    }

    fn mergeable(&self, s: &str) -> Option<(u32, f32)> {
        if s.len() > self.max_piece_len {
            return None;
        }
        let &id = self.index.get(s)?;
        let (_, score, ty) = &self.pieces[id as usize];
        matches!(ty, PieceType::Normal | PieceType::UserDefined).then_some((id, *score))
    }
}

impl Tokenizer for SentencePieceTokenizer {
    fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        super::check_input_len(text, self.max_input_bytes)?;
        let mut out = Vec::new();
        if bos {
            out.extend(self.bos);
        }
        if text.is_empty() {
            return Ok(out);
        }
        let mut norm = String::with_capacity(text.len() + 3);
        if self.add_dummy_prefix {
            norm.push(SPACE);
        }
        norm.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        // Start from characters; characters outside the vocabulary fall back to bytes.
        // SentencePiece's BPE (bpe_model.cc): repeatedly merge the adjacent pair whose
        // concatenation is the highest-scoring piece, leftmost first. A heap of candidate
        // pairs over a linked list of parts keeps this O(n log n) on the whole text.
        let starts: Vec<usize> = norm.char_indices().map(|(i, _)| i).collect();
        let n = starts.len();
        let end_of = |i: usize| starts.get(i + 1).copied().unwrap_or(norm.len());
        // Parts are identified by their first character; `next[i]` is the character after
        // the part starting at i (n at the end).
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut ids: Vec<Option<u32>> = (0..n)
            .map(|i| {
                self.mergeable(&norm[starts[i]..end_of(i)])
                    .map(|(id, _)| id)
            })
            .collect();
        let byte_at = |i: usize| starts.get(i).copied().unwrap_or(norm.len());
        let pair = |left: usize, end: usize| -> Option<Pair> {
            let (id, score) = self.mergeable(&norm[byte_at(left)..byte_at(end)])?;
            Some(Pair {
                score,
                left,
                end,
                id,
            })
        };
        let mut heap = BinaryHeap::new();
        for i in 0..n.saturating_sub(1) {
            heap.extend(pair(i, i + 2));
        }
        while let Some(Pair { left, end, id, .. }) = heap.pop() {
            // Stale: one side was merged into something else since this pair was queued.
            let mid = next[left];
            if !alive[left] || mid >= n || next[mid] != end {
                continue;
            }
            alive[mid] = false;
            next[left] = end;
            ids[left] = Some(id);
            if end < n {
                prev[end] = Some(left);
            }
            if let Some(p) = prev[left] {
                heap.extend(pair(p, end));
            }
            if end < n {
                heap.extend(pair(left, next[end]));
            }
        }
        let mut i = 0;
        while i < n {
            match ids[i] {
                Some(id) => out.push(id),
                None => {
                    for b in norm[starts[i]..byte_at(next[i])].bytes() {
                        out.push(self.bytes[b as usize].unwrap_or(self.unk));
                    }
                }
            }
            i = next[i];
        }
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let (piece, _, ty) = self
                .pieces
                .get(id as usize)
                .ok_or_else(|| Error::Encoding(format!("id {id} is outside the vocabulary")))?;
            match ty {
                PieceType::Control | PieceType::Unused => {}
                PieceType::Byte => {
                    if let Some(b) = self.bytes.iter().position(|&x| x == Some(id)) {
                        bytes.push(b as u8);
                    }
                }
                PieceType::Unknown => bytes.extend_from_slice(" \u{2047} ".as_bytes()),
                _ => bytes.extend_from_slice(piece.replace(SPACE, " ").as_bytes()),
            }
        }
        let s = String::from_utf8_lossy(&bytes).into_owned();
        // The dummy prefix space is not part of the text.
        Ok(match (self.add_dummy_prefix, s.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_string(),
            _ => s,
        })
    }

    fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.pieces.get(id as usize).map(|p| p.0.clone())
    }

    fn kind(&self) -> &'static str {
        "SentencePiece tokenizer.model (Llama 2)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    /// A ModelProto with the usual specials, byte pieces and a few merges.
    fn toy() -> Vec<u8> {
        toy_with(&[
            ("\u{2581}", -1.0),
            ("h", -2.0),
            ("i", -2.0),
            ("hi", -0.5),
            ("\u{2581}hi", -0.1),
            ("t", -3.0),
        ])
    }

    fn toy_with(merges: &[(&str, f32)]) -> Vec<u8> {
        let mut pieces: Vec<(String, f32, u64)> = vec![
            ("<unk>".into(), 0.0, 2),
            ("<s>".into(), 0.0, 3),
            ("</s>".into(), 0.0, 3),
        ];
        for b in 0..=255u8 {
            pieces.push((format!("<0x{b:02X}>"), 0.0, 6));
        }
        for &(p, s) in merges {
            pieces.push((p.into(), s, 1));
        }
        let mut out = Vec::new();
        for (p, s, t) in pieces {
            let mut m = Vec::new();
            bytes_field(1, p.as_bytes(), &mut m);
            varint(2 << 3 | 5, &mut m);
            m.extend_from_slice(&f32::to_le_bytes(s));
            varint(3 << 3, &mut m);
            varint(t, &mut m);
            bytes_field(1, &m, &mut out);
        }
        let mut trainer = Vec::new();
        varint(3 << 3, &mut trainer);
        varint(2, &mut trainer);
        bytes_field(2, &trainer, &mut out);
        out
    }

    #[test]
    fn bpe_by_score_with_byte_fallback() {
        let bytes = toy();
        assert!(SentencePieceTokenizer::looks_like(&bytes));
        let t = SentencePieceTokenizer::from_bytes(&bytes).unwrap();
        let hi = t.token_to_id("\u{2581}hi").unwrap();
        assert_eq!(t.encode("hi", true).unwrap(), vec![1, hi]);
        // "é" is not a piece: its two UTF-8 bytes become byte pieces.
        let ids = t.encode("hi é", false).unwrap();
        assert_eq!(ids[0], hi);
        assert_eq!(&ids[2..], &[3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&ids).unwrap(), "hi é");
        assert_eq!(t.decode(&[1, hi, 2]).unwrap(), "hi");
        assert!(t.decode(&[10_000]).is_err());
        assert!(SentencePieceTokenizer::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    }

    /// The straightforward quadratic merge (what `encode` did before), as a reference.
    fn reference_encode(t: &SentencePieceTokenizer, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut norm = String::new();
        if t.add_dummy_prefix {
            norm.push(SPACE);
        }
        norm.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let mut parts: Vec<(String, Option<u32>)> = norm
            .chars()
            .map(|c| {
                let s = c.to_string();
                let id = t.mergeable(&s).map(|(i, _)| i);
                (s, id)
            })
            .collect();
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in 0..parts.len().saturating_sub(1) {
                let joined = format!("{}{}", parts[i].0, parts[i + 1].0);
                if let Some((id, score)) = t.mergeable(&joined) {
                    if best.is_none_or(|(s, _, _)| score > s) {
                        best = Some((score, i, id));
                    }
                }
            }
            let Some((_, i, id)) = best else { break };
            let next = parts.remove(i + 1);
            parts[i].0.push_str(&next.0);
            parts[i].1 = Some(id);
        }
        let mut out = Vec::new();
        for (s, id) in parts {
            match id {
                Some(id) => out.push(id),
                None => out.extend(s.bytes().map(|b| t.bytes[b as usize].unwrap_or(t.unk))),
            }
        }
        out
    }

    /// Pieces with equal scores and overlaps, so that the merge order matters.
    fn merges() -> SentencePieceTokenizer {
        let pieces = [
            ("\u{2581}", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("aa", -1.0),
            ("ab", -1.0),
            ("ba", -1.5),
            ("aaa", -0.5),
            ("aab", -0.5),
            ("\u{2581}a", -0.8),
            ("\u{2581}b", -0.8),
            ("\u{2581}\u{2581}", -0.2),
            ("abab", -0.1),
            ("bb", -3.0),
            ("aaaa", -0.4),
        ];
        SentencePieceTokenizer::from_bytes(&toy_with(&pieces)).unwrap()
    }

    #[test]
    fn heap_merge_matches_the_reference() {
        let t = merges();
        let mut seed = 99u64;
        for len in (0..50).chain([300]) {
            for _ in 0..20 {
                let text: String = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ['a', 'a', 'b', ' ', 'é', 'c'][(seed >> 33) as usize % 6]
                    })
                    .collect();
                assert_eq!(
                    t.encode(&text, false).unwrap(),
                    reference_encode(&t, &text),
                    "{text:?}"
                );
            }
        }
    }

    /// Merging over the whole text is O(n log n): 64 KB takes well under a second in
    /// release (the quadratic version took 30+ s).
    #[test]
    fn long_inputs_encode_quickly() {
        let t = merges();
        let words = ["ab", "aab", "ba", "bab", "aaaa", "b"];
        let mut text = String::new();
        let mut i = 0;
        while text.len() < 64 << 10 {
            text.push_str(words[i % words.len()]);
            text.push(if i % 7 == 0 { 'é' } else { ' ' });
            i += 1;
        }
        for text in [
            text,
            "a".repeat(64 << 10),
            "ab".repeat(32 << 10),
            " ".repeat(64 << 10),
        ] {
            let t0 = std::time::Instant::now();
            let ids = t.encode(&text, true).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), text);
            // Generous: the tests also run in debug on a busy machine.
            assert!(t0.elapsed().as_secs() < 10, "{:?}", t0.elapsed());
        }
        let mut t = merges();
        t.max_input_bytes = 4;
        let err = t.encode("abcde", false).unwrap_err().to_string();
        assert!(err.contains("Limits::max_input_bytes"), "{err}");
    }
}
