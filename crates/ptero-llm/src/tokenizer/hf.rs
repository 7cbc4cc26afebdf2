use std::path::Path;

use super::Tokenizer;
use crate::{Error, Result};

/// A Hugging Face `tokenizer.json`, with `tokenizer_config.json` / `chat_template.jinja`
/// from the same folder when present (special tokens and the chat template).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    template: Option<String>,
}

fn token_field(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl HfTokenizer {
    /// Parses `tokenizer.json` bytes; `path` locates the companion files.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<HfTokenizer> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Encoding(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config: Option<serde_json::Value> = std::fs::read(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut template = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
        let (mut bos, mut eos) = (None, None);
        if let Some(c) = &config {
            if template.is_none() {
                template = c
                    .get("chat_template")
                    .and_then(|t| t.as_str())
                    .map(String::from);
            }
            bos = token_field(c, "bos_token").and_then(|t| inner.token_to_id(&t));
            eos = token_field(c, "eos_token").and_then(|t| inner.token_to_id(&t));
        }
        Ok(HfTokenizer {
            inner,
            bos,
            eos,
            template,
        })
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Encoding(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Encoding(e.to_string()))
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    fn chat_template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    fn kind(&self) -> &'static str {
        "Hugging Face tokenizer.json"
    }
}
