//! Bounds on the memory and work that untrusted inputs (tokenizer files, chat templates,
//! prompts, programs) can make text generation spend. Every limit fails with an error that
//! names it; none truncates silently.

/// Limits applied by tokenizers, chat templates and [`crate::TextGenerator`].
///
/// The defaults are generous for real models and conversations; lower them when inputs
/// come from people you do not trust with your memory or CPU.
///
/// ```
/// let limits = ptero_llm::Limits { max_input_bytes: 1 << 20, ..Default::default() };
/// assert_eq!(limits.template_fuel, ptero_llm::Limits::default().template_fuel);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest text a tokenizer encodes, in bytes (default 8 MiB).
    pub max_input_bytes: usize,
    /// Largest tokenizer file (`tokenizer.json`, `tokenizer.model`) read, in bytes
    /// (default 256 MiB).
    pub max_tokenizer_file_bytes: usize,
    /// Largest companion file (`tokenizer_config.json`, `chat_template.jinja`) read, in
    /// bytes (default 16 MiB).
    pub max_config_file_bytes: usize,
    /// Instructions one chat-template render may execute (default 2,000,000; MiniJinja's
    /// fuel). Ends loops that would run for ever.
    pub template_fuel: u64,
    /// Bytes one render may write, including text captured by `{% set %}` blocks and
    /// macro calls (default 8 MiB).
    pub template_output_bytes: usize,
    /// Bytes of strings, lists and maps one render may build or scan, summed over the
    /// whole render (default 256 MiB). Bounds both the memory and the time that
    /// operators (`~`, `+`, `*`, comparisons), filters and functions can spend.
    pub template_work_bytes: usize,
    /// Deepest nesting of macro calls and recursive loops in a template, and of lists and
    /// maps it builds (default 64).
    pub template_recursion: usize,
    /// Largest vocabulary (logits row) a program may have (default 16,777,216 ids).
    pub max_vocab: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 8 << 20,
            max_tokenizer_file_bytes: 256 << 20,
            max_config_file_bytes: 16 << 20,
            template_fuel: 2_000_000,
            template_output_bytes: 8 << 20,
            template_work_bytes: 256 << 20,
            template_recursion: 64,
            max_vocab: 1 << 24,
        }
    }
}

/// Reads at most `limit` bytes of `path`; a longer file (or an endless one, such as a
/// device) is an error naming the limit, and memory grows with the data actually read.
pub(crate) fn read_bounded(path: &std::path::Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut out = Vec::new();
    // One byte more than the limit tells "exactly at the limit" from "too long".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(cap).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::other(format!(
            "the file is larger than the limit of {limit} bytes"
        )));
    }
    Ok(out)
}
