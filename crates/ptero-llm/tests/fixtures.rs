//! Greedy generation on small Llama programs from the official `export_llm` (KV cache,
//! `llama::custom_sdpa` + `llama::update_cache`), against ids recorded by
//! `python/export_llm_fixture.py`.

use std::path::{Path, PathBuf};

use ptero_llm::{GenerationConfig, StopReason, TextGenerator};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/llm")
        .join(name)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(name: &str) {
    let d = dir(name);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap();
    let mut cases = vec![(ids(&expected["prompt_ids"]), ids(&expected["greedy_ids"]))];
    for c in expected["extra_cases"].as_array().into_iter().flatten() {
        cases.push((ids(&c["prompt_ids"]), ids(&c["greedy_ids"])));
    }
    let mut gen = TextGenerator::load(d.join("model.pte"), None::<&Path>).unwrap();
    let meta = gen.metadata().clone();
    assert_eq!(
        meta.max_seq_len as u64,
        expected["max_seq_len"].as_u64().unwrap()
    );
    assert_eq!(
        meta.max_context_len as u64,
        expected["max_context_len"].as_u64().unwrap()
    );
    assert_eq!(meta.eos_ids, ids(&expected["eos_ids"]));
    for (prompt, want) in cases {
        gen.reset();
        let config = GenerationConfig {
            max_new_tokens: Some(want.len()),
            ignore_eos: true,
            ..Default::default()
        };
        let got = gen.generate_ids(&prompt, &config, |_, _| {}).unwrap();
        assert_eq!(got.ids, want, "{name}: prompt {prompt:?}");
        assert_eq!(got.stop, StopReason::MaxTokens);
        assert_eq!(got.stats.prompt_tokens, prompt.len());
    }
}

#[test]
fn tiny_dynamic_shape_matches_reference() {
    check("tiny");
}

#[test]
fn tiny_static_shape_matches_reference() {
    check("tiny_static");
}

/// int8 dynamic activations x int4 group-wise weights in the XNNPACK delegate, 4-bit
/// embeddings outside it: the official runtime's ids, for all 64 tokens.
#[test]
fn tiny_8da4w_xnnpack_matches_the_official_runtime() {
    check("tiny_8da4w_xnnpack");
}

/// Group 64, 8-bit per-channel embeddings, and an int8 per-token KV cache
/// (`llama::custom_quantized_sdpa` over `quantize_per_token` caches).
#[test]
fn tiny_8da4w_quantized_kv_cache_matches_the_official_runtime() {
    check("tiny_8da4w_g64_kvq");
}

#[test]
fn stops_at_eos_and_at_the_end_of_the_context() {
    let d = dir("tiny");
    let mut gen = TextGenerator::load(d.join("model.pte"), None::<&Path>).unwrap();
    let prompt = [1, 17, 345, 90, 211, 5, 402, 77, 130, 256, 499, 3];
    let g = gen
        .generate_ids(
            &prompt,
            &GenerationConfig {
                max_new_tokens: Some(64),
                ..Default::default()
            },
            |_, _| {},
        )
        .unwrap();
    // The reference continuation reaches EOS (id 2) as its 57th token.
    assert_eq!(g.stop, StopReason::Eos);
    assert_eq!(g.ids.last(), Some(&2));
    gen.reset();
    let g = gen
        .generate_ids(
            &prompt,
            &GenerationConfig {
                ignore_eos: true,
                ..Default::default()
            },
            |_, _| {},
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::Context);
    assert_eq!(
        prompt.len() + g.ids.len(),
        gen.metadata().max_context_len + 1
    );
    // A prompt longer than the remaining context is refused with a clear message.
    let e = gen
        .generate_ids(&[1; 10], &GenerationConfig::default(), |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("context"), "{e}");
    gen.reset();
    let e = gen
        .generate_ids(&[100_000], &GenerationConfig::default(), |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the model's vocabulary"), "{e}");
}

fn greedy(gen: &mut TextGenerator, prompt: &[u32], n: usize) -> Vec<u32> {
    gen.reset();
    let config = GenerationConfig {
        max_new_tokens: Some(n),
        ignore_eos: true,
        ..Default::default()
    };
    gen.generate_ids(prompt, &config, |_, _| {})
        .unwrap_or_else(|e| panic!("{} ids: {e}", prompt.len()))
        .ids
}

/// The dynamic-shape program's token input is bounded by [1, 31] (export_llm traces
/// max_seq_len - 1): prompts of 32 to 128 ids used to fail with "shape [1, 32] does not
/// fit the program's bound [1, 31]". Chunked prefill must agree with the static program,
/// which takes one token at a time.
#[test]
fn long_prompts_prefill_within_the_input_bound() {
    let mut dynamic = TextGenerator::load(dir("tiny").join("model.pte"), None::<&Path>).unwrap();
    let mut by_token =
        TextGenerator::load(dir("tiny_static").join("model.pte"), None::<&Path>).unwrap();
    let prompt: Vec<u32> = (0..128u32).map(|i| 1 + (i * 37 + 11) % 500).collect();
    for len in [31, 32, 33, 62, 100, 120] {
        let p = &prompt[..len];
        let got = greedy(&mut dynamic, p, 8);
        assert_eq!(got.len(), 8);
        assert_eq!(got, greedy(&mut by_token, p, 8), "{len} ids");
    }
    // A prompt that fills the whole context still runs: it yields one token.
    let g = greedy(&mut dynamic, &prompt, 8);
    assert_eq!(g.len(), 1);
}

/// Replaces the only little-endian `from` in the first `within` bytes of `bytes`.
fn patch_i64(bytes: &mut [u8], within: usize, from: i64, to: i64) {
    let hits: Vec<usize> = bytes[..within]
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == from.to_le_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{from} occurs {} times", hits.len());
    bytes[hits[0]..hits[0] + 8].copy_from_slice(&to.to_le_bytes());
}

/// A program whose metadata claims a larger context than its KV cache (4096 vs 128) used
/// to fail past position 128 with an `et_view` (or `index`) shape error; the cache size is
/// read from the program, and running out of it is reported as such, before executing.
#[test]
fn the_kv_cache_bounds_the_context_whatever_the_metadata_says() {
    for name in ["tiny", "tiny_static"] {
        let mut bytes = std::fs::read(dir(name).join("model.pte")).unwrap();
        patch_i64(&mut bytes, 32 << 10, 128, 4096);
        let program = ptero::Program::from_bytes(&bytes).unwrap();
        let mut gen = TextGenerator::from_program(&program, None).unwrap();
        assert_eq!(gen.metadata().max_context_len, 4096);
        assert_eq!(gen.context_len(), 128);
        let g = gen
            .generate_ids(
                &[1, 2, 3],
                &GenerationConfig {
                    max_new_tokens: Some(500),
                    ignore_eos: true,
                    ..Default::default()
                },
                |_, _| {},
            )
            .unwrap();
        assert_eq!(g.stop, StopReason::Context, "{name}");
        assert_eq!(3 + g.ids.len(), 129, "{name}");
        gen.reset();
        let e = gen
            .generate_ids(&[1; 130], &GenerationConfig::default(), |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "the prompt and generated tokens (130) exceed the model's context of 128 tokens"
            ),
            "{name}: {e}"
        );
    }
}

/// User-given ids are checked against the vocabulary, never passed to the program.
#[test]
fn out_of_vocabulary_ids_are_named() {
    let gen = TextGenerator::load(dir("tiny").join("model.pte"), None::<&Path>).unwrap();
    assert_eq!(gen.vocab_size(), 512);
    assert_eq!(gen.token_ids(&[0, 511]).unwrap(), vec![0, 511]);
    for bad in [-1, 512, i64::MIN, i64::MAX, 1 << 32] {
        let e = gen.token_ids(&[1, bad]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("token id {bad} ")) && e.contains("vocabulary of 512"),
            "{e}"
        );
    }
}

/// Sampler settings that cannot mean anything are errors, not panics or silent greedy.
#[test]
fn invalid_sampler_settings_are_errors() {
    let mut gen = TextGenerator::load(dir("tiny").join("model.pte"), None::<&Path>).unwrap();
    let cases = [
        (f32::NAN, None, None, "temperature"),
        (-1.0, None, None, "temperature"),
        (f32::INFINITY, None, None, "temperature"),
        (1.0, Some(0), None, "top-k"),
        (1.0, None, Some(0.0), "top-p"),
        (1.0, None, Some(f32::NAN), "top-p"),
        (1.0, None, Some(1.5), "top-p"),
    ];
    for (temperature, top_k, top_p, what) in cases {
        let config = GenerationConfig {
            max_new_tokens: Some(2),
            sampler: ptero_llm::SamplerConfig {
                temperature,
                top_k,
                top_p,
                seed: 1,
            },
            ignore_eos: false,
        };
        let e = gen
            .generate_ids(&[1, 2], &config, |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{e}");
    }
    // Huge settings are fine: top-k past the vocabulary, a huge max_new_tokens.
    let config = GenerationConfig {
        max_new_tokens: Some(usize::MAX),
        sampler: ptero_llm::SamplerConfig {
            temperature: 1e30,
            top_k: Some(usize::MAX),
            top_p: Some(1.0),
            seed: u64::MAX,
        },
        ignore_eos: true,
    };
    gen.reset();
    let g = gen.generate_ids(&[1, 2], &config, |_, _| {}).unwrap();
    assert_eq!(g.stop, StopReason::Context);
}

/// Decode reads every weight once per token, but one row of the embedding table: the
/// tiny model's linear and norm weights are 131,392 f32 (params.json), plus its rope
/// tables; the 512 x 64 embedding table is left out.
#[test]
fn weight_bytes_count_the_weights_a_decode_step_reads() {
    let gen = TextGenerator::load(dir("tiny").join("model.pte"), None::<&Path>).unwrap();
    let weights = 131_392 * 4;
    let got = gen.weight_bytes();
    assert!((weights..weights + 16 * 1024).contains(&got), "{got} bytes");
    // 8da4w: 131,072 int4 weights in the delegate and their group scales, far under the
    // f32 model's bytes.
    let q = TextGenerator::load(dir("tiny_8da4w_xnnpack").join("model.pte"), None::<&Path>)
        .unwrap()
        .weight_bytes();
    assert!((65_536..100_000).contains(&q), "{q} bytes");
}
