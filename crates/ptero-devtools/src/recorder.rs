//! The event tracer: an [`Observer`] that records what a method did and when.
//!
//! A [`Recorder`] keeps, per execution, a profile event for the run (`Method::execute`),
//! for every kernel and delegate call and for every node inside a delegate, and, if asked,
//! a copy of every value an instruction wrote (debug events, their bytes in one debug
//! buffer). Tracing is switched on by passing a recorder to
//! [`Method::execute_observed`](ptero_runtime::Method::execute_observed); a method run
//! without one pays nothing. What it recorded becomes an ETDump ([`crate::etdump`]), a
//! Chrome trace ([`crate::trace`]) or a per-operator table ([`Recorder::operator_stats`]).

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use ptero_core::ScalarType;
use ptero_runtime::{EValue, Observer, Tensor};

/// Nanoseconds from some fixed point.
pub type Clock = fn() -> u64;

#[cfg(feature = "std")]
fn std_clock() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Which instructions' values to keep as debug events.
#[derive(Debug, Clone, Default)]
pub struct ValueFilter {
    /// Keep values at all.
    pub enabled: bool,
    /// Only instructions in this range of indices (`start..end`).
    pub instructions: Option<(usize, usize)>,
    /// Only operators (or delegate ids) whose name contains this.
    pub operator: Option<String>,
}

/// What a [`Recorder`] keeps.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    /// Instruction outputs to keep (off by default).
    pub values: ValueFilter,
    /// Keep the method's outputs as debug events too (with `values.enabled`).
    pub method_outputs: bool,
    /// Nanosecond clock. With `std`, a monotonic clock by default.
    pub clock: Clock,
    /// Bytes the debug buffer may hold; values that would not fit are dropped and
    /// counted ([`Recorder::debug_values_dropped`]). 1 GiB by default.
    pub max_debug_bytes: usize,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            values: ValueFilter::default(),
            method_outputs: true,
            #[cfg(feature = "std")]
            clock: std_clock,
            #[cfg(not(feature = "std"))]
            clock: || 0,
            max_debug_bytes: 1 << 30,
        }
    }
}

/// What a profile event measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A framework event: `Method::execute`, `Method::init`, `Program::load_method`.
    Method,
    /// A kernel call.
    Operator,
    /// A delegate call.
    Delegate,
    /// A node inside a delegate.
    Node,
}

/// One timed event.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEvent {
    pub kind: EventKind,
    /// Operator (`aten::add.out`), delegate id, node name (`Conv2d #2`) or framework name.
    pub name: String,
    /// Chain and instruction, for instruction and node events.
    pub chain: Option<usize>,
    pub instruction: Option<usize>,
    /// A delegate node's handle in the delegate's graph.
    pub debug_handle: Option<u32>,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A value kept as a debug event.
#[derive(Debug, Clone, PartialEq)]
pub enum DebugValue {
    /// Its bytes are at `offset..offset + nbytes` of the debug buffer.
    Tensor {
        dtype: ScalarType,
        sizes: Vec<usize>,
        offset: usize,
        nbytes: usize,
    },
    TensorList(Vec<DebugValue>),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// One value an instruction wrote (or a method output).
#[derive(Debug, Clone, PartialEq)]
pub struct DebugEvent {
    /// `None` for a method output.
    pub chain: Option<usize>,
    pub instruction: Option<usize>,
    /// The operator or delegate that wrote it.
    pub name: String,
    pub value: DebugValue,
    pub method_output: bool,
    /// How many profile events of its run were recorded before it (it belongs to the
    /// last of them: its instruction, or `Method::execute` for a method output).
    pub after: usize,
}

/// Everything one block holds: a load, or one execution of a method.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// `Default` for a load block, `Execute` for an execution (ExecuTorch's names).
    pub name: String,
    pub method: String,
    /// In the order they ended (children before their parents).
    pub profile: Vec<ProfileEvent>,
    pub debug: Vec<DebugEvent>,
    /// Planned buffers (name, bytes), for load blocks.
    pub allocations: Vec<(String, u64)>,
}

/// One row of [`Recorder::operator_stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorStats {
    pub kind: EventKind,
    pub name: String,
    pub count: usize,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    /// Share of the executions' total time, in percent.
    pub share: f64,
}

/// Records what methods do; see the module documentation.
///
/// ```
/// use ptero_devtools::{Recorder, RecorderOptions};
/// use ptero_runtime::Observer;
/// let mut r = Recorder::new(RecorderOptions::default());
/// r.run_begin("forward");
/// r.begin(0, 0);
/// r.end(0, 0, "aten::add.out");
/// r.run_end("forward");
/// assert_eq!(r.runs().len(), 1);
/// assert_eq!(r.operator_stats()[0].name, "aten::add.out");
/// ```
#[derive(Debug)]
pub struct Recorder {
    options: RecorderOptions,
    runs: Vec<Run>,
    current: Option<Run>,
    run_start: u64,
    instr_start: u64,
    node_start: u64,
    /// Occurrences of each node name in the current delegate call (for `#k`).
    node_counts: BTreeMap<String, usize>,
    debug_buffer: Vec<u8>,
    /// Values not kept because the debug buffer was full.
    dropped: usize,
    /// Current instruction's operator name, for its debug events.
    current_name: String,
    keep_values: bool,
    in_delegate: bool,
}

/// Alignment of each tensor in the debug buffer (the official buffer sink's).
const DEBUG_ALIGN: usize = 64;

impl Recorder {
    pub fn new(options: RecorderOptions) -> Recorder {
        Recorder {
            options,
            runs: Vec::new(),
            current: None,
            run_start: 0,
            instr_start: 0,
            node_start: 0,
            node_counts: BTreeMap::new(),
            debug_buffer: Vec::new(),
            dropped: 0,
            current_name: String::new(),
            keep_values: false,
            in_delegate: false,
        }
    }

    /// The current time on the recorder's clock (ns), for [`Recorder::record_load`].
    pub fn now(&self) -> u64 {
        (self.options.clock)()
    }

    /// Records the load of `method` as a `Default` block, as ExecuTorch does:
    /// `Method::init` and `Program::load_method` over `start_ns..end_ns`, and its planned
    /// buffers as allocations.
    pub fn record_load(&mut self, method: &str, start_ns: u64, end_ns: u64, planned: &[usize]) {
        let ev = |name: &str| ProfileEvent {
            kind: EventKind::Method,
            name: name.to_string(),
            chain: None,
            instruction: None,
            debug_handle: None,
            start_ns,
            end_ns,
        };
        self.runs.push(Run {
            name: "Default".into(),
            method: method.into(),
            profile: alloc::vec![ev("Method::init"), ev("Program::load_method")],
            debug: Vec::new(),
            allocations: planned
                .iter()
                .enumerate()
                .map(|(i, &b)| (alloc::format!("planned buffer {}", i + 1), b as u64))
                .collect(),
        });
    }

    /// The blocks recorded so far, in order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The bytes of every kept tensor; [`DebugValue::Tensor`] offsets point into it.
    pub fn debug_buffer(&self) -> &[u8] {
        &self.debug_buffer
    }

    /// How many values were not kept because the debug buffer would have grown past
    /// [`RecorderOptions::max_debug_bytes`].
    pub fn debug_values_dropped(&self) -> usize {
        self.dropped
    }

    /// Forgets every recorded block and value.
    pub fn clear(&mut self) {
        self.runs.clear();
        self.debug_buffer.clear();
        self.dropped = 0;
    }

    /// Per operator, delegate and delegate node, over every execution: count, total,
    /// mean, p50 and p90, sorted by total time (largest first). Delegate time includes
    /// its nodes', so shares of nodes and their delegate overlap.
    pub fn operator_stats(&self) -> Vec<OperatorStats> {
        let mut by: BTreeMap<(u8, String), (EventKind, Vec<f64>)> = BTreeMap::new();
        let mut total_ms = 0.0;
        for run in self.runs.iter().filter(|r| r.name == "Execute") {
            for e in &run.profile {
                let ms = e.end_ns.saturating_sub(e.start_ns) as f64 / 1e6;
                if e.kind == EventKind::Method {
                    total_ms += ms;
                    continue;
                }
                let name = match e.kind {
                    EventKind::Node => strip_count(&e.name).to_string(),
                    _ => e.name.clone(),
                };
                by.entry((e.kind as u8, name))
                    .or_insert_with(|| (e.kind, Vec::new()))
                    .1
                    .push(ms);
            }
        }
        let mut rows: Vec<OperatorStats> = by
            .into_iter()
            .map(|((_, name), (kind, mut t))| {
                t.sort_by(f64::total_cmp);
                let total: f64 = t.iter().sum();
                OperatorStats {
                    kind,
                    name,
                    count: t.len(),
                    total_ms: total,
                    mean_ms: total / t.len() as f64,
                    p50_ms: percentile(&t, 0.5),
                    p90_ms: percentile(&t, 0.9),
                    share: if total_ms > 0.0 {
                        100.0 * total / total_ms
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        rows
    }

    /// Total time of the executions recorded, in ms.
    pub fn executions_ms(&self) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.name == "Execute")
            .flat_map(|r| r.profile.iter().filter(|e| e.kind == EventKind::Method))
            .map(|e| e.end_ns.saturating_sub(e.start_ns) as f64 / 1e6)
            .collect()
    }

    fn wants(&self, pc: usize, name: &str) -> bool {
        let f = &self.options.values;
        f.enabled
            && f.instructions.is_none_or(|(a, b)| (a..b).contains(&pc))
            && f.operator.as_deref().is_none_or(|o| name.contains(o))
    }

    fn keep(&mut self, v: &EValue) -> Option<DebugValue> {
        Some(match v {
            EValue::Tensor(t) => self.keep_tensor(t)?,
            EValue::TensorList(ts) => DebugValue::TensorList(
                ts.iter()
                    .map(|t| self.keep_tensor(t))
                    .collect::<Option<_>>()?,
            ),
            EValue::Int(i) => DebugValue::Int(*i),
            EValue::Double(d) => DebugValue::Double(*d),
            EValue::Bool(b) => DebugValue::Bool(*b),
            _ => return None,
        })
    }

    /// Records an instruction's output (or nothing, when `keep` dropped it).
    fn push_value(&mut self, chain: usize, pc: usize, value: Option<DebugValue>) {
        let Some(value) = value else { return };
        let name = self.current_name.clone();
        if let Some(run) = self.current.as_mut() {
            run.debug.push(DebugEvent {
                chain: Some(chain),
                instruction: Some(pc),
                name,
                value,
                method_output: false,
                after: run.profile.len(),
            });
        }
    }

    /// Appends `t`'s bytes to the debug buffer, or `None` (counted) when they would
    /// pass the limit or cannot be allocated.
    fn keep_tensor(&mut self, t: &Tensor) -> Option<DebugValue> {
        let bytes = t.bytes();
        let len = self.debug_buffer.len();
        let pad = if bytes.is_empty() {
            0
        } else {
            (DEBUG_ALIGN - len % DEBUG_ALIGN) % DEBUG_ALIGN
        };
        let grow = pad + bytes.len();
        if len.saturating_add(grow) > self.options.max_debug_bytes
            || self.debug_buffer.try_reserve(grow).is_err()
        {
            self.dropped += 1;
            return None;
        }
        self.debug_buffer.resize(len + pad, 0);
        let offset = self.debug_buffer.len();
        self.debug_buffer.extend_from_slice(bytes);
        Some(DebugValue::Tensor {
            dtype: t.dtype(),
            sizes: t.sizes().to_vec(),
            offset,
            nbytes: bytes.len(),
        })
    }
}

/// `Conv2d #3` -> `Conv2d`.
fn strip_count(name: &str) -> &str {
    match name.rfind(" #") {
        Some(i) if name[i + 2..].bytes().all(|b| b.is_ascii_digit()) => &name[..i],
        _ => name,
    }
}

/// Linear interpolation between the closest ranks, as NumPy's default.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Observer for Recorder {
    fn run_begin(&mut self, method: &str) {
        self.current = Some(Run {
            name: "Execute".into(),
            method: method.into(),
            ..Run::default()
        });
        self.run_start = self.now();
    }

    fn run_end(&mut self, _method: &str) {
        let end = self.now();
        if let Some(mut run) = self.current.take() {
            run.profile.push(ProfileEvent {
                kind: EventKind::Method,
                name: "Method::execute".into(),
                chain: None,
                instruction: None,
                debug_handle: None,
                start_ns: self.run_start,
                end_ns: end,
            });
            self.runs.push(run);
        }
    }

    fn delegate_begin(&mut self, chain: usize, pc: usize) {
        self.begin(chain, pc);
        self.in_delegate = true;
    }

    fn begin(&mut self, _chain: usize, _pc: usize) {
        self.in_delegate = false;
        self.node_counts.clear();
        self.instr_start = self.now();
    }

    fn end(&mut self, chain: usize, pc: usize, name: &str) {
        let end = self.now();
        let kind = if core::mem::take(&mut self.in_delegate) {
            EventKind::Delegate
        } else {
            EventKind::Operator
        };
        let start = self.instr_start;
        if let Some(run) = self.current.as_mut() {
            run.profile.push(ProfileEvent {
                kind,
                name: name.into(),
                chain: Some(chain),
                instruction: Some(pc),
                debug_handle: None,
                start_ns: start,
                end_ns: end,
            });
        }
    }

    fn node_begin(&mut self, _chain: usize, _pc: usize) {
        self.node_start = self.now();
    }

    fn node_end(&mut self, chain: usize, pc: usize, name: &str, debug_handle: Option<u32>) {
        let end = self.now();
        let k = self.node_counts.entry(name.to_string()).or_insert(0);
        *k += 1;
        let name = alloc::format!("{name} #{k}");
        let start = self.node_start;
        if let Some(run) = self.current.as_mut() {
            run.profile.push(ProfileEvent {
                kind: EventKind::Node,
                name,
                chain: Some(chain),
                instruction: Some(pc),
                debug_handle,
                start_ns: start,
                end_ns: end,
            });
        }
    }

    fn wants_values(&mut self, _chain: usize, pc: usize, name: &str) -> bool {
        self.keep_values = self.wants(pc, name);
        if self.keep_values {
            self.current_name.clear();
            self.current_name.push_str(name);
        }
        self.keep_values
    }

    fn value(&mut self, chain: usize, pc: usize, value: &EValue) {
        if !self.keep_values || self.current.is_none() {
            return;
        }
        // ExecuTorch logs a list of outputs (native_layer_norm's three, topk's two) as
        // one debug event per tensor, and the Inspector pairs them with the ETRecord's
        // outputs in that form.
        if let EValue::TensorList(ts) = value {
            for t in ts {
                let v = self.keep_tensor(t);
                self.push_value(chain, pc, v);
            }
        } else {
            let v = self.keep(value);
            self.push_value(chain, pc, v);
        }
    }

    fn wants_method_outputs(&mut self) -> bool {
        self.options.values.enabled && self.options.method_outputs
    }

    fn method_output(&mut self, _index: usize, value: &EValue) {
        let Some(v) = self.keep(value) else { return };
        // `run_end` has moved the run into `runs`.
        if let Some(run) = self.runs.last_mut() {
            run.debug.push(DebugEvent {
                chain: None,
                instruction: None,
                name: String::new(),
                value: v,
                method_output: true,
                after: run.profile.len(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_buffer_stops_at_its_limit_and_counts_what_it_drops() {
        let mut r = Recorder::new(RecorderOptions {
            values: ValueFilter {
                enabled: true,
                ..Default::default()
            },
            max_debug_bytes: 100,
            ..Default::default()
        });
        let t = EValue::Tensor(Tensor::from_slice(&[1.0f32; 10], &[10]).unwrap());
        r.run_begin("forward");
        for pc in 0..3 {
            r.begin(0, pc);
            r.end(0, pc, "aten::add.out");
            assert!(r.wants_values(0, pc, "aten::add.out"));
            r.value(0, pc, &t);
        }
        r.run_end("forward");
        // 40 bytes, then 24 of padding and 40 more (104) would pass 100.
        assert_eq!(r.debug_buffer().len(), 40);
        assert_eq!(r.debug_values_dropped(), 2);
        assert_eq!(r.runs()[0].debug.len(), 1);
        r.clear();
        assert_eq!(r.debug_values_dropped(), 0);
    }

    #[test]
    fn a_list_of_outputs_is_logged_one_tensor_at_a_time() {
        let mut r = Recorder::new(RecorderOptions {
            values: ValueFilter {
                enabled: true,
                ..Default::default()
            },
            ..Default::default()
        });
        let a = Tensor::from_slice(&[1.0f32; 6], &[2, 3]).unwrap();
        let b = Tensor::from_slice(&[2.0f32; 2], &[2, 1]).unwrap();
        r.run_begin("forward");
        r.begin(0, 4);
        r.end(0, 4, "aten::native_layer_norm.out");
        assert!(r.wants_values(0, 4, "aten::native_layer_norm.out"));
        r.value(0, 4, &EValue::TensorList(vec![a, b.clone(), b]));
        r.run_end("forward");
        let debug = &r.runs()[0].debug;
        let sizes: Vec<_> = debug
            .iter()
            .map(|e| match &e.value {
                DebugValue::Tensor { sizes, .. } => sizes.clone(),
                other => panic!("expected a tensor, found {other:?}"),
            })
            .collect();
        assert_eq!(sizes, [vec![2, 3], vec![2, 1], vec![2, 1]]);
        assert!(debug.iter().all(|e| e.instruction == Some(4)));
    }
}
