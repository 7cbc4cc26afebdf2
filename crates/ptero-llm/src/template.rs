//! Renders untrusted Jinja chat templates with bounded time and memory.
//!
//! MiniJinja's fuel bounds the number of instructions, but one instruction can allocate
//! without bound (`{% set s = s ~ s %}` in a loop doubles a string each time; `batch(n)`
//! reserves `n` slots) or scan a huge value. So the compiled template is rewritten before
//! it runs: string and list operators, comparisons, indexing and every write go through
//! functions that charge a per-render work budget (bytes built or scanned) before doing
//! the operation, and every builtin filter, test and function is wrapped the same way.
//! Values nested deeper than the recursion limit are refused, so that neither our size
//! walk nor MiniJinja's own printing and dropping can overflow the stack.
//!
//! The rewrite uses MiniJinja's `unstable_machinery` (its compiled instructions and VM),
//! which is why the dependency is pinned to one version.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use minijinja::machinery::{self, Instruction, Instructions, Vm};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, ErrorKind, Expression, State};

use crate::{Error, Limits, Result};

type JResult<T> = std::result::Result<T, minijinja::Error>;

/// Names of our hook functions. Templates may not mention the prefix, so they cannot
/// shadow the hooks with their own variables.
const PREFIX: &str = "__ptero_";
const CONCAT: &str = "__ptero_concat";
const ADD: &str = "__ptero_add";
const MUL: &str = "__ptero_mul";
const EQ: &str = "__ptero_eq";
const NE: &str = "__ptero_ne";
const LT: &str = "__ptero_lt";
const LTE: &str = "__ptero_lte";
const GT: &str = "__ptero_gt";
const GTE: &str = "__ptero_gte";
const IN: &str = "__ptero_in";
const GET_ITEM: &str = "__ptero_getitem";
const SLICE: &str = "__ptero_slice";
const EMIT: &str = "__ptero_emit";
const EMIT_RAW: &str = "__ptero_emit_raw";
const BUILT: &str = "__ptero_built";
const CHANGED: &str = "__ptero_changed";

/// What one item of a list or map costs: the size of a value.
const ITEM: usize = std::mem::size_of::<Value>();

/// What one render has spent.
struct Budget {
    work: AtomicUsize,
    output: AtomicUsize,
    limits: Limits,
}

fn limit_error(message: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, message)
}

impl Budget {
    fn charge(&self, bytes: usize) -> JResult<()> {
        let before = self
            .work
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_add(bytes))
            })
            .unwrap_or(usize::MAX);
        if before.saturating_add(bytes) > self.limits.template_work_bytes {
            return Err(limit_error(format!(
                "the template built or scanned more than {} bytes (Limits::template_work_bytes)",
                self.limits.template_work_bytes
            )));
        }
        Ok(())
    }

    fn remaining(&self) -> usize {
        self.limits
            .template_work_bytes
            .saturating_sub(self.work.load(Ordering::Relaxed))
    }

    fn charge_output(&self, bytes: usize) -> JResult<()> {
        let before = self
            .output
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_add(bytes))
            })
            .unwrap_or(usize::MAX);
        if before.saturating_add(bytes) > self.limits.template_output_bytes {
            return Err(limit_error(format!(
                "the template wrote more than {} bytes (Limits::template_output_bytes)",
                self.limits.template_output_bytes
            )));
        }
        self.charge(bytes)
    }

    /// Charges the deep size of `v` (strings by length, containers by their items, shared
    /// parts counted each time they appear, as printing would) and checks its nesting.
    fn charge_deep(&self, v: &Value) -> JResult<usize> {
        let size = self.measure(v)?;
        self.charge(size)?;
        Ok(size)
    }

    /// Charges the top level of `v` only: string length or item count.
    fn charge_shallow(&self, v: &Value) -> JResult<()> {
        let size = match v.kind() {
            ValueKind::String => v.as_str().map_or(0, str::len),
            ValueKind::Bytes => v.as_bytes().map_or(0, <[u8]>::len),
            ValueKind::Seq | ValueKind::Map => v.len().unwrap_or(1).saturating_mul(ITEM),
            _ => ITEM,
        };
        self.charge(size)
    }

    /// The deep size of `v` in bytes; an error when it exceeds what is left of the budget
    /// (so the walk itself stays bounded) or nests deeper than the recursion limit.
    fn measure(&self, v: &Value) -> JResult<usize> {
        let cap = self.remaining();
        let max_depth = self.limits.template_recursion;
        let mut size = 0usize;
        let mut stack = vec![(v.clone(), 0usize)];
        while let Some((v, depth)) = stack.pop() {
            if depth > max_depth {
                return Err(limit_error(format!(
                    "a value is nested more than {max_depth} levels deep (Limits::template_recursion)"
                )));
            }
            size = size.saturating_add(match v.kind() {
                ValueKind::String => v.as_str().map_or(0, str::len).max(1),
                ValueKind::Bytes => v.as_bytes().map_or(0, <[u8]>::len).max(1),
                _ => ITEM,
            });
            if size > cap {
                return Err(limit_error(format!(
                    "the template built or scanned more than {} bytes (Limits::template_work_bytes)",
                    self.limits.template_work_bytes
                )));
            }
            match v.kind() {
                ValueKind::Seq | ValueKind::Iterable => {
                    for item in v.try_iter().into_iter().flatten() {
                        size = size.saturating_add(ITEM);
                        if size > cap {
                            break;
                        }
                        stack.push((item, depth + 1));
                    }
                }
                ValueKind::Map => {
                    for key in v.try_iter().into_iter().flatten() {
                        let item = v.get_item(&key).unwrap_or_default();
                        size = size.saturating_add(ITEM);
                        if size > cap {
                            break;
                        }
                        stack.push((key, depth + 1));
                        stack.push((item, depth + 1));
                    }
                }
                _ => {}
            }
        }
        Ok(size)
    }
}

/// The plain operations our hooks delegate to once they have charged for them, compiled
/// once in an environment without hooks.
struct Ops {
    concat: Expression<'static, 'static>,
    add: Expression<'static, 'static>,
    mul: Expression<'static, 'static>,
    eq: Expression<'static, 'static>,
    ne: Expression<'static, 'static>,
    lt: Expression<'static, 'static>,
    lte: Expression<'static, 'static>,
    gt: Expression<'static, 'static>,
    gte: Expression<'static, 'static>,
    contains: Expression<'static, 'static>,
    get_item: Expression<'static, 'static>,
    slice: Expression<'static, 'static>,
}

fn ops() -> JResult<&'static Ops> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    static OPS: OnceLock<Option<Ops>> = OnceLock::new();
    let ops = OPS.get_or_init(|| {
        let env = ENV.get_or_init(Environment::new);
        let e = |src: &'static str| env.compile_expression(src).ok();
        Some(Ops {
            concat: e("a ~ b")?,
            add: e("a + b")?,
            mul: e("a * b")?,
            eq: e("a == b")?,
            ne: e("a != b")?,
            lt: e("a < b")?,
            lte: e("a <= b")?,
            gt: e("a > b")?,
            gte: e("a >= b")?,
            contains: e("a in b")?,
            get_item: e("a[b]")?,
            slice: e("a[b:c:d]")?,
        })
    });
    ops.as_ref()
        .ok_or_else(|| limit_error("the template operators failed to compile".into()))
}

fn eval2(expr: &Expression<'static, 'static>, a: &Value, b: &Value) -> JResult<Value> {
    expr.eval(minijinja::context! { a => a, b => b })
}

/// Rewrites `src` so that costly operations call our hooks; see the module comment.
fn harden<'s>(src: &Instructions<'s>) -> Result<Instructions<'s>> {
    let mut out = Instructions::new(src.name(), src.source());
    // Where each original instruction starts in `out`, plus the end, for jump targets.
    let mut moved = Vec::with_capacity(src.len() + 1);
    for idx in 0..src.len() as u32 {
        moved.push(out.len() as u32);
        let Some(instr) = src.get(idx) else { break };
        let span = src.get_span(idx);
        let line = src.get_line(idx);
        let mut add = |i: Instruction<'s>| match (span, line) {
            (Some(s), _) => out.add_with_span(i, s),
            (None, Some(l)) => out.add_with_line(i, u16::try_from(l).unwrap_or(u16::MAX)),
            _ => out.add(i),
        };
        let call = |name: &'static str, n: u16| Instruction::CallFunction(name, Some(n));
        match instr {
            // Spreading a list or map into a call copies all of it on every call, which no
            // hook can see; chat templates have no use for it.
            Instruction::UnpackLists(_) | Instruction::MergeKwargs(_) => {
                return Err(Error::Template(format!(
                    "argument splats (*args, **kwargs) are not supported in chat templates (line {})",
                    line.unwrap_or(0)
                )))
            }
            Instruction::StringConcat => add(call(CONCAT, 2)),
            Instruction::Add => add(call(ADD, 2)),
            Instruction::Mul => add(call(MUL, 2)),
            Instruction::Eq => add(call(EQ, 2)),
            Instruction::Ne => add(call(NE, 2)),
            Instruction::Lt => add(call(LT, 2)),
            Instruction::Lte => add(call(LTE, 2)),
            Instruction::Gt => add(call(GT, 2)),
            Instruction::Gte => add(call(GTE, 2)),
            Instruction::In => add(call(IN, 2)),
            Instruction::GetItem => add(call(GET_ITEM, 2)),
            Instruction::Slice => add(call(SLICE, 4)),
            Instruction::Emit => {
                add(call(EMIT, 1));
                add(Instruction::Emit)
            }
            Instruction::EmitRaw(text) => {
                add(Instruction::LoadConst(Value::from(text.len())));
                add(call(EMIT_RAW, 1));
                add(Instruction::DiscardTop);
                add(Instruction::EmitRaw(text))
            }
            Instruction::BuildList(n) => {
                add(Instruction::BuildList(*n));
                add(call(BUILT, 1))
            }
            // `loop.changed(x)` compares x with the previous x, deeply.
            Instruction::CallMethod("changed", Some(n)) => add(call(CHANGED, *n)),
            Instruction::BuildMap(n) => {
                add(Instruction::BuildMap(*n));
                add(call(BUILT, 1))
            }
            other => add(other.clone()),
        };
    }
    moved.push(out.len() as u32);
    let to = |t: &mut u32| *t = moved.get(*t as usize).copied().unwrap_or(*t);
    for idx in 0..out.len() as u32 {
        match out.get_mut(idx) {
            Some(
                Instruction::Jump(t)
                | Instruction::JumpIfFalse(t)
                | Instruction::JumpIfFalseOrPop(t)
                | Instruction::JumpIfTrueOrPop(t)
                | Instruction::Iterate(t),
            ) => to(t),
            Some(Instruction::BuildMacro(_, t, _)) => to(t),
            _ => {}
        }
    }
    Ok(out)
}

/// Filters whose work depends on their input's top level only (length, first item...).
const SHALLOW_FILTERS: &[&str] = &[
    "length",
    "count",
    "first",
    "last",
    "default",
    "d",
    "attr",
    "bool",
    "abs",
    "round",
    "int",
    "float",
    "safe",
    "list",
    "reverse",
    "batch",
    "slice",
    "items",
    "chain",
    "zip",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "map",
];

fn builtin_filters() -> Vec<(&'static str, Value)> {
    use minijinja::filters as f;
    macro_rules! v {
        ($f:expr) => {
            Value::from_function($f)
        };
    }
    vec![
        ("safe", v!(f::safe)),
        ("escape", v!(f::escape)),
        ("e", v!(f::escape)),
        ("lower", v!(f::lower)),
        ("upper", v!(f::upper)),
        ("title", v!(f::title)),
        ("capitalize", v!(f::capitalize)),
        ("replace", v!(f::replace)),
        ("length", v!(f::length)),
        ("count", v!(f::length)),
        ("dictsort", v!(f::dictsort)),
        ("items", v!(f::items)),
        ("reverse", v!(f::reverse)),
        ("trim", v!(f::trim)),
        ("join", v!(f::join)),
        ("split", v!(f::split)),
        ("lines", v!(f::lines)),
        ("default", v!(f::default)),
        ("d", v!(f::default)),
        ("round", v!(f::round)),
        ("abs", v!(f::abs)),
        ("int", v!(f::int)),
        ("float", v!(f::float)),
        ("attr", v!(f::attr)),
        ("first", v!(f::first)),
        ("last", v!(f::last)),
        ("min", v!(f::min)),
        ("max", v!(f::max)),
        ("sort", v!(f::sort)),
        ("list", v!(f::list)),
        ("string", v!(f::string)),
        ("bool", v!(f::bool)),
        ("batch", v!(f::batch)),
        ("slice", v!(f::slice)),
        ("sum", v!(f::sum)),
        ("indent", v!(f::indent)),
        ("select", v!(f::select)),
        ("reject", v!(f::reject)),
        ("selectattr", v!(f::selectattr)),
        ("rejectattr", v!(f::rejectattr)),
        ("map", v!(f::map)),
        ("groupby", v!(f::groupby)),
        ("unique", v!(f::unique)),
        ("chain", v!(f::chain)),
        ("zip", v!(f::zip)),
        ("pprint", v!(f::pprint)),
        ("format", v!(f::format)),
        ("tojson", v!(f::tojson)),
    ]
}

fn builtin_tests() -> Vec<(&'static str, Value)> {
    use minijinja::tests as t;
    macro_rules! v {
        ($f:expr) => {
            Value::from_function($f)
        };
    }
    vec![
        ("undefined", v!(t::is_undefined)),
        ("defined", v!(t::is_defined)),
        ("none", v!(t::is_none)),
        ("safe", v!(t::is_safe)),
        ("escaped", v!(t::is_safe)),
        ("boolean", v!(t::is_boolean)),
        ("odd", v!(t::is_odd)),
        ("even", v!(t::is_even)),
        ("divisibleby", v!(t::is_divisibleby)),
        ("number", v!(t::is_number)),
        ("integer", v!(t::is_integer)),
        ("int", v!(t::is_integer)),
        ("float", v!(t::is_float)),
        ("string", v!(t::is_string)),
        ("sequence", v!(t::is_sequence)),
        ("iterable", v!(t::is_iterable)),
        ("mapping", v!(t::is_mapping)),
        ("startingwith", v!(t::is_startingwith)),
        ("endingwith", v!(t::is_endingwith)),
        ("lower", v!(t::is_lower)),
        ("upper", v!(t::is_upper)),
        ("sameas", v!(t::is_sameas)),
        ("eq", v!(t::is_eq)),
        ("equalto", v!(t::is_eq)),
        ("==", v!(t::is_eq)),
        ("ne", v!(t::is_ne)),
        ("!=", v!(t::is_ne)),
        ("lt", v!(t::is_lt)),
        ("lessthan", v!(t::is_lt)),
        ("<", v!(t::is_lt)),
        ("le", v!(t::is_le)),
        ("<=", v!(t::is_le)),
        ("gt", v!(t::is_gt)),
        ("greaterthan", v!(t::is_gt)),
        (">", v!(t::is_gt)),
        ("ge", v!(t::is_ge)),
        (">=", v!(t::is_ge)),
        ("in", v!(t::is_in)),
        ("true", v!(t::is_true)),
        ("false", v!(t::is_false)),
        ("filter", v!(t::is_filter)),
        ("test", v!(t::is_test)),
    ]
}

/// Integers among a call's arguments, keyword arguments included.
fn ints(args: &[Value]) -> impl Iterator<Item = usize> + '_ {
    args.iter()
        .flat_map(|a| {
            if a.is_kwargs() {
                a.try_iter()
                    .into_iter()
                    .flatten()
                    .map(|k| a.get_item(&k).unwrap_or_default())
                    .collect()
            } else {
                vec![a.clone()]
            }
        })
        .filter_map(|v| v.as_i64().map(|i| i.unsigned_abs() as usize))
}

/// The extra cost of filters whose output can be much larger than their input, charged
/// before they run (they allocate up front).
fn filter_precharge(budget: &Budget, name: &str, args: &[Value]) -> JResult<()> {
    let len = |i: usize| args.get(i).and_then(Value::as_str).map_or(0, str::len);
    let extra = match name {
        // Every occurrence of `old` (one per byte when it is empty) becomes `new`.
        "replace" => len(0)
            .checked_div(len(1))
            .unwrap_or(len(0))
            .saturating_add(1)
            .saturating_mul(len(2)),
        "join" => {
            let items = args.first().and_then(Value::len).unwrap_or(0);
            items.saturating_mul(len(1))
        }
        "indent" => {
            let lines = args
                .first()
                .and_then(Value::as_str)
                .map_or(1, |s| s.bytes().filter(|&b| b == b'\n').count() + 1);
            let width = ints(&args[1.min(args.len())..]).max().unwrap_or(4);
            lines.saturating_mul(width)
        }
        // Both reserve `count` slots up front.
        "batch" | "slice" => ints(&args[1.min(args.len())..])
            .max()
            .unwrap_or(0)
            .saturating_mul(16),
        // Widths and precisions in the format string pad without bound.
        "format" => args
            .first()
            .and_then(Value::as_str)
            .unwrap_or("")
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|d| {
                d.parse::<usize>()
                    .ok()
                    .or((!d.is_empty()).then_some(usize::MAX))
            })
            .fold(0usize, usize::saturating_add),
        // Pretty-printing indents every line by its depth.
        "tojson" | "pprint" => {
            let indent = ints(&args[1.min(args.len())..]).max().unwrap_or(4);
            let size = match args.first() {
                Some(v) => budget.measure(v)?,
                None => 0,
            };
            size.saturating_mul(indent.saturating_add(1))
                .saturating_mul(budget.limits.template_recursion.min(16))
        }
        _ => 0,
    };
    budget.charge(extra)
}

fn hardened_env<'s>(budget: &Arc<Budget>) -> Environment<'s> {
    let mut env = Environment::new();
    env.set_fuel(Some(budget.limits.template_fuel));
    env.set_recursion_limit(budget.limits.template_recursion);

    let b = budget.clone();
    // Operators that stringify or compare their operands deeply.
    let binary = move |expr: fn(&Ops) -> &Expression<'static, 'static>| {
        let b = b.clone();
        move |a: Value, c: Value| -> JResult<Value> {
            b.charge_deep(&a)?;
            b.charge_deep(&c)?;
            eval2(expr(ops()?), &a, &c)
        }
    };
    env.add_function(CONCAT, binary(|o| &o.concat));
    let b = budget.clone();
    env.add_function(ADD, move |a: Value, c: Value| -> JResult<Value> {
        // Adding lists shares their items: the cost is the new list, not their contents.
        let seq = |v: &Value| matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable);
        if seq(&a) && seq(&c) {
            let len = |v: &Value| v.len().unwrap_or(1);
            b.charge(len(&a).saturating_add(len(&c)).saturating_mul(ITEM))?;
        } else {
            b.charge_deep(&a)?;
            b.charge_deep(&c)?;
        }
        eval2(&ops()?.add, &a, &c)
    });
    env.add_function(EQ, binary(|o| &o.eq));
    env.add_function(NE, binary(|o| &o.ne));
    env.add_function(LT, binary(|o| &o.lt));
    env.add_function(LTE, binary(|o| &o.lte));
    env.add_function(GT, binary(|o| &o.gt));
    env.add_function(GTE, binary(|o| &o.gte));
    env.add_function(IN, binary(|o| &o.contains));

    let b = budget.clone();
    env.add_function(MUL, move |a: Value, c: Value| -> JResult<Value> {
        // `"ab" * n` and `[x] * n` repeat the operand n times.
        let times = [&a, &c]
            .iter()
            .filter_map(|v| v.as_i64())
            .map(|n| n.unsigned_abs() as usize)
            .max()
            .unwrap_or(1);
        let size = b.charge_deep(&a)?.saturating_add(b.charge_deep(&c)?);
        b.charge(size.saturating_mul(times))?;
        eval2(&ops()?.mul, &a, &c)
    });
    let b = budget.clone();
    env.add_function(GET_ITEM, move |a: Value, c: Value| -> JResult<Value> {
        // Indexing a string walks its characters; containers index in O(1).
        b.charge_shallow(&a)?;
        eval2(&ops()?.get_item, &a, &c)
    });
    let b = budget.clone();
    env.add_function(
        SLICE,
        move |a: Value, start: Value, stop: Value, step: Value| -> JResult<Value> {
            b.charge_shallow(&a)?;
            ops()?
                .slice
                .eval(minijinja::context! { a => a, b => start, c => stop, d => step })
        },
    );
    let b = budget.clone();
    env.add_function(EMIT, move |v: Value| -> JResult<Value> {
        let size = b.measure(&v)?;
        b.charge_output(size)?;
        Ok(v)
    });
    let b = budget.clone();
    env.add_function(EMIT_RAW, move |n: usize| -> JResult<Value> {
        b.charge_output(n)?;
        Ok(Value::UNDEFINED)
    });
    let b = budget.clone();
    env.add_function(
        CHANGED,
        move |state: &State, args: Rest<Value>| -> JResult<Value> {
            let (target, rest) = args
                .split_first()
                .ok_or_else(|| limit_error("changed() needs an object".into()))?;
            for a in rest {
                b.charge_deep(a)?;
            }
            target.call_method(state, "changed", rest)
        },
    );
    let b = budget.clone();
    env.add_function(BUILT, move |v: Value| -> JResult<Value> {
        b.charge_deep(&v)?;
        Ok(v)
    });

    for (name, filter) in builtin_filters() {
        let b = budget.clone();
        let shallow = SHALLOW_FILTERS.contains(&name);
        env.add_filter(
            name,
            move |state: &State, args: Rest<Value>| -> JResult<Value> {
                filter_precharge(&b, name, &args)?;
                for a in args.iter() {
                    if shallow {
                        b.charge_shallow(a)?;
                    } else {
                        b.charge_deep(a)?;
                    }
                }
                let rv = filter.call(state, &args)?;
                b.charge_deep(&rv)?;
                Ok(rv)
            },
        );
    }
    for (name, test) in builtin_tests() {
        let b = budget.clone();
        env.add_test(
            name,
            move |state: &State, args: Rest<Value>| -> JResult<bool> {
                for a in args.iter() {
                    b.charge_deep(a)?;
                }
                Ok(test.call(state, &args)?.is_true())
            },
        );
    }
    let globals: [(&str, Value); 3] = [
        ("range", Value::from_function(minijinja::functions::range)),
        ("dict", Value::from_function(minijinja::functions::dict)),
        (
            "namespace",
            Value::from_function(minijinja::functions::namespace),
        ),
    ];
    for (name, function) in globals {
        let b = budget.clone();
        env.add_function(
            name,
            move |state: &State, args: Rest<Value>| -> JResult<Value> {
                for a in args.iter() {
                    b.charge_deep(a)?;
                }
                let rv = function.call(state, &args)?;
                b.charge_deep(&rv)?;
                Ok(rv)
            },
        );
    }
    // debug() prints the whole context: not something a chat template needs.
    env.add_function("debug", || -> JResult<Value> {
        Err(limit_error(
            "debug() is not available in chat templates".into(),
        ))
    });
    let b = budget.clone();
    env.add_function("raise_exception", move |msg: Value| -> JResult<String> {
        // Printing a value that contains itself would never end: measure it first.
        b.charge_deep(&msg)?;
        Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            msg.to_string(),
        ))
    });
    env
}

/// Renders `source` with `ctx` (a map) under `limits`.
pub(crate) fn render(source: &str, ctx: Value, limits: &Limits) -> Result<String> {
    // Name the limit that stopped the template, so that users know which one to raise.
    let err = |e: minijinja::Error| {
        let mut text = e.to_string();
        if e.kind() == ErrorKind::OutOfFuel {
            text.push_str(" (Limits::template_fuel)");
        } else if text.contains("recursion limit") {
            text.push_str(" (Limits::template_recursion)");
        }
        Error::Template(text)
    };
    if source.contains(PREFIX) {
        return Err(Error::Template(format!(
            "names starting with '{PREFIX}' are reserved"
        )));
    }
    let budget = Arc::new(Budget {
        work: AtomicUsize::new(0),
        output: AtomicUsize::new(0),
        limits: *limits,
    });
    let env = hardened_env(&budget);
    let tmpl = env.template_from_str(source).map_err(err)?;
    let compiled = machinery::get_compiled_template(&tmpl);
    let instructions = harden(&compiled.instructions)?;
    let blocks = compiled
        .blocks
        .iter()
        .map(|(name, b)| Ok((*name, harden(b)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let mut text = String::new();
    let mut out = machinery::make_string_output(&mut text);
    Vm::new(&env)
        .eval(
            &instructions,
            ctx,
            &blocks,
            &mut out,
            compiled.initial_auto_escape,
        )
        .map_err(err)?;
    drop(out);
    if text.len() > limits.template_output_bytes {
        return Err(Error::Template(format!(
            "the template wrote more than {} bytes (Limits::template_output_bytes)",
            limits.template_output_bytes
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn ctx() -> Value {
        minijinja::context! {
            messages => vec![
                BTreeMap::from([("role", "system"), ("content", "Be brief.")]),
                BTreeMap::from([("role", "user"), ("content", " Hi ")]),
                BTreeMap::from([("role", "assistant"), ("content", "Hello!")]),
                BTreeMap::from([("role", "user"), ("content", "Bye")]),
            ],
            add_generation_prompt => true,
            bos_token => "<s>",
            eos_token => "</s>",
        }
    }

    /// Templates a real tokenizer might ship render exactly as plain MiniJinja renders
    /// them: the rewrite changes costs, not results.
    #[test]
    fn hardened_rendering_matches_plain_minijinja() {
        let templates = [
            "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{% if not loop.last %}\n{% endif %}{% endfor %}",
            "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}[{{ sys }}]{% for m in rest %}{{ m.role ~ ': ' ~ m.content }};{% endfor %}",
            "{% set ns = namespace(n=0, text='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.text = ns.text + m.content[:2] %}{% endfor %}{{ ns.n }} {{ ns.text }} {{ 'abc'[::-1] }} {{ 'abc'[1] }} {{ 2 * 3 }} {{ 'ab' * 2 }} {{ [1] + [2] }}",
            "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(' | ') }} {{ messages | length }} {{ (messages | first).role }} {{ messages | last | tojson }}",
            "{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2) }} {{ {'b': 1, 'a': 2} | dictsort(reverse=true) }} {{ 'x\ny' | indent(width=2, first=true) }} {{ '%s-%05d' | format('a', 42) }}",
            "{% macro turn(m) %}<{{ m.role }}>{{ caller() }}</{{ m.role }}>{% endmacro %}{% for m in messages %}{% call turn(m) %}{{ m.content | upper }}{% endcall %}{% else %}none{% endfor %}",
            "{{ missing ~ 'x' }}{{ 'user' in messages | map(attribute='role') | list }}{{ 3 > 2 > 1 }}{{ 1 if messages else 0 }}{% for x in [3, 1, 2] | sort %}{{ x }}{% endfor %}{{ range(3) | list }}{{ [1, 2, 3, 4, 5] | batch(2) | list }}{{ 'a,b' | split(',') }}",
            // SmolLM2's and a Qwen2.5-style template, as shipped.
            "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
            "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen.<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}",
            "{% for m in messages | sort(attribute='role') %}{% if loop.changed(m.role) %}*{% endif %}{{ m.role }}{{ loop.cycle('+', '-') }}{% endfor %}",
            "{% for m in messages %}{% if m.role == 'user' %}{% set content = m.content %}{% elif m.role != 'system' %}{% set content = m.content | replace('!', '?') %}{% else %}{% continue %}{% endif %}{{ content }}{% if loop.index0 > 1 %}{% break %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}{{ eos_token }}",
        ];
        let limits = Limits::default();
        for t in templates {
            let env = Environment::new();
            let want = env.render_str(t, ctx()).unwrap();
            let got = render(t, ctx(), &limits).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(got, want, "{t}");
        }
    }

    /// Each would allocate gigabytes, overflow the stack or run for hours without limits;
    /// each must fail fast with an error naming the limit that stopped it.
    #[test]
    fn hostile_templates_fail_fast() {
        let cases: &[(&str, &str)] = &[
            ("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}{% endmacro %}{{ d('a', 60) }}", "template_"),
            ("{% set ns = namespace(s='a') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "template_work_bytes"),
            ("{% set ns = namespace(s='a') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "template_work_bytes"),
            ("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s * 50 %}{% endfor %}", "template_work_bytes"),
            ("{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}", "template_work_bytes"),
            ("{% set ns = namespace(s='a') %}{% for i in range(100) %}{% set x %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = x %}{% endfor %}", "template_"),
            ("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}", "template_"),
            ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "template_fuel"),
            ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "template_recursion"),
            ("{% set ns = namespace(a=[]) %}{% for i in range(100000) %}{% set ns.a = [ns.a] %}{% endfor %}{{ ns.a }}", "template_recursion"),
            ("{% set ns = namespace(a={}) %}{% for i in range(100000) %}{% set ns.a = {'k': ns.a} %}{% endfor %}{{ ns.a }}", "template_recursion"),
            ("{% set ns = namespace(a=[1]) %}{% for i in range(100000) %}{% set ns.a = ns.a | batch(1) %}{% endfor %}{{ ns.a }}", "template_recursion"),
            ("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "template_"),
            ("{% set ns = namespace() %}{% set ns.me = ns %}{{ raise_exception(ns) }}", "template_"),
            ("{% set ns = namespace() %}{% set ns.me = ns %}{% for i in range(3) %}{{ loop.changed(ns) }}{% endfor %}", "template_"),
            ("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns | tojson }}", "template_"),
            ("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns == ns }}", "template_"),
            ("{{ 'a' | indent(4000000000) }}", "template_work_bytes"),
            ("{{ [1] | batch(4000000000000) }}", "template_work_bytes"),
            ("{{ [1] | slice(4000000000000) }}", "template_work_bytes"),
            ("{{ '%999999999999s' | format('a') }}", "template_work_bytes"),
            ("{{ '%.999999999f' | format(1.5) }}", "template_work_bytes"),
            ("{{ ('ab' * 1000) | replace('', 'x' * 100000) }}", "template_work_bytes"),
            ("{{ range(100000) | join('x' * 100000) }}", "template_work_bytes"),
            ("{{ range(100000) | list | tojson(indent=100000) }}", "template_work_bytes"),
            ("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{% if s == s %}{% endif %}{% endfor %}", "template_work_bytes"),
            ("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{% if 'y' in s %}{% endif %}{% endfor %}", "template_work_bytes"),
            ("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{{ s[-1] }}{% endfor %}", "template_"),
            ("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{% set t = s[1:] %}{% endfor %}", "template_work_bytes"),
            ("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{% set t = s | upper %}{% endfor %}", "template_work_bytes"),
            ("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{% if s is startingwith(s) %}{% endif %}{% endfor %}", "template_work_bytes"),
            ("{% for i in range(100000) %}{% set r = range(100000) | list %}{% endfor %}", "template_work_bytes"),
            ("{% set r = range(100000) | list %}{% for i in range(100000) %}{{ loop.cycle(*r) }}{% endfor %}", "splat"),
            ("{% set d = dict(a=1) %}{{ dict(**d) }}", "splat"),
            ("{{ debug() }}", "debug"),
            ("{% set __ptero_concat = 1 %}", "reserved"),
        ];
        let limits = Limits::default();
        // A `set` inside a loop is local to the iteration in Jinja, so this one does not
        // grow at all; the namespace and macro variants below do.
        let t = "{% set s = 'a' %}{% for i in range(100) %}{% set s = s ~ s %}{% endfor %}{{ s | length }}";
        assert_eq!(render(t, ctx(), &limits).unwrap(), "1");
        for (t, why) in cases {
            let t0 = Instant::now();
            let e = render(t, ctx(), &limits).expect_err(t).to_string();
            assert!(e.contains(why), "{t}: {e}");
            // Generous: debug builds on a busy machine.
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{t}: {:?}",
                t0.elapsed()
            );
        }
    }

    #[test]
    fn limits_are_configurable() {
        let t = "{% for i in range(1000) %}x{% endfor %}";
        assert_eq!(render(t, ctx(), &Limits::default()).unwrap().len(), 1000);
        let small = |l: Limits| render(t, ctx(), &l).unwrap_err().to_string();
        let e = small(Limits {
            template_output_bytes: 100,
            ..Limits::default()
        });
        assert!(e.contains("template_output_bytes"), "{e}");
        let e = small(Limits {
            template_fuel: 100,
            ..Limits::default()
        });
        assert!(e.contains("fuel"), "{e}");
        let e = small(Limits {
            template_work_bytes: 100,
            ..Limits::default()
        });
        assert!(e.contains("template_work_bytes"), "{e}");
    }
}
