//! `ptero inspect`: a readable description of a program.

use std::borrow::Cow;
use std::path::Path;

use ptero::{Dynamism, Error, IoMeta, MethodMeta};

use crate::LoadArgs;

/// A name from the file, printable on one line: empty names are shown as such, and
/// control characters (newlines, terminal escapes) are escaped.
fn label(name: &str) -> Cow<'_, str> {
    if name.is_empty() {
        Cow::Borrowed("'' (unnamed)")
    } else if name.chars().any(char::is_control) {
        Cow::Owned(format!("{name:?}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Planned buffers, summed without overflow (their sizes come from the file).
fn planned_bytes(m: &MethodMeta) -> u64 {
    m.planned_buffers
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b as u64))
}

/// Input and output tensors outside planned memory: the runtime gives each a buffer of
/// its own, sized to its bound, when the method loads.
fn unplanned_io(m: &MethodMeta) -> (usize, u64) {
    m.inputs
        .iter()
        .chain(&m.outputs)
        .filter_map(|io| io.tensor.as_ref().filter(|t| !t.planned))
        .fold((0, 0u64), |(n, b), t| {
            (n + 1, b.saturating_add(t.nbytes as u64))
        })
}

fn dynamism(d: Dynamism) -> &'static str {
    match d {
        Dynamism::Static => "static",
        Dynamism::DynamicBound => "dynamic (bounded)",
        Dynamism::DynamicUnbound => "dynamic (unbounded)",
    }
}

fn io_line(io: &IoMeta) -> String {
    match &io.tensor {
        Some(t) => {
            let layout = if t
                .dim_order
                .iter()
                .enumerate()
                .all(|(i, &d)| i == d as usize)
            {
                String::new()
            } else {
                format!(" dim_order {:?}", t.dim_order)
            };
            let memory = if t.planned {
                String::new()
            } else {
                format!(
                    ", not planned ({} allocated at load)",
                    human(t.nbytes as u64)
                )
            };
            format!(
                "{:<9} {:<20} {}{}{}",
                t.dtype.name(),
                format!("{:?}", t.sizes),
                dynamism(t.dynamism),
                layout,
                memory
            )
        }
        None => match &io.value {
            Some(v) => format!("{} = {}", io.tag.name(), label(v)),
            None => io.tag.name().to_string(),
        },
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < 3 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn io_json(io: &IoMeta) -> serde_json::Value {
    match &io.tensor {
        Some(t) => serde_json::json!({
            "kind": "Tensor", "dtype": t.dtype.name(), "shape": t.sizes, "dim_order": t.dim_order,
            "dynamism": dynamism(t.dynamism), "planned": t.planned, "nbytes": t.nbytes,
        }),
        None => serde_json::json!({"kind": io.tag.name(), "value": io.value}),
    }
}

/// Per delegate of a method: its backend id and what its graph holds (XNNPACK
/// delegates), or why it cannot be read.
fn delegate_summaries(
    program: &ptero::Program,
    method: &str,
) -> Vec<(String, Result<ptero::XnnpackSummary, String>)> {
    let named = |k: &str| program.named_data(k);
    match program.delegate_blobs(method) {
        Ok(blobs) => blobs
            .into_iter()
            .map(|(id, data)| {
                let s = if id == "XnnpackBackend" {
                    ptero::XnnpackSummary::of(data, &named).map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "{} bytes, not a backend this build reads",
                        data.len()
                    ))
                };
                (id.to_string(), s)
            })
            .collect(),
        Err(e) => vec![(String::new(), Err(e.to_string()))],
    }
}

fn delegate_json(program: &ptero::Program, method: &str) -> serde_json::Value {
    serde_json::Value::Array(
        delegate_summaries(program, method)
            .into_iter()
            .map(|(id, s)| match s {
                Ok(s) => serde_json::json!({
                    "backend": id, "version": s.version, "nodes": s.nodes, "values": s.values,
                    "inputs": s.inputs, "outputs": s.outputs, "node_types": s.node_types,
                    "datatypes": s.datatypes, "constant_bytes": s.constant_bytes,
                    "named_constants": s.named_constants,
                }),
                Err(e) => serde_json::json!({"backend": id, "error": e}),
            })
            .collect(),
    )
}

pub fn inspect(model: &Path, json: bool, load: &LoadArgs) -> Result<(), Error> {
    let program = load.open(model)?;
    let pte = program.pte()?;
    let file_size = program.bytes().len() as u64;
    let segments: Vec<(u64, u64)> = pte
        .program()
        .segments()
        .into_iter()
        .flatten()
        .map(|s| (s.offset(), s.size_()))
        .collect();
    if json {
        let methods: Vec<_> = program
            .method_metas()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "inputs": m.inputs.iter().map(io_json).collect::<Vec<_>>(),
                    "outputs": m.outputs.iter().map(io_json).collect::<Vec<_>>(),
                    "operators": m.operators,
                    "delegates": m.backends,
                    "delegate_graphs": delegate_json(&program, &m.name),
                    "instructions": m.num_instructions,
                    "planned_buffers": m.planned_buffers,
                    "planned_bytes": planned_bytes(m),
                    "unplanned_io_tensors": unplanned_io(m).0,
                    "unplanned_io_bytes": unplanned_io(m).1,
                })
            })
            .collect();
        let o = serde_json::json!({
            "file": model.display().to_string(),
            "file_size": file_size,
            "program_size": pte.program_len(),
            "segments": segments.iter().map(|(o, s)| serde_json::json!({"offset": o, "size": s})).collect::<Vec<_>>(),
            "methods": methods,
        });
        outln!("{o}");
        return Ok(());
    }
    outln!(
        "{}  ({}, flatbuffer {}, {} segment(s))",
        model.display(),
        human(file_size),
        human(pte.program_len() as u64),
        segments.len()
    );
    for (i, (off, size)) in segments.iter().enumerate() {
        outln!("  segment {i}: {} at offset {off}", human(*size));
    }
    let kernels = ptero::default_kernels();
    for m in program.method_metas() {
        outln!();
        outln!(
            "method {}  ({} instructions, {} values)",
            label(&m.name),
            m.num_instructions,
            m.num_values
        );
        outln!("  inputs:");
        for (i, io) in m.inputs.iter().enumerate() {
            outln!("    {i:>3}  {}", io_line(io));
        }
        outln!("  outputs:");
        for (i, io) in m.outputs.iter().enumerate() {
            outln!("    {i:>3}  {}", io_line(io));
        }
        outln!(
            "  planned memory: {} in {} buffer(s) {:?}",
            human(planned_bytes(m)),
            m.planned_buffers.len(),
            m.planned_buffers
        );
        let (n, bytes) = unplanned_io(m);
        if n > 0 {
            outln!(
                "  input/output buffers (not planned, allocated at load): {} for {n} tensor(s)",
                human(bytes)
            );
        }
        if m.backends.is_empty() {
            outln!("  delegates: none");
        } else {
            let names: Vec<_> = m.backends.iter().map(|b| label(b)).collect();
            outln!("  delegates: {}", names.join(", "));
            for (i, (id, s)) in delegate_summaries(&program, &m.name).iter().enumerate() {
                match s {
                    Ok(s) => {
                        outln!(
                            "    {i}: {} graph {}: {} nodes, {} values ({} in, {} out), constants {}{}",
                            label(id),
                            label(&s.version),
                            s.nodes,
                            s.values,
                            s.inputs,
                            s.outputs,
                            human(s.constant_bytes),
                            if s.named_constants > 0 {
                                format!(" ({} in named data)", s.named_constants)
                            } else {
                                String::new()
                            }
                        );
                        let types: Vec<_> = s
                            .node_types
                            .iter()
                            .map(|(k, n)| format!("{k} x{n}"))
                            .collect();
                        outln!("       nodes: {}", types.join(", "));
                        let dts: Vec<_> = s
                            .datatypes
                            .iter()
                            .map(|(k, n)| format!("{k} x{n}"))
                            .collect();
                        outln!("       datatypes: {}", dts.join(", "));
                    }
                    Err(e) => outln!("    {i}: {}: {}", label(id), label(e)),
                }
            }
        }
        outln!("  operators ({}):", m.operators.len());
        for op in &m.operators {
            let mark = if kernels.contains(op) { " " } else { "!" };
            outln!("   {mark} {}", label(op));
        }
        if m.operators.iter().any(|op| !kernels.contains(op)) {
            outln!("  (! = no kernel in this build)");
        }
    }
    Ok(())
}
