//! Text generation with Llama-family ExecuTorch programs (as written by the official
//! `export_llm`): tokenizers, metadata, sampler, chat templates and the generation loop.

#![forbid(unsafe_code)]

mod error;
pub mod tokenizer;

pub use error::{Error, Result};
pub use tokenizer::Tokenizer;
