//! Hostile tokenizer files and chat templates: seeds of each format (a Hugging Face
//! `tokenizer.json` built from JSON, a tiktoken file, a SentencePiece protobuf), damaged
//! at the structure level (JSON nodes swapped for other component types, huge numbers,
//! long strings, catastrophic regexes) or at the byte level; templates assembled from
//! fragments that loop, double strings and recurse.

use std::path::Path;

use ptero_llm::chat::{ChatTemplate, Message};
use ptero_llm::Limits;
use serde_json::{json, Value};

use crate::gen::mutate_bytes;
use crate::rng::Rng;

fn hf_seed(rng: &mut Rng) -> Value {
    let pre = rng
        .pick(&[
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            json!({"type": "Whitespace"}),
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
            json!({"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false}),
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "Punctuation", "behavior": "Isolated"}]}),
            Value::Null,
        ])
        .clone();
    let norm = rng
        .pick(&[
            Value::Null,
            json!({"type": "NFKC"}),
            json!({"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
            json!({"type": "Prepend", "prepend": "▁"}),
            json!({"type": "Precompiled", "precompiled_charsmap": "AAAAAA=="}),
        ])
        .clone();
    let model = rng
        .pick(&[
            json!({"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                   "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                   "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "ab": 5, "Ġ": 6, "c": 7},
                   "merges": ["a b"]}),
            json!({"type": "WordPiece", "unk_token": "<unk>", "continuing_subword_prefix": "##",
                   "max_input_chars_per_word": 100, "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "##b": 4}}),
            json!({"type": "WordLevel", "unk_token": "<unk>", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}}),
            json!({"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["<s>", 0.0], ["</s>", 0.0], ["a", -1.0], ["b", -2.0]], "byte_fallback": false}),
        ])
        .clone();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": norm,
        "pre_tokenizer": pre,
        "post_processor": rng.pick(&[Value::Null, json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}})]).clone(),
        "decoder": rng.pick(&[Value::Null, json!({"type": "ByteLevel"}), json!({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})]).clone(),
        "model": model
    })
}

fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => json!(u64::MAX),
        1 => json!(-1),
        2 => json!(i64::MIN),
        3 => json!(1e300),
        4 => json!("a".repeat(1 + rng.below(5000))),
        5 => json!(""),
        6 => json!([]),
        7 => json!({}),
        8 => Value::Null,
        9 => json!(rng.pick(&[
            "BPE",
            "WordPiece",
            "WordLevel",
            "Unigram",
            "Sequence",
            "Split",
            "Replace",
            "Precompiled",
            "ByteLevel",
            "Metaspace",
            "Strip",
            "TemplateProcessing",
            "NFD"
        ])),
        10 => {
            json!({"Regex": rng.pick(&["(a|a)*$", "((a+)+)+b", "[", "\\", "(?<=a)b", ".*.*.*.*=", ""])})
        }
        _ => json!(1u64 << 40),
    }
}

fn mutate_json(rng: &mut Rng, v: &mut Value, depth: usize) {
    let replace = depth > 0 && rng.one_in(5);
    if replace {
        *v = hostile_value(rng);
        return;
    }
    match v {
        Value::Object(map) if !map.is_empty() => {
            let k = rng.below(map.len());
            if let Some((_, child)) = map.iter_mut().nth(k) {
                mutate_json(rng, child, depth + 1);
            }
            if rng.one_in(8) {
                map.insert("type".into(), hostile_value(rng));
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let k = rng.below(items.len());
            mutate_json(rng, &mut items[k], depth + 1);
            if rng.one_in(6) {
                let dup = items[k].clone();
                let n = rng.below(200);
                items.extend(std::iter::repeat_n(dup, n));
            }
        }
        _ => *v = hostile_value(rng),
    }
}

fn tiktoken_seed(rng: &mut Rng) -> Vec<u8> {
    // base64 of single bytes, ranks in order; then damaged lines.
    let mut s = String::new();
    for (i, tok) in ["YQ==", "Yg==", "Yw==", "YWI=", "YWJj", "IA=="]
        .iter()
        .enumerate()
    {
        let rank = if rng.one_in(10) {
            rng.pick(&["18446744073709551615", "4294967295", "99999999", "0"])
                .to_string()
        } else {
            i.to_string()
        };
        s.push_str(&format!("{tok} {rank}\n"));
    }
    s.into_bytes()
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
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

fn sentencepiece_seed(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let pieces: &[(&str, f32, u64)] = &[
        ("<unk>", 0.0, 2),
        ("<s>", 0.0, 3),
        ("</s>", 0.0, 3),
        ("▁", -1.0, 1),
        ("a", -2.0, 1),
        ("b", -3.0, 1),
        ("ab", -1.5, 1),
        ("<0x41>", 0.0, 6),
    ];
    for &(p, score, ty) in pieces {
        let mut piece = Vec::new();
        piece.push(0x0a);
        varint(&mut piece, p.len() as u64);
        piece.extend_from_slice(p.as_bytes());
        piece.push(0x15);
        piece.extend_from_slice(&score.to_le_bytes());
        piece.push(0x18);
        varint(&mut piece, if rng.one_in(12) { rng.next_u64() } else { ty });
        out.push(0x0a);
        varint(&mut out, piece.len() as u64);
        out.extend_from_slice(&piece);
    }
    // trainer_spec { model_type: BPE, unk/bos/eos ids }
    let mut spec = vec![0x18];
    varint(&mut spec, 2);
    for (field, v) in [(40u64, 0u64), (41, 1), (42, 2)] {
        varint(&mut spec, field << 3);
        varint(&mut spec, if rng.one_in(10) { u64::MAX } else { v });
    }
    out.push(0x12);
    varint(&mut out, spec.len() as u64);
    out.extend_from_slice(&spec);
    out
}

/// A tokenizer file of one of the three formats, damaged.
pub fn tokenizer_case(rng: &mut Rng) -> Vec<u8> {
    let mut bytes = match rng.below(4) {
        0 | 1 => {
            let mut v = hf_seed(rng);
            for _ in 0..rng.below(4) {
                mutate_json(rng, &mut v, 0);
            }
            v.to_string().into_bytes()
        }
        2 => tiktoken_seed(rng),
        _ => sentencepiece_seed(rng),
    };
    if rng.one_in(4) {
        mutate_bytes(rng, &mut bytes);
    }
    bytes
}

/// Loads `bytes` as a tokenizer, encodes a hostile text and decodes the ids back.
pub fn run_tokenizer(bytes: &[u8], text_seed: u64) -> Result<(), String> {
    let limits = Limits {
        max_input_bytes: 1 << 16,
        ..Limits::default()
    };
    // A directory that does not exist: no companion files.
    let path = Path::new("/nonexistent-ptero-fuzz/tokenizer.json");
    let t = ptero_llm::tokenizer::from_bytes_with_limits(bytes, path, &limits)
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::new(text_seed);
    let text = hostile_text(&mut rng);
    let ids = t.encode(&text, rng.one_in(2)).map_err(|e| e.to_string())?;
    let mut ids = ids;
    if rng.one_in(4) {
        ids.push(u32::MAX);
        ids.push(t.vocab_size() as u32);
    }
    let _ = t.decode(&ids).map_err(|e| e.to_string())?;
    let _ = (
        t.token_to_id("<s>"),
        t.id_to_token(u32::MAX),
        t.bos_id(),
        t.eos_id(),
    );
    Ok(())
}

fn hostile_text(rng: &mut Rng) -> String {
    const PARTS: [&str; 12] = [
        "a", "ab", " ", "<s>", "</s>", "é", "\u{0}", "😀", "\u{FFFD}", "abc ", "\n\n", "<0x41>",
    ];
    let n = rng.below(64);
    let mut s = String::new();
    for _ in 0..n {
        let p = rng.pick(&PARTS);
        let k = if rng.one_in(10) {
            1 + rng.below(2000)
        } else {
            1
        };
        for _ in 0..k {
            s.push_str(p);
        }
    }
    s
}

/// A chat template assembled from fragments, some of them hostile.
pub fn template_case(rng: &mut Rng) -> String {
    const FRAGMENTS: [&str; 22] = [
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
        "{{ bos_token }}",
        "{% if add_generation_prompt %}assistant:{% endif %}",
        "{% set s = 'ab' %}{% for i in range(64) %}{% set s = s ~ s %}{% endfor %}{{ s }}",
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ 'a' * 1000000000 }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{{ messages | tojson }}",
        "{{ raise_exception('nope') }}",
        "{{ range(10**12) | list | length }}",
        "{% set ns = namespace(x=[]) %}{% for i in range(10000) %}{% set ns.x = ns.x + ns.x + [i] %}{% endfor %}",
        "{{ messages[0]['content'] | replace('', 'xxxxxxxx') }}",
        "{{ 'x' | indent(1000000000) }}",
        "{{ (messages * 100000) | length }}",
        "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
        "{{ '%s' | format('a' * 100000) }}",
        "{{ messages | batch(1000000000) | list }}",
        "{% if %}",
        "{{ }}",
        "{{ 1 / 0 }}",
        "{{ messages[999999999] }}",
        "{{ eos_token }}",
    ];
    let n = 1 + rng.below(4);
    (0..n)
        .map(|_| *rng.pick(&FRAGMENTS))
        .collect::<Vec<_>>()
        .join("")
}

/// Renders `source` over a short conversation.
pub fn run_template(source: &str) -> Result<(), String> {
    let mut t = ChatTemplate::from_source(source, "<s>", "</s>");
    // Smaller than the defaults, so hostile templates hit them fast.
    t.set_limits(&Limits {
        template_fuel: 100_000,
        template_output_bytes: 1 << 20,
        template_work_bytes: 8 << 20,
        ..Limits::default()
    });
    let messages = [
        Message::new("system", "be brief"),
        Message::new("user", "hi"),
    ];
    t.render(&messages, true)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
