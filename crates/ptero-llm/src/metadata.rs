//! The constant "metadata methods" `export_llm` writes into a program (`get_max_seq_len`,
//! `get_eos_ids`...), read with the official runner's defaults when one is absent.

use ptero::{BackendRegistry, EValue, KernelRegistry, Program};

use crate::{Error, Result};

/// What a text decoder program says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmMetadata {
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    /// Most tokens one forward call takes (the prefill chunk size).
    pub max_seq_len: usize,
    /// Size of the KV cache: the whole conversation must fit.
    pub max_context_len: usize,
    pub vocab_size: Option<usize>,
    pub use_kv_cache: bool,
    pub enable_dynamic_shape: bool,
    /// Which metadata methods were absent (defaults used).
    pub defaulted: Vec<&'static str>,
}

fn ints(program: &Program, name: &str) -> Result<Option<Vec<i64>>> {
    if !program.method_names().contains(&name) {
        return Ok(None);
    }
    let mut m = program.load_method(name, &KernelRegistry::new(), &BackendRegistry::new())?;
    m.execute()?;
    let mut out = Vec::new();
    for v in m.outputs()? {
        match v {
            EValue::Int(i) => out.push(i),
            EValue::Bool(b) => out.push(b as i64),
            EValue::IntList(l) => out.extend(l),
            EValue::Tensor(t) if t.dtype() == ptero::ScalarType::Long => {
                out.extend(t.to_vec::<i64>()?)
            }
            other => {
                return Err(Error::Model(format!(
                    "metadata method '{name}' returned a {}",
                    other.kind()
                )))
            }
        }
    }
    Ok(Some(out))
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
        Ok(LlmMetadata {
            bos_id: if bos >= 0 {
                Some(to_u32(bos, "bos id")?)
            } else {
                None
            },
            eos_ids,
            max_seq_len: max_seq_len as usize,
            max_context_len: max_context_len as usize,
            vocab_size: (vocab > 0).then_some(vocab as usize),
            use_kv_cache,
            enable_dynamic_shape,
            defaulted,
        })
    }
}
