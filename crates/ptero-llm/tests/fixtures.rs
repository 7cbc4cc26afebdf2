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
