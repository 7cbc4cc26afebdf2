//! Tokenizers, chosen by file content like ExecuTorch's `load_tokenizer`: Hugging Face
//! `tokenizer.json`, Llama 3 tiktoken `tokenizer.model`, Llama 2 SentencePiece
//! `tokenizer.model`.

mod hf;
mod sentencepiece;
mod tiktoken;

use std::path::Path;

pub use hf::HfTokenizer;
pub use sentencepiece::SentencePieceTokenizer;
pub use tiktoken::TiktokenTokenizer;

use crate::limits::read_bounded;
use crate::{Error, Limits, Result};

/// Text to token ids and back.
pub trait Tokenizer: Send {
    /// Encodes `text`; special-token strings in it (e.g. `<|im_start|>`) map to their ids.
    /// A BOS token is prepended when `bos` is set and the tokenizer has one.
    fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>>;
    /// Decodes ids to text (invalid UTF-8 sequences become U+FFFD).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    fn vocab_size(&self) -> usize;
    fn bos_id(&self) -> Option<u32>;
    fn eos_id(&self) -> Option<u32>;
    /// The id of a token given by its text, e.g. `"<|eot_id|>"`.
    fn token_to_id(&self, token: &str) -> Option<u32>;
    /// The text of a token, e.g. for a template's `bos_token`.
    fn id_to_token(&self, id: u32) -> Option<String>;
    /// A Jinja chat template shipped with the tokenizer.
    fn chat_template(&self) -> Option<&str> {
        None
    }
    /// Which kind of file this came from, for messages.
    fn kind(&self) -> &'static str;
}

/// Loads a tokenizer, recognising the format from the file's content, with the default
/// [`Limits`].
pub fn load(path: impl AsRef<Path>) -> Result<Box<dyn Tokenizer>> {
    load_with_limits(path, &Limits::default())
}

/// Loads a tokenizer under `limits`: the file sizes it reads and the longest text it
/// will encode ([`Limits::max_input_bytes`]).
pub fn load_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<Box<dyn Tokenizer>> {
    let path = path.as_ref();
    let err = |message: String| Error::Tokenizer {
        path: path.display().to_string(),
        message,
    };
    let bytes =
        read_bounded(path, limits.max_tokenizer_file_bytes).map_err(|e| err(e.to_string()))?;
    from_bytes_with_limits(&bytes, path, limits)
}

/// Like [`load_with_limits`], from a file's bytes; `path` names the file in errors and
/// locates a Hugging Face tokenizer's companion files (`tokenizer_config.json`,
/// `chat_template.jinja`) in its directory.
pub fn from_bytes_with_limits(
    bytes: &[u8],
    path: &Path,
    limits: &Limits,
) -> Result<Box<dyn Tokenizer>> {
    let err = |message: String| Error::Tokenizer {
        path: path.display().to_string(),
        message,
    };
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if bytes.get(start) == Some(&b'{') {
        return Ok(Box::new(
            HfTokenizer::from_bytes_with_limits(bytes, path, limits)
                .map_err(|e| err(e.to_string()))?,
        ));
    }
    if TiktokenTokenizer::looks_like(bytes) {
        let mut t = TiktokenTokenizer::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
        t.max_input_bytes = limits.max_input_bytes;
        return Ok(Box::new(t));
    }
    if SentencePieceTokenizer::looks_like(bytes) {
        let mut t = SentencePieceTokenizer::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
        t.max_input_bytes = limits.max_input_bytes;
        return Ok(Box::new(t));
    }
    Err(err(
        "unrecognised format: expected a Hugging Face tokenizer.json, a Llama 3 tiktoken tokenizer.model or a Llama 2 SentencePiece tokenizer.model".into(),
    ))
}

/// The error for a text longer than a tokenizer's [`Limits::max_input_bytes`].
pub(crate) fn check_input_len(text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(Error::Encoding(format!(
            "the text is {} bytes, more than the limit of {max} bytes (Limits::max_input_bytes)",
            text.len()
        )));
    }
    Ok(())
}
