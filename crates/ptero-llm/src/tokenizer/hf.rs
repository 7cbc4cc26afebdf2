use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use base64::Engine;

use super::Tokenizer;
use crate::limits::read_bounded;
use crate::{Error, Limits, Result};

/// A Hugging Face `tokenizer.json`, with `tokenizer_config.json` / `chat_template.jinja`
/// from the same folder when present (special tokens and the chat template).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    template: Option<String>,
    max_input_bytes: usize,
}

fn token_field(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// The chat template of a `tokenizer_config.json`: a string, or a list of named templates
/// (the one called "default" is used).
fn template_field(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(String::from)),
        _ => None,
    }
}

/// Runs a call into the `tokenizers` crate, turning a panic (it has `expect`s and unchecked
/// indexing on file contents) into an error instead of unwinding through the caller.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Encoding(format!(
            "{what} failed inside the tokenizers library (malformed tokenizer.json?)"
        )))
    })
}

/// Reads companion file `name` next to the tokenizer, if it exists.
fn companion(dir: &Path, name: &str, limits: &Limits) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    read_bounded(&path, limits.max_config_file_bytes)
        .map(Some)
        .map_err(|e| Error::Tokenizer {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

impl HfTokenizer {
    /// Parses `tokenizer.json` bytes; `path` locates the companion files.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<HfTokenizer> {
        HfTokenizer::from_bytes_with_limits(bytes, path, &Limits::default())
    }

    /// Like [`HfTokenizer::from_bytes`], under `limits` (companion file sizes, longest
    /// text encoded).
    pub fn from_bytes_with_limits(
        bytes: &[u8],
        path: &Path,
        limits: &Limits,
    ) -> Result<HfTokenizer> {
        // Parsed once for our checks; the `tokenizers` crate parses the bytes itself.
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Error::Encoding(e.to_string()))?;
        check_precompiled_charsmaps(&json)?;
        let growth = check_growth(&json)?;
        let mut inner = guarded("reading tokenizer.json", || {
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Encoding(e.to_string()))
        })?;
        // Generation feeds the prompt as is: padding to a length named in the file (which
        // could be huge) or truncating the prompt would only do harm.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Encoding(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        // A malformed tokenizer_config.json is ignored, as before: it only adds special
        // token names and a template, and many files in the wild have quirks.
        let config: Option<serde_json::Value> = companion(dir, "tokenizer_config.json", limits)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut template = match companion(dir, "chat_template.jinja", limits)? {
            Some(b) => Some(String::from_utf8(b).map_err(|_| Error::Tokenizer {
                path: dir.join("chat_template.jinja").display().to_string(),
                message: "the chat template is not UTF-8".into(),
            })?),
            None => None,
        };
        let (mut bos, mut eos) = (None, None);
        if let Some(c) = &config {
            if template.is_none() {
                template = template_field(c);
            }
            bos = token_field(c, "bos_token").and_then(|t| inner.token_to_id(&t));
            eos = token_field(c, "eos_token").and_then(|t| inner.token_to_id(&t));
        }
        Ok(HfTokenizer {
            inner,
            bos,
            eos,
            template,
            // The `tokenizers` crate normalizes the whole text in memory: bound what the
            // normalizer can grow it to, not just the text itself.
            max_input_bytes: limits
                .max_input_bytes
                .min((MAX_NORMALIZED_BYTES as f64 / growth) as usize),
        })
    }
}

/// Most bytes normalization may produce from one text (the input limit shrinks for
/// tokenizers whose normalizers can grow text a lot). The `tokenizers` crate keeps an
/// alignment pair (16 bytes) per normalized byte and copies the text at each step, so the
/// memory it takes is some 35 times this: 16 MiB of normalized text stays near 560 MiB,
/// and still admits 1.4 MiB prompts through Llama-style chains (12x) and ~930 KiB through
/// the worst normalizer (NFKC, 18x).
const MAX_NORMALIZED_BYTES: usize = 16 << 20;

/// Largest worst-case growth accepted for a normalizer or decoder chain.
const MAX_GROWTH: f64 = 65536.0;

/// Worst-case factor by which one normalizer or decoder (a JSON node) can grow text.
fn growth_of(v: &serde_json::Value, depth: usize) -> f64 {
    use serde_json::Value;
    let Value::Object(o) = v else {
        return 1.0;
    };
    if depth > 16 {
        return f64::INFINITY;
    }
    let str_len = |k: &str| o.get(k).and_then(Value::as_str).map_or(0, str::len) as f64;
    // The `tokenizers` crate may read a node by its fields whatever its "type" says (a
    // mislabelled node with a "normalizers" list runs as a sequence), so every reading
    // the fields allow is estimated and the largest kept.
    let sequence: f64 = ["normalizers", "decoders"]
        .iter()
        .filter_map(|k| o.get(*k).and_then(Value::as_array))
        .flatten()
        .map(|c| growth_of(c, depth + 1))
        .product();
    let replace = if o.contains_key("content") || o.contains_key("pattern") {
        let content = str_len("content");
        match o.get("pattern") {
            Some(Value::Object(p)) => match p.get("String").and_then(Value::as_str) {
                Some(s) if !s.is_empty() => (content / s.len() as f64).ceil().max(1.0),
                // An empty string or a regex may match between every two characters.
                _ => content + 1.0,
            },
            _ => content + 1.0,
        }
    } else {
        1.0
    };
    let prepend = 1.0 + str_len("prepend");
    let by_type: f64 = match o.get("type").and_then(Value::as_str).unwrap_or("") {
        "Sequence" | "Replace" | "Prepend" | "Strip" | "StripAccents" | "ByteFallback" | "Fuse"
        | "" => 1.0,
        // Unicode normalization forms and charsmaps expand a character to at most ~18.
        "NFKC" | "NFKD" | "Precompiled" => 18.0,
        _ => 4.0,
    };
    by_type.max(sequence).max(replace).max(prepend)
}

/// Most steps in a normalizer or decoder chain (real ones have fewer than 10).
const MAX_STEPS: usize = 32;

/// Nodes of a normalizer or decoder chain, nested sequences included (capped).
fn steps_of(v: &serde_json::Value) -> usize {
    let Some(o) = v.as_object() else {
        return 0;
    };
    1 + ["normalizers", "decoders"]
        .iter()
        .filter_map(|k| o.get(*k).and_then(serde_json::Value::as_array))
        .flatten()
        .take(MAX_STEPS + 1)
        .map(steps_of)
        .fold(0usize, |a, b| a.saturating_add(b).min(MAX_STEPS + 1))
}

/// Refuses normalizer and decoder chains that could grow text without bound (e.g. many
/// `Replace` steps with an empty pattern, each doubling the text) and returns the
/// normalizer's worst-case growth.
fn check_growth(json: &serde_json::Value) -> Result<f64> {
    let mut normalizer = 1.0;
    for (key, out) in [("normalizer", Some(&mut normalizer)), ("decoder", None)] {
        // Each step is a pass over the (grown) text: long chains take seconds per prompt.
        let steps = json.get(key).map_or(0, steps_of);
        if steps > MAX_STEPS {
            return Err(Error::Encoding(format!(
                "the {key} has {steps} steps (more than {MAX_STEPS}); refused"
            )));
        }
        let g = json.get(key).map_or(1.0, |v| growth_of(v, 0));
        if g.is_nan() || g > MAX_GROWTH {
            return Err(Error::Encoding(format!(
                "the {key} could grow text {} times (more than {MAX_GROWTH}); refused",
                if g < 1e15 {
                    format!("{g:.0}")
                } else {
                    "more than 10^15".into()
                }
            )));
        }
        if let Some(out) = out {
            *out = g;
        }
    }
    Ok(normalizer)
}

/// Largest `precompiled_charsmap` accepted, decoded (real ones are a few hundred KiB).
const MAX_CHARSMAP_BYTES: usize = 4 << 20;

/// Checks every SentencePiece `precompiled_charsmap` in a `tokenizer.json` before the
/// `tokenizers` crate sees it: that crate (through `spm_precompiled`) allocates a table
/// sized by the blob's first word, panics on a blob it cannot parse, and indexes the trie
/// without bounds checks while normalizing.
fn check_precompiled_charsmaps(json: &serde_json::Value) -> Result<()> {
    let mut stack = vec![json];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(c) = o.get("precompiled_charsmap") {
                    check_charsmap(c)?;
                }
                stack.extend(o.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    Ok(())
}

fn check_charsmap(value: &serde_json::Value) -> Result<()> {
    let bad = |m: String| Error::Encoding(format!("precompiled_charsmap: {m}"));
    let text = value
        .as_str()
        .ok_or_else(|| bad("expected a base64 string".into()))?;
    if text.len() / 4 * 3 > MAX_CHARSMAP_BYTES {
        return Err(bad(format!(
            "{} bytes of base64, more than the limit of {MAX_CHARSMAP_BYTES} bytes",
            text.len()
        )));
    }
    // Canonical base64 only, so that the older decoder in `spm_precompiled` agrees.
    let blob = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| bad(format!("invalid base64: {e}")))?;
    let (head, rest) = blob
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("shorter than its 4-byte header".into()))?;
    let trie_bytes = u32::from_le_bytes(*head) as usize;
    if trie_bytes > rest.len() {
        return Err(bad(format!(
            "the trie claims {trie_bytes} bytes but only {} follow",
            rest.len()
        )));
    }
    let units: Vec<usize> = rest[..trie_bytes / 4 * 4]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let normalized = std::str::from_utf8(&rest[trie_bytes / 4 * 4..])
        .map_err(|_| bad("the normalized strings are not UTF-8".into()))?;
    check_trie(&units, normalized).map_err(bad)
}

/// Walks the double-array trie as `spm_precompiled`'s `common_prefix_search` does for any
/// key a normalizer can give it (up to 5 non-zero bytes), checking every index it would
/// use and every replacement offset into `normalized`.
fn check_trie(units: &[usize], normalized: &str) -> std::result::Result<(), String> {
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let label = |u: usize| u & ((1 << 31) | 0xFF);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let first = *units.first().ok_or("the trie is empty")?;
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(offset(first), 0u8)];
    while let Some((node, depth)) = todo.pop() {
        if depth >= 5 || !seen.insert(node) {
            continue;
        }
        for c in 1..=255usize {
            let pos = node ^ c;
            let unit = *units
                .get(pos)
                .ok_or_else(|| format!("trie index {pos} is outside its {} units", units.len()))?;
            if label(unit) != c {
                continue;
            }
            let child = pos ^ offset(unit);
            if has_leaf(unit) {
                let leaf = *units.get(child).ok_or_else(|| {
                    format!("trie leaf {child} is outside its {} units", units.len())
                })?;
                let at = leaf & ((1 << 31) - 1);
                if at > normalized.len() || !normalized.is_char_boundary(at) {
                    return Err(format!(
                        "replacement offset {at} is not inside the {}-byte normalized strings",
                        normalized.len()
                    ));
                }
            }
            todo.push((child, depth + 1));
        }
    }
    Ok(())
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        super::check_input_len(text, self.max_input_bytes)?;
        let enc = guarded("encoding", || {
            self.inner
                .encode(text, false)
                .map_err(|e| Error::Encoding(e.to_string()))
        })?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        guarded("decoding", || {
            self.inner
                .decode(ids, false)
                .map_err(|e| Error::Encoding(e.to_string()))
        })
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    fn chat_template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    fn kind(&self) -> &'static str {
        "Hugging Face tokenizer.json"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer.json with the given normalizer and padding settings.
    fn json(normalizer: &str, padding: &str) -> String {
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":{padding},"added_tokens":[],
            "normalizer":{normalizer},"pre_tokenizer":{{"type":"Whitespace"}},
            "post_processor":null,"decoder":null,
            "model":{{"type":"WordLevel","vocab":{{"a":0,"b":1,"[UNK]":2}},"unk_token":"[UNK]"}}}}"#
        )
    }

    fn charsmap(trie: &[u32], normalized: &[u8]) -> String {
        let mut blob = ((trie.len() * 4) as u32).to_le_bytes().to_vec();
        for u in trie {
            blob.extend_from_slice(&u.to_le_bytes());
        }
        blob.extend_from_slice(normalized);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
        format!(r#"{{"type":"Precompiled","precompiled_charsmap":"{b64}"}}"#)
    }

    /// A 512-unit double-array trie mapping "A" to "a": the root's children live in the
    /// first 256 units, the leaf for "A" at unit 256.
    fn a_to_lower() -> Vec<u32> {
        let mut trie = vec![0u32; 512];
        let child = 0x100u32;
        trie[0x41] = ((0x41 ^ child) << 10) | (1 << 8) | 0x41;
        trie[child as usize] = 0; // offset 0 into "a\0"
        trie
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ptero-llm-hf-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Each `Replace` of an empty pattern puts its content between every two characters:
    /// a chain of them grew a short prompt exponentially until the process aborted.
    #[test]
    fn normalizers_that_explode_text_are_refused() {
        let step = r#"{"type":"Replace","pattern":{"String":""},"content":"xy"}"#;
        let chain = format!(
            r#"{{"type":"Sequence","normalizers":[{}]}}"#,
            vec![step; 20].join(",")
        );
        let e = HfTokenizer::from_bytes(json(&chain, "null").as_bytes(), &dir().join("t.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("could grow text 3486784401 times"), "{e}");
        // The same chain under another "type" still runs as a sequence: still refused.
        let mislabelled = chain.replacen("Sequence", "Unigram", 1);
        let e =
            HfTokenizer::from_bytes(json(&mislabelled, "null").as_bytes(), &dir().join("t.json"))
                .err()
                .unwrap()
                .to_string();
        assert!(e.contains("could grow text 3486784401 times"), "{e}");
        // Too many steps, however harmless each: every step is a pass over the text.
        let strips = format!(
            r#"{{"type":"Sequence","normalizers":[{}]}}"#,
            vec![r#"{"type":"Strip"}"#; 40].join(",")
        );
        let e = HfTokenizer::from_bytes(json(&strips, "null").as_bytes(), &dir().join("t.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("steps (more than 32)"), "{e}");
        // Real chains (Llama/Mistral style) load, with the input limit scaled down at most
        // modestly.
        let real = r#"{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},
            {"type":"Replace","pattern":{"String":" "},"content":"▁"}]}"#;
        let t =
            HfTokenizer::from_bytes(json(real, "null").as_bytes(), &dir().join("t.json")).unwrap();
        assert!(t.max_input_bytes >= 1 << 20, "{}", t.max_input_bytes);
        assert!(t.encode("a b", false).is_ok());
    }

    #[test]
    fn a_valid_charsmap_normalizes() {
        let j = json(&charsmap(&a_to_lower(), b"a\0"), "null");
        let t = HfTokenizer::from_bytes(j.as_bytes(), &dir().join("tokenizer.json")).unwrap();
        assert_eq!(t.encode("A b", false).unwrap(), vec![0, 1]);
    }

    /// Each of these used to abort (a 16 GiB table), panic while loading (`expect`) or
    /// panic on the first encode (unchecked trie indexing); now loading fails clearly.
    #[test]
    fn hostile_charsmaps_are_errors() {
        let huge = {
            let b64 = base64::engine::general_purpose::STANDARD.encode([0xff, 0xff, 0xff, 0xff]);
            format!(r#"{{"type":"Precompiled","precompiled_charsmap":"{b64}"}}"#)
        };
        let mut leaf_out = a_to_lower();
        leaf_out[0x41] = ((0x41 ^ 0x3000) << 10) | (1 << 8) | 0x41;
        let mut bad_offset = a_to_lower();
        bad_offset[0x100] = 7;
        let mut mid_char = a_to_lower();
        mid_char[0x100] = 1;
        let cases = [
            (huge, "claims"),
            (
                r#"{"type":"Precompiled","precompiled_charsmap":"@@@@"}"#.to_string(),
                "base64",
            ),
            (
                r#"{"type":"Precompiled","precompiled_charsmap":"QQ"}"#.to_string(),
                "base64",
            ),
            (
                r#"{"type":"Precompiled","precompiled_charsmap":5}"#.to_string(),
                "string",
            ),
            (
                r#"{"type":"Precompiled","precompiled_charsmap":""}"#.to_string(),
                "header",
            ),
            (charsmap(&[], b""), "empty"),
            (charsmap(&[0], b""), "outside"),
            (charsmap(&leaf_out, b"a\0"), "outside"),
            (charsmap(&bad_offset, b"a\0"), "replacement offset"),
            (charsmap(&mid_char, "é\0".as_bytes()), "replacement offset"),
            (charsmap(&a_to_lower(), b"\xff\0"), "UTF-8"),
            (
                format!(
                    r#"{{"type":"Sequence","normalizers":[{{"type":"NFC"}},{}]}}"#,
                    charsmap(&[0], b"")
                ),
                "outside",
            ),
        ];
        for (normalizer, why) in cases {
            let j = json(&normalizer, "null");
            let e = HfTokenizer::from_bytes(j.as_bytes(), &dir().join("tokenizer.json"))
                .err()
                .unwrap_or_else(|| panic!("{normalizer} loaded"))
                .to_string();
            assert!(
                e.contains("precompiled_charsmap") && e.contains(why),
                "{normalizer}: {e}"
            );
        }
    }

    /// Padding to a length named in the file used to allocate that many ids per encode.
    #[test]
    fn padding_from_the_file_is_ignored() {
        let padding = r#"{"strategy":{"Fixed":1000000000000},"direction":"Right","pad_to_multiple_of":null,"pad_id":2,"pad_type_id":0,"pad_token":"[UNK]"}"#;
        let j = json("null", padding);
        let t = HfTokenizer::from_bytes(j.as_bytes(), &dir().join("tokenizer.json")).unwrap();
        assert_eq!(t.encode("a b", false).unwrap(), vec![0, 1]);
    }

    #[test]
    fn companion_files_and_inputs_are_bounded() {
        let d = dir().join("companions");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("chat_template.jinja"), "x".repeat(200)).unwrap();
        let j = json("null", "null");
        let limits = Limits {
            max_config_file_bytes: 100,
            max_input_bytes: 3,
            ..Limits::default()
        };
        let e =
            HfTokenizer::from_bytes_with_limits(j.as_bytes(), &d.join("tokenizer.json"), &limits)
                .err()
                .unwrap()
                .to_string();
        assert!(
            e.contains("chat_template.jinja") && e.contains("100 bytes"),
            "{e}"
        );
        std::fs::write(d.join("chat_template.jinja"), "{{ messages }}").unwrap();
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"chat_template":[{"name":"tool_use","template":"T"},{"name":"default","template":"D"}]}"#,
        )
        .unwrap();
        let t =
            HfTokenizer::from_bytes_with_limits(j.as_bytes(), &d.join("tokenizer.json"), &limits)
                .unwrap();
        assert_eq!(t.chat_template(), Some("{{ messages }}"));
        let e = t.encode("a b a", false).unwrap_err().to_string();
        assert!(e.contains("Limits::max_input_bytes"), "{e}");
        std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
        let t = HfTokenizer::from_bytes(j.as_bytes(), &d.join("tokenizer.json")).unwrap();
        assert_eq!(t.chat_template(), Some("D"));
    }
}
