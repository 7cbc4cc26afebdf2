//! ETDump files (`ED00`): what a [`Recorder`] saw, in the official runtime's format, so
//! that `executorch.devtools.Inspector(etdump_path=..., etrecord=..., debug_buffer_path=...)`
//! reads them.
//!
//! The layout follows what ExecuTorch's `ETDumpGen` writes (`etdump_flatcc.cpp`):
//! a size-prefixed flatbuffer; a `Default` block per method load (`Method::init`,
//! `Program::load_method`); an `Execute` block per execution holding, per kernel call, its
//! output values, `native_call_<op>` and `OPERATOR_CALL`, per delegate call its nodes
//! (`delegate_debug_id_str` `"<node> #k"`), its arguments and `DELEGATE_CALL`, then
//! `Method::execute` and the method's outputs (`output` true, chain `u64::MAX`). Times are
//! nanoseconds, the Inspector's default source time scale. Tensor bytes are not in the
//! ETDump but in the debug buffer ([`Recorder::debug_buffer`]), at 64-byte aligned offsets.

use alloc::string::String;
use alloc::vec::Vec;

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use crate::etdump_generated::etdump as fb;
use crate::etdump_generated::executorch_flatbuffer::ScalarType as FbScalar;
use crate::recorder::{DebugEvent, DebugValue, EventKind, ProfileEvent, Recorder, Run};

/// The file identifier, at bytes 8..12 (after the size prefix and root offset).
pub const ETDUMP_IDENTIFIER: &str = "ED00";

/// Options of [`write_etdump`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EtdumpOptions {
    /// Write each load block's planned buffers as allocators and allocation events. The
    /// official runtime never writes them and its Inspector (1.5) fails on a file that has
    /// any, so they are off by default.
    pub allocations: bool,
}

/// The ETDump of everything `recorder` holds.
///
/// ```
/// use ptero_devtools::{write_etdump, EtdumpOptions, Recorder, RecorderOptions};
/// let r = Recorder::new(RecorderOptions::default());
/// let bytes = write_etdump(&r, EtdumpOptions::default());
/// assert_eq!(&bytes[8..12], b"ED00");
/// ```
pub fn write_etdump(recorder: &Recorder, options: EtdumpOptions) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(4096);
    let runs: Vec<_> = recorder
        .runs()
        .iter()
        // The Inspector cannot tabulate a block without events.
        .filter(|r| !r.profile.is_empty() || !r.debug.is_empty())
        .map(|r| run_data(&mut b, r, options))
        .collect();
    let run_data = b.create_vector(&runs);
    let root = fb::ETDump::create(
        &mut b,
        &fb::ETDumpArgs {
            version: 0,
            run_data: Some(run_data),
        },
    );
    b.finish_size_prefixed(root, Some(ETDUMP_IDENTIFIER));
    b.finished_data().to_vec()
}

type Events<'a> = Vec<WIPOffset<fb::Event<'a>>>;

fn run_data<'a>(
    b: &mut FlatBufferBuilder<'a>,
    run: &Run,
    options: EtdumpOptions,
) -> WIPOffset<fb::RunData<'a>> {
    let mut events: Events<'a> = Vec::new();
    let allocators = if options.allocations && !run.allocations.is_empty() {
        let names: Vec<_> = run
            .allocations
            .iter()
            .map(|(n, _)| {
                let name = b.create_string(n);
                fb::Allocator::create(b, &fb::AllocatorArgs { name: Some(name) })
            })
            .collect();
        for (i, (_, bytes)) in run.allocations.iter().enumerate() {
            let a = fb::AllocationEvent::create(
                b,
                &fb::AllocationEventArgs {
                    // 1-based, as `ETDumpGen::track_allocator` numbers them.
                    allocator_id: i32::try_from(i + 1).unwrap_or(i32::MAX),
                    allocation_size: *bytes,
                },
            );
            events.push(fb::Event::create(
                b,
                &fb::EventArgs {
                    allocation_event: Some(a),
                    ..Default::default()
                },
            ));
        }
        Some(b.create_vector(&names))
    } else {
        None
    };
    // Debug events are in recording order: each instruction's values follow its event.
    let mut di = 0usize;
    for (i, p) in run.profile.iter().enumerate() {
        let from = di;
        while run
            .debug
            .get(di)
            .is_some_and(|d| d.after <= i + 1 && !d.method_output)
        {
            di += 1;
        }
        let own = &run.debug[from..di];
        match p.kind {
            EventKind::Operator => {
                for d in own {
                    events.push(debug_event(b, d));
                }
                let native = native_call_name(&p.name);
                events.push(profile_event(b, p, Some(&native), None));
                events.push(profile_event(b, p, Some("OPERATOR_CALL"), None));
            }
            EventKind::Delegate => {
                for d in own {
                    events.push(debug_event(b, d));
                }
                events.push(profile_event(b, p, Some("DELEGATE_CALL"), None));
            }
            EventKind::Node => events.push(profile_event(b, p, None, Some(&p.name))),
            EventKind::Method => events.push(profile_event(b, p, Some(&p.name), None)),
        }
    }
    for d in run.debug.iter().filter(|d| d.method_output) {
        events.push(debug_event(b, d));
    }
    let name = b.create_string(&run.name);
    let events = b.create_vector(&events);
    fb::RunData::create(
        b,
        &fb::RunDataArgs {
            name: Some(name),
            bundled_input_index: -1,
            allocators,
            events: Some(events),
        },
    )
}

/// Namespaces whose official kernels are generated from YAML; their wrappers name the
/// event `native_call_<op>` without the namespace. Kernels registered by hand with
/// `EXECUTORCH_LIBRARY` (`llama::`, `torchao::`, ...) use their full name.
const GENERATED_NAMESPACES: &[&str] = &["aten::", "quantized_decomposed::", "dim_order_ops::"];

/// `aten::add.out` -> `native_call_add.out`, the official kernel wrappers' event name.
fn native_call_name(op: &str) -> String {
    GENERATED_NAMESPACES
        .iter()
        .find_map(|ns| op.strip_prefix(ns))
        .map_or_else(|| op.into(), |rest| alloc::format!("native_call_{rest}"))
}

fn index(i: Option<usize>, unset: i32) -> i32 {
    i.map_or(unset, |v| i32::try_from(v).unwrap_or(i32::MAX))
}

fn profile_event<'a>(
    b: &mut FlatBufferBuilder<'a>,
    p: &ProfileEvent,
    name: Option<&str>,
    delegate_id: Option<&str>,
) -> WIPOffset<fb::Event<'a>> {
    let name = name.map(|n| b.create_string(n));
    let delegate_str = delegate_id.map(|n| b.create_string(n));
    // The node's debug handle, little-endian, as the delegate's metadata.
    let metadata = delegate_id.map(|_| {
        let bytes = p.debug_handle.map(u32::to_le_bytes);
        b.create_vector(bytes.as_ref().map_or(&[][..], |x| &x[..]))
    });
    let (chain, instruction) = match p.kind {
        // Framework events carry ExecuTorch's unset ids: chain -1, debug handle 0.
        EventKind::Method => (-1, 0),
        _ => (index(p.chain, -1), index(p.instruction, 0)),
    };
    let e = fb::ProfileEvent::create(
        b,
        &fb::ProfileEventArgs {
            name,
            chain_index: chain,
            instruction_id: instruction,
            delegate_debug_id_int: -1,
            delegate_debug_id_str: delegate_str,
            delegate_debug_metadata: metadata,
            start_time: p.start_ns,
            end_time: p.end_ns,
        },
    );
    fb::Event::create(
        b,
        &fb::EventArgs {
            profile_event: Some(e),
            ..Default::default()
        },
    )
}

fn debug_event<'a>(b: &mut FlatBufferBuilder<'a>, d: &DebugEvent) -> WIPOffset<fb::Event<'a>> {
    let entry = value(b, &d.value, d.method_output);
    // The official runtime names no debug event; a name would also rename the profile
    // events of its instruction in the Inspector's table.
    let (chain, instruction) = if d.method_output {
        (u64::MAX, 0)
    } else {
        (
            d.chain.map_or(u64::MAX, |c| c as u64),
            index(d.instruction, 0),
        )
    };
    let e = fb::DebugEvent::create(
        b,
        &fb::DebugEventArgs {
            chain_index: chain,
            instruction_id: instruction,
            debug_entry: Some(entry),
            delegate_debug_id_int: -1,
            delegate_debug_id_str: None,
            name: None,
        },
    );
    fb::Event::create(
        b,
        &fb::EventArgs {
            debug_event: Some(e),
            ..Default::default()
        },
    )
}

fn tensor<'a>(b: &mut FlatBufferBuilder<'a>, v: &DebugValue) -> Option<WIPOffset<fb::Tensor<'a>>> {
    let DebugValue::Tensor {
        dtype,
        sizes,
        offset,
        nbytes,
    } = v
    else {
        return None;
    };
    let dims: Vec<i64> = sizes.iter().map(|&s| s as i64).collect();
    let mut strides = alloc::vec![0i64; sizes.len()];
    let mut acc = 1i64;
    for (st, &d) in strides.iter_mut().zip(&dims).rev() {
        *st = acc;
        acc = acc.saturating_mul(d);
    }
    let sizes = b.create_vector(&dims);
    let strides = b.create_vector(&strides);
    Some(fb::Tensor::create(
        b,
        &fb::TensorArgs {
            scalar_type: FbScalar(*dtype as i8),
            sizes: Some(sizes),
            strides: Some(strides),
            // Empty tensors have no data: ExecuTorch writes (size_t)-1.
            offset: if *nbytes == 0 { -1 } else { *offset as i64 },
        },
    ))
}

fn value<'a>(
    b: &mut FlatBufferBuilder<'a>,
    v: &DebugValue,
    output: bool,
) -> WIPOffset<fb::Value<'a>> {
    let output = output.then(|| fb::Bool::create(b, &fb::BoolArgs { bool_val: true }));
    let mut args = fb::ValueArgs {
        output,
        ..Default::default()
    };
    match v {
        DebugValue::Tensor { .. } => {
            args.val = fb::ValueType::Tensor;
            args.tensor = tensor(b, v);
        }
        DebugValue::TensorList(items) => {
            let ts: Vec<_> = items.iter().filter_map(|t| tensor(b, t)).collect();
            let tensors: WIPOffset<Vector<'a, ForwardsUOffset<fb::Tensor<'a>>>> =
                b.create_vector(&ts);
            args.val = fb::ValueType::TensorList;
            args.tensor_list = Some(fb::TensorList::create(
                b,
                &fb::TensorListArgs {
                    tensors: Some(tensors),
                },
            ));
        }
        DebugValue::Int(i) => {
            args.val = fb::ValueType::Int;
            args.int_value = Some(fb::Int::create(b, &fb::IntArgs { int_val: *i }));
        }
        DebugValue::Double(d) => {
            args.val = fb::ValueType::Double;
            args.double_value = Some(fb::Double::create(b, &fb::DoubleArgs { double_val: *d }));
        }
        DebugValue::Bool(x) => {
            args.val = fb::ValueType::Bool;
            args.bool_value = Some(fb::Bool::create(b, &fb::BoolArgs { bool_val: *x }));
        }
    }
    fb::Value::create(b, &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_events_are_named_as_the_official_wrappers_name_them() {
        for (op, event) in [
            ("aten::add.out", "native_call_add.out"),
            (
                "quantized_decomposed::quantize_per_tensor.out",
                "native_call_quantize_per_tensor.out",
            ),
            (
                "dim_order_ops::_clone_dim_order.out",
                "native_call__clone_dim_order.out",
            ),
            ("llama::custom_sdpa.out", "llama::custom_sdpa.out"),
        ] {
            assert_eq!(native_call_name(op), event, "{op}");
        }
    }
    use crate::RecorderOptions;
    use ptero_runtime::{EValue, Observer, Tensor};

    #[test]
    fn events_come_out_in_the_official_order_and_read_back() {
        let mut r = Recorder::new(RecorderOptions {
            values: crate::ValueFilter {
                enabled: true,
                ..Default::default()
            },
            ..Default::default()
        });
        r.record_load("forward", 1, 2, &[64]);
        r.run_begin("forward");
        r.begin(0, 0);
        r.end(0, 0, "aten::add.out");
        assert!(r.wants_values(0, 0, "aten::add.out"));
        let t = EValue::Tensor(Tensor::from_slice(&[1.0f32, 2.0], &[2]).unwrap());
        r.value(0, 0, &t);
        r.delegate_begin(0, 1);
        r.node_begin(0, 1);
        r.node_end(0, 1, "Conv2d", Some(7));
        r.end(0, 1, "XnnpackBackend_0");
        r.run_end("forward");
        r.method_output(0, &t);
        let bytes = write_etdump(&r, EtdumpOptions::default());
        assert_eq!(&bytes[8..12], b"ED00");
        let root = fb::size_prefixed_root_as_etdump(&bytes).unwrap();
        let runs = root.run_data().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs.get(0).name(), Some("Default"));
        let ex = runs.get(1);
        assert_eq!(ex.name(), Some("Execute"));
        let events = ex.events().unwrap();
        let describe: Vec<String> = events
            .iter()
            .map(|e| {
                if let Some(p) = e.profile_event() {
                    alloc::format!(
                        "P {} {} {}",
                        p.name().or(p.delegate_debug_id_str()).unwrap_or("?"),
                        p.chain_index(),
                        p.instruction_id()
                    )
                } else if let Some(d) = e.debug_event() {
                    let out = d
                        .debug_entry()
                        .and_then(|v| v.output())
                        .is_some_and(|b| b.bool_val());
                    alloc::format!(
                        "D {} {} {}",
                        d.chain_index() as i64,
                        d.instruction_id(),
                        out
                    )
                } else {
                    "A".into()
                }
            })
            .collect();
        assert_eq!(
            describe,
            [
                "D 0 0 false",
                "P native_call_add.out 0 0",
                "P OPERATOR_CALL 0 0",
                "P Conv2d #1 0 1",
                "P DELEGATE_CALL 0 1",
                "P Method::execute -1 0",
                "D -1 0 true",
            ]
        );
        let t = events
            .get(0)
            .debug_event()
            .unwrap()
            .debug_entry()
            .unwrap()
            .tensor()
            .unwrap();
        assert_eq!(t.scalar_type().0, 6);
        assert_eq!(t.sizes().unwrap().iter().collect::<Vec<_>>(), [2]);
        let off = t.offset() as usize;
        assert_eq!(
            &r.debug_buffer()[off..off + 8],
            bytemuck::cast_slice::<f32, u8>(&[1.0, 2.0])
        );
        assert_eq!(off % 64, 0);
    }
}
