//! Text generation with Llama-family ExecuTorch programs (as written by the official
//! `export_llm`): tokenizers, metadata, sampler, chat templates and the generation loop.
//!
//! ```no_run
//! use ptero_llm::{GenerationConfig, SamplerConfig, TextGenerator};
//! let mut gen = TextGenerator::load("smollm2.pte", Some("tokenizer.json"))?;
//! let config = GenerationConfig { max_new_tokens: Some(64), sampler: SamplerConfig::default(), ignore_eos: false };
//! let answer = gen.chat("What is the capital of France?", &config, |piece| print!("{piece}"))?;
//! println!("\n{:.1} tokens/s", answer.stats.decode_tokens_per_s());
//! # Ok::<(), ptero_llm::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod chat;
mod error;
mod generate;
mod limits;
mod metadata;
mod sampler;
mod stream;
mod template;
pub mod tokenizer;

pub use error::{Error, Result};
pub use generate::{Generation, GenerationConfig, Stats, StopReason, TextGenerator};
pub use limits::Limits;
pub use metadata::LlmMetadata;
pub use sampler::{Sampler, SamplerConfig};
pub use stream::TextStream;
pub use tokenizer::Tokenizer;
