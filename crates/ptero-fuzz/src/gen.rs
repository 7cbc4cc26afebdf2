//! Hostile programs: valid flatbuffers (written by `ptero_format::writer`) whose contents
//! are extreme: sizes, dtypes, dim orders, value kinds, argument lists, jumps, segments.

use ptero_format::fb;
use ptero_format::writer::{
    DelegateSpec, InstrSpec, MethodSpec, ProgramBuilder, TensorData, TensorSpec, ValueSpec,
};

use crate::rng::Rng;

/// What an argument slot of a kernel holds, learned by probing (see `schema`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tensor(fb::ScalarType),
    OptTensor(fb::ScalarType),
    Int,
    Double,
    Bool,
    Scalar,
    Str,
    IntList,
    DoubleList,
    BoolList,
    TensorList(fb::ScalarType),
    None,
}

pub const ALL_KINDS: [Kind; 12] = [
    Kind::Tensor(fb::ScalarType::FLOAT),
    Kind::OptTensor(fb::ScalarType::FLOAT),
    Kind::Int,
    Kind::Double,
    Kind::Bool,
    Kind::Scalar,
    Kind::Str,
    Kind::IntList,
    Kind::DoubleList,
    Kind::BoolList,
    Kind::TensorList(fb::ScalarType::FLOAT),
    Kind::None,
];

/// Every dtype code the format defines, plus codes it does not.
pub fn any_dtype(rng: &mut Rng) -> fb::ScalarType {
    const CODES: [i8; 26] = [
        0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 22, 23, 24, 25, 26, 27, 28, 29, 8, 9,
        -1,
    ];
    fb::ScalarType(*rng.pick(&CODES))
}

/// Dtypes kernels commonly accept, weighted toward float.
pub fn common_dtype(rng: &mut Rng) -> fb::ScalarType {
    const CODES: [i8; 12] = [6, 6, 6, 4, 4, 3, 11, 5, 15, 7, 1, 0];
    fb::ScalarType(*rng.pick(&CODES))
}

pub fn dtype_size(t: fb::ScalarType) -> usize {
    match t.0 {
        0 | 1 | 11 | 12 | 13 | 16 | 17 | 23..=26 => 1,
        2 | 5 | 15 | 22 | 27 => 2,
        3 | 14 | 6 | 28 => 4,
        4 | 7 | 29 => 8,
        8 => 4,
        9 => 8,
        10 => 16,
        _ => 1,
    }
}

pub fn interesting_int(rng: &mut Rng) -> i64 {
    const V: [i64; 20] = [
        0,
        1,
        -1,
        2,
        -2,
        3,
        4,
        i64::MIN,
        i64::MAX,
        i32::MAX as i64,
        i32::MIN as i64,
        1 << 32,
        1 << 62,
        -(1 << 62),
        255,
        256,
        65536,
        u32::MAX as i64,
        i64::MIN + 1,
        1 << 31,
    ];
    if rng.one_in(2) {
        rng.below(9) as i64 - 3
    } else {
        *rng.pick(&V)
    }
}

pub fn interesting_double(rng: &mut Rng) -> f64 {
    const V: [f64; 16] = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        2.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -1e300,
        1e-300,
        f64::MIN_POSITIVE,
        f64::MAX,
        1e-9,
        3.0e9,
    ];
    if rng.one_in(3) {
        (rng.below(2000) as f64 - 1000.0) / 100.0
    } else {
        *rng.pick(&V)
    }
}

const STRINGS: [&str; 10] = [
    "none", "tanh", "mean", "sum", "floor", "trunc", "", "\u{0}", "linear", "reflect",
];

/// A shape: mostly small, sometimes empty or huge.
pub fn shape(rng: &mut Rng, base: &[i32]) -> Vec<i32> {
    match rng.below(12) {
        0 => Vec::new(),
        1 => {
            let rank = rng.below(7);
            (0..rank)
                .map(|_| *rng.pick(&[0, 1, 2, 3, i32::MAX, 65536, -1, 1 << 20]))
                .collect()
        }
        2 => {
            let mut s = base.to_vec();
            if !s.is_empty() {
                let k = rng.below(s.len());
                s[k] = *rng.pick(&[0, 1, 2, 5]);
            }
            s
        }
        3 => base
            .iter()
            .skip(rng.below(base.len() + 1))
            .copied()
            .collect(),
        4 => {
            let rank = 1 + rng.below(5);
            (0..rank).map(|_| rng.below(5) as i32).collect()
        }
        _ => base.to_vec(),
    }
}

pub fn base_shape(rng: &mut Rng) -> Vec<i32> {
    let rank = match rng.below(8) {
        0 => 0,
        1 | 2 => 1,
        3 | 4 => 2,
        5 => 3,
        6 => 4,
        _ => 5,
    };
    (0..rank).map(|_| 1 + rng.below(4) as i32).collect()
}

fn dim_order(rng: &mut Rng, rank: usize) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            let mut d: Vec<u8> = (0..rank as u8).collect();
            for i in (1..d.len()).rev() {
                let j = rng.below(i + 1);
                d.swap(i, j);
            }
            d
        }
        1 => (0..rank).map(|_| rng.below(rank + 2) as u8).collect(),
        2 if rank == 4 => vec![0, 2, 3, 1],
        _ => Vec::new(),
    }
}

/// Builds values into a method while tracking the planned buffer's layout.
pub struct Builder {
    pub m: MethodSpec,
    planned: u64,
    /// Plain values only (float tensors of the base shape, small numbers): used to learn a
    /// kernel's argument kinds, where hostile values would hide them behind other errors.
    pub benign: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            m: MethodSpec {
                name: "forward".into(),
                ..Default::default()
            },
            planned: 0,
            benign: false,
        }
    }

    pub fn value(&mut self, v: ValueSpec) -> i32 {
        self.m.value(v)
    }

    /// Reserves `nbytes` (16-byte aligned) plus `gap` in the planned buffer; returns the
    /// offset.
    fn place(&mut self, nbytes: u64, gap: u64) -> u64 {
        let offset = self.planned;
        self.planned = self
            .planned
            .saturating_add(nbytes.div_ceil(16).saturating_mul(16))
            .saturating_add(gap);
        offset
    }

    /// A tensor with data in planned memory (initial values in the mutable segment),
    /// sometimes constant, sometimes without storage, sometimes with a corrupt placement.
    pub fn tensor(
        &mut self,
        rng: &mut Rng,
        dtype: fb::ScalarType,
        sizes: Vec<i32>,
        out: bool,
    ) -> i32 {
        let numel: u64 = sizes
            .iter()
            .map(|&s| s.max(0) as u64)
            .try_fold(1u64, |a, b| a.checked_mul(b))
            .unwrap_or(u64::MAX);
        let nbytes = numel.saturating_mul(dtype_size(dtype) as u64);
        if self.benign {
            let offset = self.place(nbytes, 0);
            let data = if nbytes <= 1 << 16 {
                let mut init = vec![0u8; nbytes as usize];
                for (k, c) in init.chunks_mut(dtype_size(dtype)).enumerate() {
                    c[0] = (k % 3) as u8;
                }
                TensorData::PlannedInit {
                    memory_id: 1,
                    offset,
                    init,
                }
            } else {
                TensorData::Planned {
                    memory_id: 1,
                    offset,
                }
            };
            self.m.values.push(ValueSpec::Tensor(TensorSpec {
                scalar_type: dtype,
                sizes,
                dim_order: Vec::new(),
                dynamism: if out {
                    fb::TensorShapeDynamism::DYNAMIC_BOUND
                } else {
                    fb::TensorShapeDynamism::STATIC
                },
                data,
            }));
            return (self.m.values.len() - 1) as i32;
        }
        let dynamism = match rng.below(6) {
            0 => fb::TensorShapeDynamism::STATIC,
            1 => fb::TensorShapeDynamism::DYNAMIC_UNBOUND,
            _ if out => fb::TensorShapeDynamism::DYNAMIC_BOUND,
            _ => fb::TensorShapeDynamism::STATIC,
        };
        let dim_order = dim_order(rng, sizes.len());
        let small = nbytes <= 1 << 16;
        let data = match rng.below(16) {
            0 => TensorData::None,
            1 => TensorData::Planned {
                memory_id: *rng.pick(&[0, 1, 2, u32::MAX]),
                offset: *rng.pick(&[0, u64::MAX, 1 << 40, 3]),
            },
            2 | 3 if small && !out => {
                let mut init = vec![0u8; nbytes as usize];
                fill(rng, &mut init, dtype);
                TensorData::Constant(init)
            }
            _ if small => {
                let offset = self.place(nbytes, 16 * rng.below(2) as u64);
                let mut init = vec![0u8; nbytes as usize];
                fill(rng, &mut init, dtype);
                TensorData::PlannedInit {
                    memory_id: 1,
                    offset,
                    init,
                }
            }
            _ => {
                // Too big to initialize: planned without a value; the load may refuse it.
                let offset = self.place(nbytes, 0);
                TensorData::Planned {
                    memory_id: 1,
                    offset,
                }
            }
        };
        self.m.values.push(ValueSpec::Tensor(TensorSpec {
            scalar_type: dtype,
            sizes,
            dim_order,
            dynamism,
            data,
        }));
        (self.m.values.len() - 1) as i32
    }

    /// One argument of `kind`.
    pub fn arg(&mut self, rng: &mut Rng, kind: Kind, base: &[i32], out: bool) -> i32 {
        if self.benign {
            return self.benign_arg(rng, kind, base, out);
        }
        // Mostly plausible values, so that the one or two hostile ones in a call get past
        // the kernel's first checks and reach its arithmetic.
        if rng.below(4) != 0 {
            return self.plausible_arg(rng, kind, base, out);
        }
        let kind = if rng.one_in(40) {
            *rng.pick(&ALL_KINDS)
        } else {
            kind
        };
        match kind {
            Kind::Tensor(dt) | Kind::OptTensor(dt) => {
                if matches!(kind, Kind::OptTensor(_)) && rng.one_in(3) {
                    return self.value(ValueSpec::Null);
                }
                let dt = match rng.below(10) {
                    0 => any_dtype(rng),
                    1 | 2 => common_dtype(rng),
                    _ => dt,
                };
                let sizes = shape(rng, base);
                self.tensor(rng, dt, sizes, out)
            }
            Kind::Int => self.value(ValueSpec::Int(interesting_int(rng))),
            Kind::Double => self.value(ValueSpec::Double(interesting_double(rng))),
            Kind::Bool => self.value(ValueSpec::Bool(rng.one_in(2))),
            Kind::Scalar => match rng.below(3) {
                0 => self.value(ValueSpec::Int(interesting_int(rng))),
                1 => self.value(ValueSpec::Double(interesting_double(rng))),
                _ => self.value(ValueSpec::Bool(rng.one_in(2))),
            },
            Kind::Str => self.value(ValueSpec::String(rng.pick(&STRINGS).to_string())),
            Kind::IntList => {
                let n = rng.below(6);
                let ids: Vec<i64> = (0..n)
                    .map(|_| {
                        if rng.one_in(30) {
                            // A dangling or non-Int item.
                            *rng.pick(&[-1, 0, i32::MAX as i64])
                        } else {
                            let v = if rng.one_in(2) {
                                base.get(rng.below(base.len().max(1)))
                                    .map_or(1, |&s| s as i64)
                            } else {
                                interesting_int(rng)
                            };
                            self.value(ValueSpec::Int(v)) as i64
                        }
                    })
                    .collect();
                self.value(ValueSpec::IntList(ids))
            }
            Kind::DoubleList => {
                let n = rng.below(5);
                let v = (0..n).map(|_| interesting_double(rng)).collect();
                self.value(ValueSpec::DoubleList(v))
            }
            Kind::BoolList => {
                let n = rng.below(5);
                let v = (0..n).map(|_| rng.one_in(2)).collect();
                self.value(ValueSpec::BoolList(v))
            }
            Kind::TensorList(dt) => {
                let n = rng.below(4);
                let ids: Vec<i32> = (0..n)
                    .map(|_| {
                        if rng.one_in(20) {
                            *rng.pick(&[-1, 0, i32::MAX])
                        } else {
                            let sizes = shape(rng, base);
                            self.tensor(rng, dt, sizes, out)
                        }
                    })
                    .collect();
                if rng.one_in(4) {
                    self.value(ValueSpec::OptionalTensorList(ids))
                } else {
                    self.value(ValueSpec::TensorList(ids))
                }
            }
            Kind::None => self.value(ValueSpec::Null),
        }
    }

    fn plausible_arg(&mut self, rng: &mut Rng, kind: Kind, base: &[i32], out: bool) -> i32 {
        let small = |rng: &mut Rng| -> i64 {
            match rng.below(6) {
                0 => -1,
                1 => base
                    .get(rng.below(base.len().max(1)))
                    .map_or(1, |&s| s as i64),
                _ => rng.below(4) as i64,
            }
        };
        match kind {
            Kind::Tensor(dt) | Kind::OptTensor(dt) => {
                if matches!(kind, Kind::OptTensor(_)) && rng.one_in(4) {
                    return self.value(ValueSpec::Null);
                }
                let sizes: Vec<i32> = if out {
                    base.iter().map(|s| s * *rng.pick(&[1, 2, 2, 3])).collect()
                } else if rng.one_in(5) {
                    base.iter()
                        .skip(rng.below(base.len() + 1))
                        .copied()
                        .collect()
                } else {
                    base.to_vec()
                };
                let saved = self.benign;
                self.benign = true;
                let v = self.tensor(rng, dt, sizes, out);
                self.benign = saved;
                if let Some(ValueSpec::Tensor(t)) = self.m.values.last_mut() {
                    if let TensorData::PlannedInit { init, .. } = &mut t.data {
                        fill(rng, init, dt);
                    }
                }
                v
            }
            Kind::Int => self.value(ValueSpec::Int(small(rng))),
            Kind::Scalar if rng.one_in(2) => self.value(ValueSpec::Int(small(rng))),
            Kind::Double | Kind::Scalar => {
                let v = *rng.pick(&[0.0, 0.5, 1.0, 2.0, 1e-5, -1.0, 3.0]);
                self.value(ValueSpec::Double(v))
            }
            Kind::Bool => self.value(ValueSpec::Bool(rng.one_in(2))),
            Kind::Str => self.value(ValueSpec::String(rng.pick(&STRINGS).to_string())),
            Kind::IntList => {
                let n = match rng.below(3) {
                    0 => base.len(),
                    1 => 2,
                    _ => 1 + rng.below(base.len().max(1)),
                };
                let ids: Vec<i64> = (0..n)
                    .map(|_| {
                        let v = small(rng).max(if rng.one_in(3) { -1 } else { 1 });
                        self.value(ValueSpec::Int(v)) as i64
                    })
                    .collect();
                self.value(ValueSpec::IntList(ids))
            }
            Kind::DoubleList => {
                let n = 1 + rng.below(3);
                let v = (0..n).map(|_| *rng.pick(&[0.5, 1.0, 2.0, 1.5])).collect();
                self.value(ValueSpec::DoubleList(v))
            }
            Kind::BoolList => {
                let v = (0..1 + rng.below(3)).map(|_| rng.one_in(2)).collect();
                self.value(ValueSpec::BoolList(v))
            }
            Kind::TensorList(dt) => {
                let n = 1 + rng.below(3);
                let saved = self.benign;
                self.benign = true;
                let ids: Vec<i32> = (0..n)
                    .map(|_| self.tensor(rng, dt, base.to_vec(), out))
                    .collect();
                self.benign = saved;
                self.value(ValueSpec::TensorList(ids))
            }
            Kind::None => self.value(ValueSpec::Null),
        }
    }

    fn benign_arg(&mut self, rng: &mut Rng, kind: Kind, base: &[i32], out: bool) -> i32 {
        match kind {
            Kind::Tensor(dt) | Kind::OptTensor(dt) => {
                let sizes = if out {
                    base.iter().map(|s| s * 2).collect()
                } else {
                    base.to_vec()
                };
                self.tensor(rng, dt, sizes, out)
            }
            Kind::Int | Kind::Scalar => self.value(ValueSpec::Int(1)),
            Kind::Double => self.value(ValueSpec::Double(1.0)),
            Kind::Bool => self.value(ValueSpec::Bool(false)),
            Kind::Str => self.value(ValueSpec::String("none".into())),
            Kind::IntList => {
                let one = self.value(ValueSpec::Int(1)) as i64;
                self.value(ValueSpec::IntList(vec![one; base.len().max(1)]))
            }
            Kind::DoubleList => self.value(ValueSpec::DoubleList(vec![1.0])),
            Kind::BoolList => self.value(ValueSpec::BoolList(vec![false])),
            Kind::TensorList(dt) => {
                let t = self.tensor(rng, dt, base.to_vec(), out);
                self.value(ValueSpec::TensorList(vec![t]))
            }
            Kind::None => self.value(ValueSpec::Null),
        }
    }

    pub fn finish(mut self, rng: &mut Rng) -> MethodSpec {
        if self.benign {
            self.m.planned_buffers = vec![(self.planned as i64).saturating_add(64)];
            return self.m;
        }
        let size = if rng.one_in(30) {
            *rng.pick(&[0, -1, i64::MAX, 1 << 40, 7])
        } else {
            (self.planned as i64).saturating_add(64)
        };
        self.m.planned_buffers = vec![size];
        self.m
    }
}

/// Random bytes for a tensor, with NaN/Inf/extremes sprinkled in for floats.
pub fn fill(rng: &mut Rng, out: &mut [u8], dtype: fb::ScalarType) {
    if rng.one_in(6) {
        // Extreme integers (MIN / -1 is the classic) for integer tensors.
        let es = dtype_size(dtype);
        for chunk in out.chunks_mut(es) {
            let v = interesting_int(rng).to_le_bytes();
            let n = chunk.len();
            chunk.copy_from_slice(&v[..n]);
        }
        return;
    }
    match rng.below(4) {
        0 => rng.bytes(out),
        1 => out.fill(*rng.pick(&[0u8, 0xff, 0x7f, 0x80])),
        _ => {
            // Small integers or small floats, which keep kernels on their common paths.
            let es = dtype_size(dtype);
            for (k, chunk) in out.chunks_mut(es).enumerate() {
                let v = (rng.below(9) as i64 - 4) as f64 + if k % 3 == 0 { 0.5 } else { 0.0 };
                match dtype.0 {
                    6 => chunk.copy_from_slice(&(v as f32).to_le_bytes()),
                    7 => chunk.copy_from_slice(&v.to_le_bytes()),
                    4 => chunk.copy_from_slice(&(v as i64).to_le_bytes()),
                    3 => chunk.copy_from_slice(&(v as i32).to_le_bytes()),
                    11 => chunk[0] = (v > 0.0) as u8,
                    _ => {
                        let b = (v as i64).to_le_bytes();
                        let n = chunk.len();
                        chunk.copy_from_slice(&b[..n]);
                    }
                }
                if rng.one_in(50) && es == 4 {
                    let special: f32 = *rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
                    chunk.copy_from_slice(&special.to_le_bytes());
                }
            }
        }
    }
}

/// Splits a registry name (`aten::add.out`) into the format's name and overload.
pub fn split_op(name: &str) -> (&str, &str) {
    let ns_end = name.find("::").map_or(0, |i| i + 2);
    match name[ns_end..].rfind('.') {
        Some(i) => (&name[..ns_end + i], &name[ns_end + i + 1..]),
        None => (name, ""),
    }
}

/// A single-kernel program for `op` with arguments of `kinds` (the last ones, counted
/// from `first_out`, are outputs), plus the trailing return slot.
pub fn kernel_program(
    rng: &mut Rng,
    op: &str,
    kinds: &[Kind],
    first_out: usize,
    benign: Option<&[i32]>,
) -> Vec<u8> {
    let mut b = Builder::new();
    b.benign = benign.is_some();
    let base = match benign {
        Some(base) => base.to_vec(),
        None => base_shape(rng),
    };
    let benign = b.benign;
    let mut args = Vec::new();
    let mut outs = Vec::new();
    for (i, &k) in kinds.iter().enumerate() {
        let out = i >= first_out;
        let v = b.arg(rng, k, &base, out);
        if out && matches!(k, Kind::Tensor(_) | Kind::TensorList(_)) {
            outs.push(v);
        }
        args.push(v);
    }
    if !benign && rng.one_in(20) && !args.is_empty() {
        // Aliasing: one value passed twice.
        let i = rng.below(args.len());
        let j = rng.below(args.len());
        args[i] = args[j];
    }
    let ret = b.value(ValueSpec::Null);
    args.push(ret);
    let (name, overload) = split_op(op);
    b.m.kernel(name, overload, &args);
    if !benign && rng.one_in(8) {
        b.m.kernel(name, overload, &args);
    }
    b.m.outputs = outs;
    if !benign && rng.one_in(6) {
        // Some tensor becomes an input that the caller sets.
        if let Some(&t) = args
            .iter()
            .find(|&&a| matches!(b.m.values.get(a as usize), Some(ValueSpec::Tensor(_))))
        {
            b.m.inputs.push(t);
        }
    }
    let m = b.finish(rng);
    ProgramBuilder::new().push(m).finish()
}

/// A program of several instructions over a shared value pool: kernels with learned
/// argument kinds, moves, frees, forward and backward jumps, delegates, named data.
pub fn random_program(rng: &mut Rng, ops: &[(String, Vec<Kind>, usize)]) -> Vec<u8> {
    let mut b = Builder::new();
    let base = base_shape(rng);
    let n_instr = 1 + rng.below(8);
    let mut tensors: Vec<i32> = Vec::new();
    for _ in 0..n_instr {
        match rng.below(12) {
            0 => {
                let from = rng.below(b.m.values.len().max(1)) as i32;
                let to = rng.below(b.m.values.len().max(1)) as i32;
                b.m.instructions.push(InstrSpec::Move { from, to });
            }
            1 => {
                let cond = if rng.one_in(2) {
                    b.value(ValueSpec::Bool(rng.one_in(2)))
                } else {
                    rng.below(b.m.values.len() + 2) as i32
                };
                let destination = match rng.below(4) {
                    0 => -1,
                    1 => i32::MAX,
                    _ => rng.below(b.m.instructions.len() + 2) as i32,
                };
                b.m.instructions
                    .push(InstrSpec::JumpFalse { cond, destination });
            }
            2 => {
                let value = if tensors.is_empty() || rng.one_in(4) {
                    rng.below(b.m.values.len() + 2) as i32
                } else {
                    *rng.pick(&tensors)
                };
                b.m.instructions.push(InstrSpec::Free { value });
            }
            3 if rng.one_in(3) => {
                let id = rng.pick(&["XnnpackBackend", "", "Unknown"]).to_string();
                let mut processed = vec![0u8; rng.below(64)];
                rng.bytes(&mut processed);
                b.m.delegates.push(DelegateSpec {
                    id,
                    processed,
                    compile_specs: vec![],
                });
                let args = (0..rng.below(3)).map(|_| rng.below(4) as i32).collect();
                b.m.instructions.push(InstrSpec::Delegate {
                    delegate_index: rng.below(2) as i32,
                    args,
                });
            }
            _ if !ops.is_empty() => {
                let (op, kinds, first_out) = rng.pick(ops);
                let mut args = Vec::new();
                for (i, &k) in kinds.iter().enumerate() {
                    let out = i >= *first_out;
                    let reuse = !out && !tensors.is_empty() && rng.one_in(2);
                    let v = if reuse && matches!(k, Kind::Tensor(_)) {
                        *rng.pick(&tensors)
                    } else {
                        b.arg(rng, k, &base, out)
                    };
                    if matches!(k, Kind::Tensor(_)) {
                        tensors.push(v);
                    }
                    args.push(v);
                }
                let ret = b.value(ValueSpec::Null);
                args.push(ret);
                let (name, overload) = split_op(op);
                b.m.kernel(name, overload, &args);
            }
            _ => {}
        }
    }
    let nv = b.m.values.len();
    for _ in 0..rng.below(3) {
        b.m.inputs.push(rng.below(nv + 1) as i32);
    }
    for _ in 0..rng.below(3) {
        let o = if !tensors.is_empty() && rng.one_in(2) {
            *rng.pick(&tensors)
        } else {
            rng.below(nv + 1) as i32
        };
        b.m.outputs.push(o);
    }
    let m = b.finish(rng);
    let mut pb = ProgramBuilder::new().push(m);
    if rng.one_in(4) {
        let mut data = vec![0u8; rng.below(300)];
        rng.bytes(&mut data);
        pb = pb.named_data("w", &data);
    }
    if rng.one_in(6) {
        let other = Builder::new().finish(rng);
        pb = pb.push(MethodSpec {
            name: rng.pick(&["forward", "", "get_max_seq_len"]).to_string(),
            ..other
        });
    }
    pb.finish()
}

/// Byte-level damage to a valid program: bit flips, interesting words, truncation, splices.
pub fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        if len == 0 {
            return;
        }
        match rng.below(7) {
            0 => {
                let i = rng.below(len);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len);
                bytes[i] = *rng.pick(&[0, 0xff, 0x7f, 0x80, 1, 2, 0x10]);
            }
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let v: u32 = *rng.pick(&[0, u32::MAX, 0x7fff_ffff, 0x8000_0000, 1, 0x10000, 64]);
                bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if len >= 8 => {
                let i = rng.below(len - 7);
                let v: u64 = *rng.pick(&[0, u64::MAX, i64::MAX as u64, 1 << 40]);
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            4 => bytes.truncate(rng.below(len)),
            5 => {
                let a = rng.below(len);
                let b = rng.below(len);
                let n = rng.below(64).min(len - a.max(b));
                let chunk: Vec<u8> = bytes[a..a + n].to_vec();
                bytes[b..b + n].copy_from_slice(&chunk);
            }
            _ => {
                // Small signed deltas on one little-endian word: sizes and offsets a bit off.
                if len >= 4 {
                    let i = rng.below(len - 3) & !3;
                    let mut w = [0u8; 4];
                    w.copy_from_slice(&bytes[i..i + 4]);
                    let v = i32::from_le_bytes(w).wrapping_add(rng.below(9) as i32 - 4);
                    bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}
