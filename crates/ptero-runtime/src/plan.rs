//! Everything about a method that does not change between loads, parsed and checked once
//! when the program is read: values, instructions, argument lists, delegates.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;

use ptero_core::Value;
use ptero_format::{fb, PteFile};

use crate::backend::CompileSpec;
use crate::parse::{invalid, operator_name, MethodHead};
use crate::Error;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Instr {
    Kernel { op: u32, start: u32, len: u32 },
    Delegate { index: u32, start: u32, len: u32 },
    Move { from: u32, to: u32 },
    JumpFalse { cond: u32, dest: u32 },
    Free { value: u32 },
}

/// A delegate as the program describes it.
pub(crate) struct DelegateInfo {
    pub id: String,
    /// Byte range of the processed blob in the program file.
    pub processed: Range<usize>,
    pub compile_specs: Vec<CompileSpec>,
}

/// A method's immutable description; each loaded [`crate::Method`] clones `values`.
pub(crate) struct MethodPlan {
    pub values: Vec<Value>,
    /// (value index, byte range in the file) of mutable tensors with initial state.
    pub inits: Vec<(usize, Range<usize>)>,
    /// (value index, key, mutable) of tensors whose data is in a `.ptd` file.
    pub externals: Vec<(usize, String, bool)>,
    pub planned: Vec<usize>,
    pub inputs: Vec<u32>,
    pub outputs: Vec<u32>,
    pub operators: Vec<String>,
    pub chains: Vec<Vec<Instr>>,
    pub arg_pool: Vec<u32>,
    /// Most tensors one instruction touches (sizes the borrow tracker).
    pub max_views: usize,
    pub delegates: Vec<DelegateInfo>,
}

fn offset_in(data: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(data.as_ptr() as usize);
    start..start + part.len()
}

/// Parses and checks method `plan` of `pte`.
pub(crate) fn parse_plan(
    pte: &PteFile<'_>,
    plan: &fb::ExecutionPlan<'_>,
    head: MethodHead,
) -> Result<MethodPlan, Error> {
    let name = plan.name().unwrap_or("");
    let MethodHead {
        planned,
        values: parsed,
        inputs,
        outputs,
    } = head;
    let values = parsed.values;
    let n = values.len();
    let operators: Vec<String> = plan
        .operators()
        .into_iter()
        .flatten()
        .map(|op| operator_name(op.name().unwrap_or(""), op.overload().unwrap_or("")))
        .collect();
    let num_delegates = plan.delegates().map_or(0, |d| d.len());
    let mut chains = Vec::new();
    let mut arg_pool: Vec<u32> = Vec::new();
    let mut max_views = 8usize;
    let check = |i: i32, what: &str| -> Result<u32, Error> {
        if i < 0 || i as usize >= n {
            return Err(invalid(
                name,
                format!("{what} refers to value {i}, but the method has {n} values"),
            ));
        }
        Ok(i as u32)
    };
    for chain in plan.chains().into_iter().flatten() {
        let mut instrs = Vec::new();
        let count = chain.instructions().map_or(0, |v| v.len());
        for (pc, ins) in chain.instructions().into_iter().flatten().enumerate() {
            use fb::InstructionArguments as IA;
            let at = |m: &str| format!("instruction {pc}: {m}");
            let instr = match ins.instr_args_type() {
                IA::KernelCall => {
                    let k = ins
                        .instr_args_as_kernel_call()
                        .ok_or_else(|| invalid(name, at("empty kernel call")))?;
                    let op = k.op_index();
                    if op < 0 || op as usize >= operators.len() {
                        return Err(invalid(
                            name,
                            at(&format!(
                                "operator index {op} out of range ({} operators)",
                                operators.len()
                            )),
                        ));
                    }
                    let start = arg_pool.len() as u32;
                    let mut views = 0;
                    for a in k.args().into_iter().flatten() {
                        let v = check(a, &at("an argument"))?;
                        views += match &values[v as usize] {
                            Value::TensorList(l) | Value::OptionalTensorList(l) => l.len(),
                            _ => 1,
                        };
                        arg_pool.push(v);
                    }
                    max_views = max_views.max(views);
                    let len = arg_pool.len() as u32 - start;
                    Instr::Kernel {
                        op: op as u32,
                        start,
                        len,
                    }
                }
                IA::DelegateCall => {
                    let d = ins
                        .instr_args_as_delegate_call()
                        .ok_or_else(|| invalid(name, at("empty delegate call")))?;
                    let di = d.delegate_index();
                    if di < 0 || di as usize >= num_delegates {
                        return Err(invalid(
                            name,
                            at(&format!(
                                "delegate index {di} out of range ({num_delegates} delegates)"
                            )),
                        ));
                    }
                    let start = arg_pool.len() as u32;
                    for a in d.args().into_iter().flatten() {
                        arg_pool.push(check(a, &at("a delegate argument"))?);
                    }
                    let len = arg_pool.len() as u32 - start;
                    max_views = max_views.max(len as usize);
                    Instr::Delegate {
                        index: di as u32,
                        start,
                        len,
                    }
                }
                IA::MoveCall => {
                    let m = ins
                        .instr_args_as_move_call()
                        .ok_or_else(|| invalid(name, at("empty move")))?;
                    Instr::Move {
                        from: check(m.move_from(), &at("move source"))?,
                        to: check(m.move_to(), &at("move target"))?,
                    }
                }
                IA::JumpFalseCall => {
                    let j = ins
                        .instr_args_as_jump_false_call()
                        .ok_or_else(|| invalid(name, at("empty jump")))?;
                    let dest = j.destination_instruction();
                    if dest < 0 || dest as usize > count {
                        return Err(invalid(
                            name,
                            at(&format!(
                                "jump destination {dest} out of range ({count} instructions)"
                            )),
                        ));
                    }
                    Instr::JumpFalse {
                        cond: check(j.cond_value_index(), &at("jump condition"))?,
                        dest: dest as u32,
                    }
                }
                IA::FreeCall => {
                    let f = ins
                        .instr_args_as_free_call()
                        .ok_or_else(|| invalid(name, at("empty free")))?;
                    Instr::Free {
                        value: check(f.value_index(), &at("free"))?,
                    }
                }
                other => {
                    return Err(invalid(
                        name,
                        at(&format!("unknown instruction kind {}", other.0)),
                    ))
                }
            };
            instrs.push(instr);
        }
        chains.push(instrs);
    }
    let mut delegates = Vec::new();
    for d in plan.delegates().into_iter().flatten() {
        let id = d.id().unwrap_or("").to_string();
        let processed = pte
            .delegate_data(&d)
            .map_err(|e| invalid(name, format!("delegate '{id}': {e}")))?;
        let compile_specs = d
            .compile_specs()
            .into_iter()
            .flatten()
            .map(|s| CompileSpec {
                key: s.key().unwrap_or("").to_string(),
                value: s.value().map(|v| v.bytes().to_vec()).unwrap_or_default(),
            })
            .collect();
        delegates.push(DelegateInfo {
            id,
            processed: offset_in(pte.data(), processed),
            compile_specs,
        });
    }
    Ok(MethodPlan {
        values,
        inits: parsed.inits,
        externals: parsed.externals,
        planned,
        inputs,
        outputs,
        operators,
        chains,
        arg_pool,
        max_views,
        delegates,
    })
}
