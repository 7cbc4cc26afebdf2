//! The constant "metadata methods" `export_llm` writes into a program (`get_max_seq_len`,
//! `get_eos_ids`...), read with the official runner's defaults when one is absent.

use ptero::{BackendRegistry, EValue, KernelRegistry, Program, ScalarType};

use crate::{Error, Result};

/// What a text decoder program says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmMetadata {
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    /// Most tokens one forward call takes (the prefill chunk size).
    pub max_seq_len: usize,
    /// Size of the KV cache as the program claims it: the whole conversation must fit.
    /// [`crate::TextGenerator::context_len`] is what is enforced (the program's actual
    /// cache, when smaller).
    pub max_context_len: usize,
    pub vocab_size: Option<usize>,
    pub use_kv_cache: bool,
    pub enable_dynamic_shape: bool,
    /// Which metadata methods were absent (defaults used).
    pub defaulted: Vec<&'static str>,
}

/// Most values a metadata method may return (EOS lists are a handful of ids).
const MAX_METADATA_VALUES: usize = 4096;

fn ints(program: &Program, name: &str) -> Result<Option<Vec<i64>>> {
    if !program.method_names().contains(&name) {
        return Ok(None);
    }
    let mut m = program.load_method(name, &KernelRegistry::new(), &BackendRegistry::new())?;
    m.execute()?;
    let too_many = |n: usize| {
        Error::Model(format!(
            "metadata method '{name}' returned {n} values, more than the {MAX_METADATA_VALUES} accepted"
        ))
    };
    let mut out = Vec::new();
    for i in 0..m.num_outputs() {
        // Size a tensor before copying it out: its shape comes from the file.
        if let Ok(t) = m.output_meta(i) {
            if t.dtype != ScalarType::Long {
                return Err(Error::Model(format!(
                    "metadata method '{name}' returned a {} tensor, expected int64",
                    t.dtype
                )));
            }
            if t.numel() > MAX_METADATA_VALUES {
                return Err(too_many(t.numel()));
            }
        }
        match m.output(i)? {
            EValue::Int(i) => out.push(i),
            EValue::Bool(b) => out.push(b as i64),
            EValue::IntList(l) => out.extend(l),
            EValue::Tensor(t) => out.extend(t.to_vec::<i64>()?),
            other => {
                return Err(Error::Model(format!(
                    "metadata method '{name}' returned a {}",
                    other.kind()
                )))
            }
        }
        if out.len() > MAX_METADATA_VALUES {
            return Err(too_many(out.len()));
        }
    }
    Ok(Some(out))
}

/// The sequence length of the KV cache that `forward` writes, read from the program's
/// cache operators (`llama::update_cache`, `llama::custom_sdpa`, `llama::sdpa_with_kv_cache`:
/// caches are `[batch, seq, heads, head_dim]`). `None` when the program has none of them:
/// then the metadata's context length is all there is to go on.
pub(crate) fn kv_cache_len(program: &Program) -> Option<usize> {
    let pte = program.pte().ok()?;
    let plan = pte.method("forward")?;
    let ops = plan.operators()?;
    let values = plan.values()?;
    let mut len: Option<usize> = None;
    for chain in plan.chains()?.iter() {
        for instr in chain.instructions().into_iter().flatten() {
            let Some(call) = instr.instr_args_as_kernel_call() else {
                continue;
            };
            let Some(op) = usize::try_from(call.op_index())
                .ok()
                .filter(|&i| i < ops.len())
                .map(|i| ops.get(i))
            else {
                continue;
            };
            let cache_arg = match op.name() {
                Some("llama::update_cache" | "llama::update_cache_with_indices") => 1,
                Some("llama::custom_sdpa") => 1,
                Some("llama::sdpa_with_kv_cache") => 3,
                _ => continue,
            };
            let seq = call
                .args()
                .filter(|a| cache_arg < a.len())
                .map(|a| a.get(cache_arg))
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v < values.len())
                .and_then(|v| values.get(v).val_as_tensor())
                .and_then(|t| t.sizes())
                .filter(|s| s.len() == 4)
                .and_then(|s| usize::try_from(s.get(1)).ok());
            if let Some(seq) = seq {
                len = Some(len.map_or(seq, |l| l.min(seq)));
            }
        }
    }
    len
}

fn to_u32(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Model(format!("{what} {v} is not a valid token id")))
}

impl LlmMetadata {
    /// Reads every metadata method of `program`.
    pub fn read(program: &Program) -> Result<LlmMetadata> {
        let mut defaulted = Vec::new();
        let mut int = |name: &'static str, default: i64| -> Result<i64> {
            match ints(program, name)? {
                Some(v) if !v.is_empty() => Ok(v[0]),
                _ => {
                    defaulted.push(name);
                    Ok(default)
                }
            }
        };
        let max_seq_len = int("get_max_seq_len", 128)?;
        let max_context_len = int("get_max_context_len", max_seq_len)?;
        let use_kv_cache = int("use_kv_cache", 1)? != 0;
        let enable_dynamic_shape = int("enable_dynamic_shape", 0)? != 0;
        let vocab = int("get_vocab_size", -1)?;
        let bos = int("get_bos_id", -1)?;
        let eos_ids = match ints(program, "get_eos_ids")? {
            Some(v) => v
                .into_iter()
                .map(|e| to_u32(e, "eos id"))
                .collect::<Result<Vec<_>>>()?,
            None => {
                defaulted.push("get_eos_ids");
                Vec::new()
            }
        };
        if max_seq_len <= 0 || max_context_len <= 0 {
            return Err(Error::Model(format!(
                "max_seq_len {max_seq_len} and max_context_len {max_context_len} must be positive"
            )));
        }
        let as_len = |v: i64, what: &str| {
            usize::try_from(v).map_err(|_| Error::Model(format!("{what} {v} is too large")))
        };
        Ok(LlmMetadata {
            bos_id: if bos >= 0 {
                Some(to_u32(bos, "bos id")?)
            } else {
                None
            },
            eos_ids,
            max_seq_len: as_len(max_seq_len, "max_seq_len")?,
            max_context_len: as_len(max_context_len, "max_context_len")?,
            vocab_size: usize::try_from(vocab).ok().filter(|&v| v > 0),
            use_kv_cache,
            enable_dynamic_shape,
            defaulted,
        })
    }
}
