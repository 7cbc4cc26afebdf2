//! Programs with hostile metadata methods or `forward` signatures: each is refused at load
//! with an error that names the problem (no panic, no huge allocation).

use ptero::Program;
use ptero_format::fb::{ScalarType as FbType, TensorShapeDynamism};
use ptero_format::writer::{MethodSpec, ProgramBuilder, TensorData, TensorSpec, ValueSpec};
use ptero_llm::{LlmMetadata, TextGenerator};

fn tensor(dtype: FbType, sizes: &[i32], dynamic: bool, data: TensorData) -> ValueSpec {
    ValueSpec::Tensor(TensorSpec {
        scalar_type: dtype,
        sizes: sizes.to_vec(),
        dim_order: Vec::new(),
        dynamism: if dynamic {
            TensorShapeDynamism::DYNAMIC_BOUND
        } else {
            TensorShapeDynamism::STATIC
        },
        data,
    })
}

fn planned(offset: u64) -> TensorData {
    TensorData::Planned {
        memory_id: 1,
        offset,
    }
}

/// `forward(tokens [1, seq], pos [1]) -> logits`, with no instructions.
fn forward(tokens: &[i32], logits_dtype: FbType, logits: &[i32]) -> impl FnOnce(&mut MethodSpec) {
    let (tokens, logits) = (tokens.to_vec(), logits.to_vec());
    move |m| {
        let t = m.value(tensor(FbType::LONG, &tokens, true, planned(0)));
        let p = m.value(tensor(FbType::LONG, &[1], false, planned(256)));
        let huge = logits.iter().map(|&d| d as i64).product::<i64>() > 1 << 20;
        let data = if huge { TensorData::None } else { planned(512) };
        let l = m.value(tensor(logits_dtype, &logits, false, data));
        m.planned_buffers.push(512 + (1 << 23));
        m.inputs = vec![t, p];
        m.outputs = vec![l];
    }
}

fn program(meta: Vec<(&str, ValueSpec)>, fwd: impl FnOnce(&mut MethodSpec)) -> Program {
    let mut b = ProgramBuilder::new().method("forward", fwd);
    for (name, v) in meta {
        b = b.method(name, move |m| {
            let i = m.value(v);
            m.outputs = vec![i];
        });
    }
    Program::from_bytes(&b.finish()).unwrap()
}

fn good_forward() -> impl FnOnce(&mut MethodSpec) {
    forward(&[1, 31], FbType::FLOAT, &[1, 512])
}

#[test]
fn a_well_formed_program_loads() {
    let p = program(
        vec![("get_max_seq_len", ValueSpec::Int(32))],
        good_forward(),
    );
    let g = TextGenerator::from_program(&p, None).unwrap();
    assert_eq!(g.vocab_size(), 512);
    assert_eq!(g.context_len(), 32);
}

#[test]
fn hostile_metadata_is_refused() {
    let longs = |n: usize, v: i64| {
        tensor(
            FbType::LONG,
            &[n as i32],
            false,
            TensorData::Constant(
                std::iter::repeat_n(v, n)
                    .flat_map(i64::to_le_bytes)
                    .collect(),
            ),
        )
    };
    let cases: Vec<(Vec<(&str, ValueSpec)>, &str)> = vec![
        (
            vec![("get_max_seq_len", ValueSpec::Int(-1))],
            "must be positive",
        ),
        (
            vec![("get_max_seq_len", ValueSpec::Int(0))],
            "must be positive",
        ),
        (
            vec![("get_max_context_len", ValueSpec::Int(i64::MIN))],
            "must be positive",
        ),
        (vec![("get_eos_ids", longs(5000, 2))], "more than the 4096"),
        (vec![("get_eos_ids", longs(3, -7))], "eos id -7"),
        (
            vec![("get_eos_ids", ValueSpec::Int(1 << 40))],
            "eos id 1099511627776",
        ),
        (vec![("get_bos_id", ValueSpec::Int(1 << 40))], "bos id"),
        (
            vec![("get_max_seq_len", ValueSpec::Double(32.0))],
            "returned a Double",
        ),
        (
            vec![(
                "get_eos_ids",
                tensor(FbType::FLOAT, &[1], false, TensorData::Constant(vec![0; 4])),
            )],
            "expected int64",
        ),
    ];
    for (meta, why) in cases {
        let name = format!("{meta:?}");
        let p = program(meta, good_forward());
        let e = LlmMetadata::read(&p).unwrap_err().to_string();
        assert!(e.contains(why), "{name}: {e}");
        assert!(TextGenerator::from_program(&p, None).is_err());
    }
}

#[test]
fn odd_but_harmless_metadata_loads() {
    // A vocabulary of 0 or less means "unknown": the logits' width is used.
    for v in [0, -5, 1 << 40] {
        let p = program(vec![("get_vocab_size", ValueSpec::Int(v))], good_forward());
        assert_eq!(
            TextGenerator::from_program(&p, None).unwrap().vocab_size(),
            512
        );
    }
    let p = program(
        vec![("get_max_context_len", ValueSpec::Int(i64::MAX))],
        good_forward(),
    );
    let g = TextGenerator::from_program(&p, None).unwrap();
    assert_eq!(g.context_len(), i64::MAX as usize);
}

#[test]
fn hostile_forward_signatures_are_refused() {
    let cases: [(&[i32], FbType, &[i32], &str); 6] = [
        (&[1, 31], FbType::FLOAT, &[1, 0], "vocabulary of 1 to"),
        (&[1, 31], FbType::FLOAT, &[1, 1 << 30], "Limits::max_vocab"),
        (&[1, 31], FbType::FLOAT, &[], "vocabulary of 1 to"),
        (&[1, 31], FbType::LONG, &[1, 512], "not supported"),
        (&[1, 0], FbType::FLOAT, &[1, 512], "takes no tokens"),
        (&[31], FbType::FLOAT, &[1, 512], "token ids [1, seq]"),
    ];
    for (tokens, dtype, logits, why) in cases {
        let p = program(vec![], forward(tokens, dtype, logits));
        let e = TextGenerator::from_program(&p, None)
            .err()
            .unwrap_or_else(|| panic!("{why}: loaded"))
            .to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}
