//! The interpreter on hand-built programs: kernel calls, moves, jumps, frees, delegates,
//! the instruction budget, and the errors a user sees for bad programs and bad inputs.

use std::sync::Arc;

use ptero_format::fb::{ScalarType as FbType, TensorShapeDynamism};
use ptero_format::writer::{
    DelegateSpec, InstrSpec, MethodSpec, ProgramBuilder, TensorData, TensorSpec, ValueSpec,
};
use ptero_runtime::{
    Backend, BackendInitContext, BackendRegistry, CompileSpec, DelegateHandle, EValue, Error,
    Program, Tensor,
};

fn planned(m: &mut MethodSpec, sizes: &[i32], offset: u64) -> i32 {
    m.value(ValueSpec::Tensor(TensorSpec::new(
        FbType::FLOAT,
        sizes,
        TensorData::Planned {
            memory_id: 1,
            offset,
        },
    )))
}

/// `out = a + b` on [2, 3] float tensors, all planned in one 96-byte buffer.
fn add_method(m: &mut MethodSpec) {
    let a = planned(m, &[2, 3], 0);
    let b = planned(m, &[2, 3], 32);
    let out = planned(m, &[2, 3], 64);
    let alpha = m.value(ValueSpec::Int(1));
    m.planned_buffers.push(96);
    m.inputs = vec![a, b];
    m.outputs = vec![out];
    m.kernel("aten::add", "out", &[a, b, alpha, out, out]);
}

fn f32s(v: &[f32], shape: &[usize]) -> EValue {
    EValue::Tensor(Tensor::from_slice(v, shape).unwrap())
}

fn kernels() -> ptero_core::KernelRegistry {
    ptero_kernels::portable()
}

#[test]
fn runs_a_kernel_and_keeps_running() {
    let bytes = ProgramBuilder::new().method("forward", add_method).finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let meta = program.method_meta("forward").unwrap();
    assert_eq!(
        (meta.num_inputs(), meta.num_outputs(), meta.planned_bytes()),
        (2, 1, 96)
    );
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    for k in 0..3 {
        let x = k as f32;
        m.set_inputs(&[
            f32s(&[x; 6], &[2, 3]),
            f32s(&[1., 2., 3., 4., 5., 6.], &[2, 3]),
        ])
        .unwrap();
        m.execute().unwrap();
        let out = m.output(0).unwrap().into_tensor().unwrap();
        assert_eq!(
            out.to_vec::<f32>().unwrap(),
            [1., 2., 3., 4., 5., 6.].map(|v| v + x)
        );
    }
    assert_eq!(m.executions(), 3);
}

#[test]
fn input_errors_name_what_was_expected() {
    let bytes = ProgramBuilder::new().method("forward", add_method).finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    let good = f32s(&[0.; 6], &[2, 3]);
    let cases: Vec<(Vec<EValue>, &str)> = vec![
        (vec![good.clone()], "takes 2 inputs, got 1"),
        (
            vec![
                good.clone(),
                EValue::Tensor(Tensor::from_slice(&[0i64; 6], &[2, 3]).unwrap()),
            ],
            "expected a float32 tensor, got int64",
        ),
        (
            vec![good.clone(), f32s(&[0.; 3], &[3])],
            "expected a 2-d tensor",
        ),
        (
            vec![good.clone(), f32s(&[0.; 4], &[2, 2])],
            "expected shape [2, 3] (static), got [2, 2]",
        ),
        (
            vec![good.clone(), EValue::Int(3)],
            "expected a float32 tensor, got Int",
        ),
    ];
    for (inputs, want) in cases {
        let e = m.set_inputs(&inputs).unwrap_err().to_string();
        assert!(e.contains(want), "'{e}' does not contain '{want}'");
    }
    // Executing before every input is set is an error too.
    let fresh = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    let mut fresh = fresh;
    assert!(fresh
        .execute()
        .unwrap_err()
        .to_string()
        .contains("input 0: not set"));
}

#[test]
fn dynamic_inputs_resize_within_their_bound() {
    let bytes = ProgramBuilder::new()
        .method("forward", |m| {
            let mut spec = TensorSpec::new(
                FbType::FLOAT,
                &[4, 2],
                TensorData::Planned {
                    memory_id: 1,
                    offset: 0,
                },
            );
            spec.dynamism = TensorShapeDynamism::DYNAMIC_BOUND;
            let x = m.value(ValueSpec::Tensor(spec.clone()));
            spec.data = TensorData::Planned {
                memory_id: 1,
                offset: 32,
            };
            let out = m.value(ValueSpec::Tensor(spec));
            m.planned_buffers.push(64);
            m.inputs = vec![x];
            m.outputs = vec![out];
            m.kernel("aten::relu", "out", &[x, out, out]);
        })
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    m.set_inputs(&[f32s(&[-1., 2., -3., 4., 5., -6.], &[3, 2])])
        .unwrap();
    m.execute().unwrap();
    let out = m.output(0).unwrap().into_tensor().unwrap();
    assert_eq!(out.sizes(), &[3, 2]);
    assert_eq!(out.to_vec::<f32>().unwrap(), [0., 2., 0., 4., 5., 0.]);
    let e = m
        .set_inputs(&[f32s(&[0.; 10], &[5, 2])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit the program's bound [4, 2]"), "{e}");
    // Fits the capacity (8 elements) but not the bound of dimension 1.
    let e = m
        .set_inputs(&[f32s(&[0.; 8], &[2, 4])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("dimension 1 is 4, at most 2 allowed"), "{e}");
}

#[test]
fn missing_operators_are_all_listed() {
    let bytes = ProgramBuilder::new()
        .method("forward", |m| {
            let x = planned(m, &[2], 0);
            m.planned_buffers.push(8);
            m.inputs = vec![x];
            m.outputs = vec![x];
            m.kernel("custom::one", "out", &[x, x]);
            m.kernel("aten::relu", "out", &[x, x, x]);
            m.kernel("custom::two", "", &[x]);
            m.kernel("custom::one", "out", &[x, x]);
        })
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let e = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap_err();
    match &e {
        Error::MissingOperators { method, operators } => {
            assert_eq!(method, "forward");
            assert_eq!(operators, &["custom::one.out", "custom::two"]);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(e
        .to_string()
        .contains("2 operators with no kernel: custom::one.out, custom::two"));
}

#[test]
fn infinite_loops_hit_the_instruction_budget() {
    let bytes = ProgramBuilder::new()
        .method("forward", |m| {
            let f = m.value(ValueSpec::Bool(false));
            m.instructions.push(InstrSpec::JumpFalse {
                cond: f,
                destination: 0,
            });
        })
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    // With loop work unbounded, the instruction count stops it...
    let limits = ptero_runtime::Limits {
        loop_work_allowance: u64::MAX,
        ..Default::default()
    };
    let mut m = program
        .load_method_with_limits("forward", &kernels(), &BackendRegistry::new(), limits)
        .unwrap();
    let e = m.execute().unwrap_err();
    assert!(matches!(e, Error::InstructionBudget { .. }), "{e}");
    // ...and by default the loop's work stops it sooner.
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    let e = m.execute().unwrap_err();
    assert!(matches!(e, Error::WorkBudget { .. }), "{e}");
}

#[test]
fn jumps_moves_and_frees() {
    // if cond: out = a (move) else: skip. Then free a temporary.
    let bytes = ProgramBuilder::new()
        .method("forward", |m| {
            let cond = m.value(ValueSpec::Bool(true));
            let a = m.value(ValueSpec::Int(7));
            let out = m.value(ValueSpec::Int(0));
            let t = planned(m, &[1], 0);
            m.planned_buffers.push(8);
            m.outputs = vec![out, t];
            m.instructions.push(InstrSpec::JumpFalse {
                cond,
                destination: 2,
            });
            m.instructions.push(InstrSpec::Move { from: a, to: out });
            m.instructions.push(InstrSpec::Free { value: t });
        })
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    m.execute().unwrap();
    assert_eq!(m.output(0).unwrap(), EValue::Int(7));
    // The freed tensor has no data any more: reading it is an error, not a crash.
    assert!(m.output(1).is_err());
}

#[test]
fn bad_indices_are_rejected_at_load() {
    let cases: Vec<(InstrSpec, &str)> = vec![
        (InstrSpec::Move { from: 0, to: 99 }, "refers to value 99"),
        (
            InstrSpec::JumpFalse {
                cond: 0,
                destination: 50,
            },
            "jump destination 50 out of range",
        ),
        (
            InstrSpec::Kernel {
                op_index: 3,
                args: vec![0],
            },
            "operator index 3 out of range",
        ),
        (
            InstrSpec::Delegate {
                delegate_index: 0,
                args: vec![0],
            },
            "delegate index 0 out of range",
        ),
        (InstrSpec::Free { value: -1 }, "refers to value -1"),
    ];
    for (ins, want) in cases {
        let bytes = ProgramBuilder::new()
            .method("forward", |m| {
                m.value(ValueSpec::Bool(true));
                m.instructions.push(ins.clone());
            })
            .finish();
        let program = Program::from_bytes(&bytes).unwrap();
        let e = program
            .load_method("forward", &kernels(), &BackendRegistry::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "'{e}' does not contain '{want}'");
    }
    // Values that point outside planned memory, or at a missing buffer.
    for (id, offset, want) in [(1, 4, "overflow planned buffer 1"), (2, 0, "memory_id 2")] {
        let bytes = ProgramBuilder::new()
            .method("forward", |m| {
                m.value(ValueSpec::Tensor(TensorSpec::new(
                    FbType::FLOAT,
                    &[2],
                    TensorData::Planned {
                        memory_id: id,
                        offset,
                    },
                )));
                m.planned_buffers.push(8);
            })
            .finish();
        let e = Program::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains(want), "'{e}' does not contain '{want}'");
    }
}

/// A backend whose delegate doubles its single float input.
struct Doubler;
struct DoublerHandle {
    factor: f32,
}

impl DelegateHandle for DoublerHandle {
    fn execute(&mut self, args: &mut ptero_core::KernelArgs<'_>) -> ptero_core::Result<()> {
        let shape = args.meta(0)?.dims();
        args.resize(1, &shape)?;
        let x = args.tensor(0)?;
        let xs = x.data::<f32>()?;
        let mut out = args.out(1)?;
        for (o, v) in out.data::<f32>()?.iter_mut().zip(xs) {
            *o = v * self.factor;
        }
        Ok(())
    }
}

impl Backend for Doubler {
    fn name(&self) -> &str {
        "DoublerBackend"
    }
    fn init(
        &self,
        _: &BackendInitContext<'_>,
        processed: &[u8],
        specs: &[CompileSpec],
    ) -> Result<Box<dyn DelegateHandle>, String> {
        if processed != b"blob" {
            return Err(format!("unexpected payload {processed:?}"));
        }
        let factor = specs
            .iter()
            .find(|s| s.key == "factor")
            .map_or(2.0, |s| s.value[0] as f32);
        Ok(Box::new(DoublerHandle { factor }))
    }
}

fn delegated(id: &str) -> Vec<u8> {
    ProgramBuilder::new()
        .method("forward", |m| {
            let x = planned(m, &[3], 0);
            let y = planned(m, &[3], 16);
            m.planned_buffers.push(32);
            m.inputs = vec![x];
            m.outputs = vec![y];
            m.delegates.push(DelegateSpec {
                id: id.into(),
                processed: b"blob".to_vec(),
                compile_specs: vec![("factor".into(), vec![3])],
            });
            m.instructions.push(InstrSpec::Delegate {
                delegate_index: 0,
                args: vec![x, y],
            });
        })
        .finish()
}

#[test]
fn delegates_run_through_registered_backends() {
    let program = Program::from_bytes(&delegated("DoublerBackend")).unwrap();
    assert_eq!(
        program.method_meta("forward").unwrap().backends,
        ["DoublerBackend"]
    );
    let mut backends = BackendRegistry::new();
    backends.register(Arc::new(Doubler));
    let mut m = program
        .load_method("forward", &kernels(), &backends)
        .unwrap();
    m.set_inputs(&[f32s(&[1., 2., 3.], &[3])]).unwrap();
    m.execute().unwrap();
    assert_eq!(
        m.output(0)
            .unwrap()
            .into_tensor()
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        [3., 6., 9.]
    );

    let program = Program::from_bytes(&delegated("NoSuchBackend")).unwrap();
    let e = program
        .load_method("forward", &kernels(), &backends)
        .unwrap_err();
    assert!(matches!(e, Error::UnknownBackend { .. }));
    assert!(
        e.to_string().contains(
            "backend 'NoSuchBackend', which is not available (registered: DoublerBackend)"
        ),
        "{e}"
    );
}

#[test]
fn unknown_methods_list_the_available_ones() {
    let bytes = ProgramBuilder::new()
        .method("forward", add_method)
        .method("encode", add_method)
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    assert_eq!(program.method_names(), ["forward", "encode"]);
    let e = program
        .load_method("decode", &kernels(), &BackendRegistry::new())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "no method named 'decode'; the program has: forward, encode"
    );
}

#[test]
fn mutable_buffers_start_from_their_initial_value_and_persist() {
    // acc (initialized [1, 2]) += x on every call: tmp = acc + x; copy_(acc, tmp); return acc.
    let bytes = ProgramBuilder::new()
        .method("forward", |m| {
            let init: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
            let acc = m.value(ValueSpec::Tensor(TensorSpec::new(
                FbType::FLOAT,
                &[2],
                TensorData::PlannedInit {
                    memory_id: 1,
                    offset: 0,
                    init,
                },
            )));
            let x = planned(m, &[2], 16);
            let tmp = planned(m, &[2], 32);
            let one = m.value(ValueSpec::Int(1));
            let no = m.value(ValueSpec::Bool(false));
            m.planned_buffers.push(48);
            m.inputs = vec![x];
            m.outputs = vec![acc];
            m.kernel("aten::add", "out", &[acc, x, one, tmp, tmp]);
            m.kernel("aten::copy_", "", &[acc, tmp, no, acc]);
        })
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    for want in [[1.5f32, 2.5], [2.0, 3.0], [2.5, 3.5]] {
        m.set_inputs(&[f32s(&[0.5, 0.5], &[2])]).unwrap();
        m.execute().unwrap();
        assert_eq!(
            m.output(0)
                .unwrap()
                .into_tensor()
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            want
        );
    }
    // A second load starts again from the initial value.
    let mut fresh = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    fresh.set_inputs(&[f32s(&[0.0, 0.0], &[2])]).unwrap();
    fresh.execute().unwrap();
    assert_eq!(
        fresh
            .output(0)
            .unwrap()
            .into_tensor()
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        [1.0, 2.0]
    );
}

/// `out = a @ b` on [n, n] float tensors, then a jump back to it: a loop around a matrix
/// product that never ends by itself.
fn mm_loop(n: i32, iterations_cond: bool) -> Vec<u8> {
    ProgramBuilder::new()
        .method("forward", |m| {
            let bytes = (n * n * 4) as u64;
            let a = planned(m, &[n, n], 0);
            let b = planned(m, &[n, n], bytes);
            let out = planned(m, &[n, n], 2 * bytes);
            m.planned_buffers.push(3 * bytes as i64);
            m.outputs = vec![out];
            m.kernel("aten::mm", "out", &[a, b, out, out]);
            let cond = m.value(ValueSpec::Bool(iterations_cond));
            m.instructions.push(InstrSpec::JumpFalse {
                cond,
                destination: 0,
            });
        })
        .finish()
}

#[test]
fn loops_around_heavy_kernels_hit_the_work_budget() {
    let bytes = mm_loop(64, false);
    let program = Program::from_bytes(&bytes).unwrap();
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    let started = std::time::Instant::now();
    let e = m.execute().unwrap_err();
    assert!(matches!(e, Error::WorkBudget { .. }), "{e}");
    assert!(e.to_string().contains("loop"), "{e}");
    // Far fewer than the 10 million instructions the budget alone would allow.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn a_loop_that_ends_is_not_limited() {
    // The condition is true: the jump is not taken, the product runs once.
    let program = Program::from_bytes(&mm_loop(8, true)).unwrap();
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    m.execute().unwrap();
    m.execute().unwrap();
}

#[test]
fn a_cancelled_method_stops_with_a_clear_error() {
    let program = Program::from_bytes(&mm_loop(8, true)).unwrap();
    let mut m = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap();
    let token = Arc::new(ptero_runtime::CancelToken::new());
    m.set_interrupt(Some(token.clone()));
    m.execute().unwrap();
    token.cancel();
    let e = m.execute().unwrap_err();
    assert!(matches!(e, Error::Interrupted { .. }), "{e}");
    assert!(e.to_string().contains("interrupted"), "{e}");
    token.reset();
    m.execute().unwrap();
}

#[test]
fn planned_memory_over_the_limit_is_refused_before_allocating() {
    let bytes = ProgramBuilder::new()
        .method("forward", |m| {
            let t = planned(m, &[4], 0);
            m.outputs = vec![t];
            // 1 TiB: must fail on the limit, not in the allocator.
            m.planned_buffers.push(1 << 40);
        })
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let limits = ptero_runtime::Limits {
        max_memory: 1 << 20,
        ..Default::default()
    };
    let e = program
        .load_method_with_limits("forward", &kernels(), &BackendRegistry::new(), limits)
        .unwrap_err();
    assert!(matches!(e, Error::MemoryLimit { .. }), "{e}");
    assert!(
        e.to_string().contains("memory limit of 1048576 bytes"),
        "{e}"
    );
    // The default limit refuses it too (16 GiB).
    let e = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap_err();
    assert!(matches!(e, Error::MemoryLimit { .. }), "{e}");
}

#[test]
fn names_from_the_file_cannot_inject_terminal_escapes() {
    let bytes = ProgramBuilder::new()
        .method("forward", |m| {
            let x = planned(m, &[1], 0);
            m.planned_buffers.push(8);
            m.kernel("\u{1b}[2J\u{7}evil", "out", &[x, x]);
        })
        .finish();
    let program = Program::from_bytes(&bytes).unwrap();
    let e = program
        .load_method("forward", &kernels(), &BackendRegistry::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("\\u{1b}[2J\\u{7}evil.out"), "{e}");
    assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
}
