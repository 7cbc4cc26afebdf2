//! Running a planned graph: shapes are inferred per call from the inputs' actual sizes,
//! within the sizes the graph declares, and each step writes its output in place.

use alloc::format;
use alloc::vec::Vec;

use ptero_core::{KernelArgs, ScalarType};
use ptero_runtime::{DelegateHandle, NodeObserver};

use crate::graph::MAX_DIMS;
use crate::plan::{Executor, Shape, Slot, Step};
use crate::quant::Kind;
use crate::step::{shape_err, Io};

impl Executor {
    fn execute_inner(
        &mut self,
        args: &mut KernelArgs<'_>,
        mut nodes: Option<&mut dyn NodeObserver>,
    ) -> ptero_core::Result<()> {
        for &(v, a) in &self.inputs {
            let t = args.tensor(a)?;
            let want = self
                .casts_in
                .iter()
                .find(|c| c.0 == v)
                .map_or(ScalarType::Float, |c| c.2);
            if t.dtype() != want {
                return Err(ptero_core::Error::Dtype {
                    arg: a,
                    expected: format!("{want:?} (the delegate's input)"),
                    found: t.dtype(),
                });
            }
            let s = Shape::of(t.sizes()).ok_or_else(|| {
                ptero_core::Error::Shape(format!("XNNPACK input {a}: more than {MAX_DIMS} dims"))
            })?;
            if !s.sane() || s.numel().is_none_or(|n| n > self.bounds[v]) {
                return Err(ptero_core::Error::Shape(format!(
                    "XNNPACK input {a}: shape {:?} is larger than the delegate's bound of {} elements",
                    s.d(),
                    self.bounds[v]
                )));
            }
            self.shapes[v] = s;
        }
        let Executor {
            slots,
            bounds,
            shapes,
            steps,
            step_node,
            buffers,
            consts,
            kinds,
            casts_in,
            casts_out,
            node_handles,
            ..
        } = self;
        args.release_views();
        for &(v, a, t) in casts_in.iter() {
            let n = shapes[v].numel().unwrap_or(0);
            let Slot::Buf(b) = slots[v] else { continue };
            let dst = buffers[b].get_mut(..n).ok_or_else(|| no_room(v))?;
            let src = args.tensor(a)?;
            if t == ScalarType::Half {
                for (d, h) in dst.iter_mut().zip(src.data::<half::f16>()?) {
                    *d = h.to_f32();
                }
            } else {
                for (d, h) in dst.iter_mut().zip(src.data::<half::bf16>()?) {
                    *d = h.to_f32();
                }
            }
        }
        // Read access to everything but the buffers a step writes.
        macro_rules! io {
            () => {
                Io {
                    args,
                    slots,
                    buffers,
                    consts,
                    shapes,
                    kinds,
                    bounds,
                }
            };
        }
        for (step, &at) in steps.iter().zip(step_node.iter()) {
            args.check_interrupt()?;
            // Each step views its operands afresh: an output written by one step may be
            // read by the next.
            args.release_views();
            if let Some(o) = nodes.as_deref_mut() {
                o.node_begin();
            }
            let out = step.out();
            let shape = step.infer(&io!(), at)?;
            let n = shape.numel().unwrap_or(usize::MAX);
            if n > bounds[out] || !shape.sane() {
                return Err(shape_err(
                    at,
                    format!(
                        "output {:?} exceeds its declared {} elements",
                        shape.d(),
                        bounds[out]
                    ),
                ));
            }
            shapes[out] = shape;
            let in_place = match *step {
                Step::Reshape { x, .. } => slots[x] == slots[out],
                _ => false,
            };
            match slots[out] {
                // The planner gave the output its input's storage (see `plan_buffers`).
                Slot::Buf(_) | Slot::Arg(_) if in_place => {}
                Slot::Buf(b) => {
                    let mut o = core::mem::take(&mut buffers[b]);
                    let mut m = mid_buffer(step, slots, buffers);
                    // Quantized values are packed; their steps find their own extent.
                    let whole = o.len();
                    let len = if kinds[out] == Kind::F32 { n } else { whole };
                    let y = o.get_mut(..len).ok_or_else(|| no_room(out))?;
                    let r = step.run(&io!(), y, m.as_mut().map(|(_, v)| &mut v[..]), at);
                    buffers[b] = o;
                    if let Some((mb, v)) = m {
                        buffers[mb] = v;
                    }
                    r?;
                }
                Slot::Arg(a) => {
                    args.resize(a, shape.d())?;
                    let mut m = mid_buffer(step, slots, buffers);
                    let io = io!();
                    let mut t = args.out(a)?;
                    let y = t.data::<f32>()?;
                    let len = y.len();
                    let y = y.get_mut(..n).ok_or_else(|| {
                        ptero_core::Error::OutOfBounds(format!(
                            "XNNPACK output {a}: {len} elements, {n} needed"
                        ))
                    })?;
                    let r = step.run(&io, y, m.as_mut().map(|(_, v)| &mut v[..]), at);
                    if let Some((mb, v)) = m {
                        buffers[mb] = v;
                    }
                    r?;
                }
                Slot::Const(_) | Slot::Unused => {
                    return Err(shape_err(at, "writes a value without memory".into()))
                }
            }
            if let Some(o) = nodes.as_deref_mut() {
                let (index, name) = at;
                let name = name.strip_prefix("XNN").unwrap_or(name);
                o.node_end(name, node_handles.get(index).copied());
            }
        }
        args.release_views();
        for &(v, a, t) in casts_out.iter() {
            let s = shapes[v];
            let n = s.numel().unwrap_or(0);
            let Slot::Buf(b) = slots[v] else { continue };
            let src = buffers[b].get(..n).ok_or_else(|| no_room(v))?;
            args.resize(a, s.d())?;
            let mut o = args.out(a)?;
            if t == ScalarType::Half {
                for (d, x) in o.data::<half::f16>()?.iter_mut().zip(src) {
                    *d = half::f16::from_f32(*x);
                }
            } else {
                for (d, x) in o.data::<half::bf16>()?.iter_mut().zip(src) {
                    *d = half::bf16::from_f32(*x);
                }
            }
        }
        Ok(())
    }
}

fn no_room(v: usize) -> ptero_core::Error {
    ptero_core::Error::OutOfBounds(format!("XNNPACK value {v}: its buffer is too small"))
}

/// The intermediate buffer of a fused pair, taken out of `buffers` while the step runs
/// (put back by the caller).
fn mid_buffer(step: &Step, slots: &[Slot], buffers: &mut [Vec<f32>]) -> Option<(usize, Vec<f32>)> {
    match step {
        Step::PwDw { pw, .. } => match slots[pw.out] {
            Slot::Buf(b) => Some((b, core::mem::take(&mut buffers[b]))),
            _ => None,
        },
        _ => None,
    }
}

impl DelegateHandle for Executor {
    fn execute(&mut self, args: &mut KernelArgs<'_>) -> ptero_core::Result<()> {
        self.execute_inner(args, None)
    }

    fn execute_observed(
        &mut self,
        args: &mut KernelArgs<'_>,
        nodes: &mut dyn NodeObserver,
    ) -> ptero_core::Result<()> {
        self.execute_inner(args, Some(nodes))
    }

    fn scratch_floats(&self) -> usize {
        let fused = self.steps.iter().any(|s| matches!(s, Step::PwDw { .. }));
        let conv = fused || self.steps.iter().any(|s| matches!(s, Step::Conv(_)));
        let gemm = self
            .steps
            .iter()
            .any(|s| matches!(s, Step::FullyConnected { .. } | Step::BatchMatMul { .. }));
        let base = match (conv, gemm) {
            (true, _) => ptero_gemm::conv_scratch_floats().max(ptero_gemm::scratch_floats()),
            (false, true) => ptero_gemm::scratch_floats(),
            _ => 0,
        };
        if fused {
            base.max(ptero_gemm::fused_scratch_floats())
        } else {
            base
        }
    }
}
