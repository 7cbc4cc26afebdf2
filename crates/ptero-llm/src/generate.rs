//! The generation loop: prefill the prompt in chunks, then decode token by token with the
//! KV cache kept in the program's mutable buffers.

use std::path::Path;
use std::time::Instant;

use ptero::{Dynamism, EValue, Method, Program, ScalarType, Tag, Tensor};

use crate::chat::{ChatTemplate, Message};
use crate::metadata::{kv_cache_len, LlmMetadata};
use crate::sampler::{Sampler, SamplerConfig};
use crate::stream::TextStream;
use crate::tokenizer::{self, Tokenizer};
use crate::{Error, Limits, Result};

/// Settings of one generation.
#[derive(Debug, Clone, Default)]
pub struct GenerationConfig {
    /// Stop after this many new tokens (default: until the context is full).
    pub max_new_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The KV cache (context) is full.
    Context,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Context => "context",
        }
    }
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From the call to the first generated token.
    pub ttft_ms: f64,
    pub prefill_ms: f64,
    /// Time for the tokens after the first.
    pub decode_ms: f64,
    /// Bytes of weights one decode step reads: the constant tensors of `forward` and its
    /// delegates, less embedding tables (a step reads one row of those).
    pub weight_bytes: u64,
}

impl Stats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        if self.prefill_ms > 0.0 {
            self.prompt_tokens as f64 / (self.prefill_ms / 1e3)
        } else {
            0.0
        }
    }
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.generated_tokens.saturating_sub(1);
        if self.decode_ms > 0.0 && n > 0 {
            n as f64 / (self.decode_ms / 1e3)
        } else {
            0.0
        }
    }
    /// The weight-read bandwidth decode reached, in GB/s (10^9 bytes): the weights'
    /// bytes times decode tokens/s.
    pub fn decode_weight_gb_per_s(&self) -> f64 {
        self.weight_bytes as f64 * self.decode_tokens_per_s() / 1e9
    }
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (an end-of-sequence token that stopped generation included).
    pub ids: Vec<u32>,
    /// Generated text (without the end-of-sequence token); empty without a tokenizer.
    pub text: String,
    pub stop: StopReason,
    pub stats: Stats,
}

/// Generates text with a Llama-family program.
///
/// ```no_run
/// use ptero_llm::{GenerationConfig, TextGenerator};
/// let mut gen = TextGenerator::load("model.pte", Some("tokenizer.json"))?;
/// let out = gen.generate("Once upon a time", &GenerationConfig::default(), |piece| print!("{piece}"))?;
/// println!("\n[{} tokens, stopped on {}]", out.ids.len(), out.stop.as_str());
/// # Ok::<(), ptero_llm::Error>(())
/// ```
pub struct TextGenerator {
    method: Method,
    tokenizer: Option<Box<dyn Tokenizer>>,
    metadata: LlmMetadata,
    /// Tokens in the KV cache.
    pos: usize,
    /// Most tokens one `forward` call takes: the token input's bound (for a dynamic
    /// shape, also at most `max_seq_len`).
    chunk: usize,
    /// Tokens the KV cache holds: the metadata's context, or less when the program's
    /// cache is smaller than it claims.
    context: usize,
    /// Valid token ids are `0..vocab`.
    vocab: usize,
    limits: Limits,
    /// Input 1 takes one position per token (`cache_positions`) rather than the start.
    positions_input: bool,
    has_pos_input: bool,
    eos: Vec<u32>,
    logits: Vec<f32>,
    /// Without a KV cache every step re-reads the whole sequence.
    history: Vec<u32>,
    chat: Option<ChatState>,
    load_ms: f64,
    weight_bytes: u64,
}

struct ChatState {
    template: ChatTemplate,
    messages: Vec<Message>,
    /// The text whose tokens are in the KV cache.
    rendered: String,
}

impl TextGenerator {
    /// Loads a program (method `forward`) and, optionally, a tokenizer file.
    pub fn load(
        model: impl AsRef<Path>,
        tokenizer: Option<impl AsRef<Path>>,
    ) -> Result<TextGenerator> {
        TextGenerator::load_with_limits(model, tokenizer, Limits::default())
    }

    /// Like [`TextGenerator::load`], under `limits` (tokenizer files and input length,
    /// chat-template rendering, vocabulary size).
    pub fn load_with_limits(
        model: impl AsRef<Path>,
        tokenizer: Option<impl AsRef<Path>>,
        limits: Limits,
    ) -> Result<TextGenerator> {
        TextGenerator::load_with(model, tokenizer, &ptero::ModuleOptions::new(), limits)
    }

    /// Like [`TextGenerator::load_with_limits`], opening the program as `options` say
    /// (memory-mapped or read, see [`ptero::LoadMode`]) and loading it under the runtime
    /// limits in `options` (memory, instructions, loop work).
    ///
    /// ```no_run
    /// use ptero::{LoadMode, ModuleOptions};
    /// use ptero_llm::{Limits, TextGenerator};
    /// let options = ModuleOptions::new().load_mode(LoadMode::Read).max_memory(2 << 30);
    /// let gen = TextGenerator::load_with("model.pte", Some("tokenizer.json"), &options, Limits::default())?;
    /// # Ok::<(), ptero_llm::Error>(())
    /// ```
    pub fn load_with(
        model: impl AsRef<Path>,
        tokenizer: Option<impl AsRef<Path>>,
        options: &ptero::ModuleOptions,
        limits: Limits,
    ) -> Result<TextGenerator> {
        let t0 = Instant::now();
        let program = match options.load_mode {
            ptero::LoadMode::Mmap => Program::from_file(model)?,
            ptero::LoadMode::Read => Program::read_file(model, options.limits.max_memory)?,
        };
        let tokenizer = tokenizer
            .map(|t| tokenizer::load_with_limits(t, &limits))
            .transpose()?;
        let mut g = TextGenerator::build(&program, tokenizer, limits, options.limits)?;
        g.set_threads(options.threads)?;
        g.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(g)
    }

    /// Splits the model's work over `threads` threads (0: one per physical core; 1: the
    /// calling thread only). Generators start on one thread unless loaded with options.
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        let n = if threads == 0 {
            ptero::default_threads()
        } else {
            threads
        };
        let pool: Option<std::sync::Arc<dyn ptero::Parallel + Send + Sync>> = if n > 1 {
            Some(std::sync::Arc::new(ptero::ThreadPool::new(n)))
        } else {
            None
        };
        self.method.set_parallel(pool)?;
        Ok(())
    }

    /// Builds a generator over a loaded program.
    pub fn from_program(
        program: &Program,
        tokenizer: Option<Box<dyn Tokenizer>>,
    ) -> Result<TextGenerator> {
        TextGenerator::from_program_with_limits(program, tokenizer, Limits::default())
    }

    /// Like [`TextGenerator::from_program`], under `limits`.
    pub fn from_program_with_limits(
        program: &Program,
        tokenizer: Option<Box<dyn Tokenizer>>,
        limits: Limits,
    ) -> Result<TextGenerator> {
        TextGenerator::build(program, tokenizer, limits, ptero::Limits::default())
    }

    fn build(
        program: &Program,
        tokenizer: Option<Box<dyn Tokenizer>>,
        limits: Limits,
        runtime: ptero::Limits,
    ) -> Result<TextGenerator> {
        let metadata = LlmMetadata::read(program)?;
        let meta = program.method_meta("forward")?.clone();
        let tensor_in = |i: usize| {
            meta.inputs
                .get(i)
                .filter(|io| io.tag == Tag::Tensor)
                .and_then(|io| io.tensor.clone())
        };
        let tokens = tensor_in(0)
            .ok_or_else(|| Error::Model("input 0 of 'forward' is not a tensor".into()))?;
        if tokens.dtype != ScalarType::Long || tokens.sizes.len() != 2 {
            return Err(Error::Model(format!(
                "input 0 of 'forward' should be int64 token ids [1, seq], found {} {:?}",
                tokens.dtype, tokens.sizes
            )));
        }
        let pos_in = tensor_in(1);
        if let Some(p) = &pos_in {
            if p.dtype != ScalarType::Long || p.sizes.len() != 1 {
                return Err(Error::Model(format!(
                    "input 1 of 'forward' should be int64 positions [1] or [seq], found {} {:?}",
                    p.dtype, p.sizes
                )));
            }
        }
        let positions_input = pos_in.as_ref().is_some_and(|p| p.sizes[0] > 1);
        // The token input's shape is its upper bound: export_llm traces prefill with
        // max_seq_len - 1 tokens, so chunks of max_seq_len would not fit.
        let mut chunk = tokens.sizes[1];
        if tokens.dynamism != Dynamism::Static {
            chunk = chunk.min(metadata.max_seq_len);
        }
        if let Some(p) = pos_in.as_ref().filter(|_| positions_input) {
            chunk = chunk.min(p.sizes[0]);
        }
        if chunk == 0 {
            return Err(Error::Model(format!(
                "input 0 of 'forward' {:?} takes no tokens",
                tokens.sizes
            )));
        }
        let logits = meta
            .outputs
            .first()
            .and_then(|io| io.tensor.as_ref())
            .ok_or_else(|| Error::Model("output 0 of 'forward' is not a tensor".into()))?;
        if !matches!(
            logits.dtype,
            ScalarType::Float | ScalarType::Half | ScalarType::BFloat16 | ScalarType::Double
        ) {
            return Err(Error::Model(format!(
                "logits (output 0) of dtype {} are not supported",
                logits.dtype
            )));
        }
        let width = logits.sizes.last().copied().unwrap_or(0);
        if width == 0 || width > limits.max_vocab {
            return Err(Error::Model(format!(
                "logits (output 0) {:?} should end in a vocabulary of 1 to {} ids (Limits::max_vocab)",
                logits.sizes, limits.max_vocab
            )));
        }
        let vocab = metadata.vocab_size.map_or(width, |v| v.min(width));
        let mut context = metadata.max_context_len;
        if metadata.use_kv_cache {
            if let Some(cache) = kv_cache_len(program) {
                context = context.min(cache);
            }
        }
        let method = program.load_method_with_limits(
            "forward",
            &ptero::default_kernels(),
            &ptero::default_backends(),
            runtime,
        )?;
        let mut eos = metadata.eos_ids.clone();
        if eos.is_empty() {
            eos.extend(tokenizer.as_ref().and_then(|t| t.eos_id()));
        }
        let chat = tokenizer
            .as_deref()
            .and_then(ChatTemplate::for_tokenizer)
            .map(|mut template| {
                template.set_limits(&limits);
                ChatState {
                    template,
                    messages: Vec::new(),
                    rendered: String::new(),
                }
            });
        Ok(TextGenerator {
            method,
            tokenizer,
            positions_input,
            has_pos_input: pos_in.is_some(),
            metadata,
            pos: 0,
            chunk,
            context,
            vocab,
            limits,
            eos,
            logits: Vec::new(),
            history: Vec::new(),
            chat,
            load_ms: 0.0,
            weight_bytes: weight_bytes(program),
        })
    }

    /// Bytes of weights one decode step reads (see [`Stats::weight_bytes`]).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits (prompt length, chat-template rendering); those of the program
    /// and tokenizer files apply when loading.
    /// Sets what stops generation early (a [`ptero::Deadline`], a [`ptero::CancelToken`]):
    /// polled between and inside the program's instructions, so prefill and every decode
    /// step end with an error once it fires.
    pub fn set_interrupt(&mut self, interrupt: Option<std::sync::Arc<dyn ptero::Interrupt>>) {
        self.method.set_interrupt(interrupt);
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        if let Some(c) = &mut self.chat {
            c.template.set_limits(&limits);
        }
    }

    /// Tokens the conversation can hold: the model's context, or the program's KV cache
    /// when that is smaller than the context its metadata claims.
    pub fn context_len(&self) -> usize {
        self.context
    }

    /// Token ids are `0..vocab_size()`: the metadata's vocabulary, or the logits' width.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Checks ids given by a user (which may be negative or too large) against the
    /// vocabulary.
    pub fn token_ids(&self, ids: &[i64]) -> Result<Vec<u32>> {
        ids.iter()
            .map(|&id| {
                u32::try_from(id)
                    .ok()
                    .filter(|&t| (t as usize) < self.vocab)
                    .ok_or_else(|| self.bad_id(id))
            })
            .collect()
    }

    fn bad_id(&self, id: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!(
            "token id {id} is outside the model's vocabulary of {} ids (0 to {})",
            self.vocab,
            self.vocab - 1
        ))
    }

    pub fn metadata(&self) -> &LlmMetadata {
        &self.metadata
    }

    pub fn tokenizer(&self) -> Option<&dyn Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// Milliseconds spent in [`TextGenerator::load`].
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Tokens currently held in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Where the chat template comes from, if chatting is possible.
    pub fn chat_format(&self) -> Option<&'static str> {
        self.chat.as_ref().map(|c| c.template.origin)
    }

    /// Forgets the conversation: the next prompt starts at position 0.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.history.clear();
        if let Some(c) = &mut self.chat {
            c.messages.clear();
            c.rendered.clear();
        }
    }

    /// The error for a prompt that does not fit: `total` tokens against the context.
    fn context_error(&self, total: usize) -> Error {
        Error::InvalidArgument(format!(
            "the prompt and generated tokens ({total}) exceed the model's context of {} tokens",
            self.context
        ))
    }

    /// Runs `forward` on `tokens` starting at position `start`; leaves the last
    /// position's logits in `self.logits`.
    fn forward(&mut self, tokens: &[u32], start: usize) -> Result<()> {
        // Past the cache, the program would fail inside some view or index kernel with a
        // message about shapes; say what is actually wrong instead.
        let end = start
            .checked_add(tokens.len())
            .filter(|&e| e <= self.context)
            .ok_or_else(|| self.context_error(start.saturating_add(tokens.len())))?;
        if tokens.is_empty() || tokens.len() > self.chunk {
            return Err(Error::InvalidArgument(format!(
                "{} tokens in one call; the program takes 1 to {}",
                tokens.len(),
                self.chunk
            )));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        self.method.set_input(
            0,
            &EValue::Tensor(Tensor::from_slice(&ids, &[1, ids.len()])?),
        )?;
        if self.has_pos_input {
            let pos: Vec<i64> = if self.positions_input {
                (start..end).map(|p| p as i64).collect()
            } else {
                vec![start as i64]
            };
            self.method
                .set_input(1, &EValue::Tensor(Tensor::from_slice(&pos, &[pos.len()])?))?;
        }
        self.method.execute()?;
        self.read_logits()
    }

    /// Copies the last row of the logits (output 0) into `self.logits`, as f32.
    fn read_logits(&mut self) -> Result<()> {
        let meta = self.method.output_meta(0)?;
        let vocab = meta.sizes().last().copied().unwrap_or(0);
        if vocab == 0 || vocab > self.limits.max_vocab {
            return Err(Error::Model(format!(
                "logits {:?} should end in a vocabulary of 1 to {} ids (Limits::max_vocab)",
                meta.sizes(),
                self.limits.max_vocab
            )));
        }
        let dtype = meta.dtype;
        self.logits.clear();
        self.logits.try_reserve_exact(vocab).map_err(|_| {
            Error::Model(format!(
                "cannot allocate logits for a vocabulary of {vocab}"
            ))
        })?;
        fn last<T>(all: &[T], vocab: usize) -> Result<&[T]> {
            let start = all
                .len()
                .checked_sub(vocab)
                .ok_or_else(|| Error::Model("logits are smaller than their shape".into()))?;
            Ok(&all[start..])
        }
        match dtype {
            ScalarType::Float => {
                let all = self.method.output_data::<f32>(0)?;
                self.logits.extend_from_slice(last(all, vocab)?);
            }
            ScalarType::Half => {
                let all = self.method.output_data::<half::f16>(0)?;
                self.logits
                    .extend(last(all, vocab)?.iter().map(|x| x.to_f32()));
            }
            ScalarType::BFloat16 => {
                let all = self.method.output_data::<half::bf16>(0)?;
                self.logits
                    .extend(last(all, vocab)?.iter().map(|x| x.to_f32()));
            }
            ScalarType::Double => {
                let all = self.method.output_data::<f64>(0)?;
                self.logits
                    .extend(last(all, vocab)?.iter().map(|&x| x as f32));
            }
            d => {
                return Err(Error::Model(format!(
                    "logits of dtype {d} are not supported"
                )))
            }
        }
        Ok(())
    }

    /// Feeds `ids` into the model (the KV cache), in chunks as large as the program's
    /// token input takes.
    fn prefill(&mut self, ids: &[u32]) -> Result<()> {
        let total = self.pos.saturating_add(ids.len());
        if total > self.context {
            return Err(self.context_error(total));
        }
        if !self.metadata.use_kv_cache {
            self.history.extend_from_slice(ids);
            let window = self.history.len().saturating_sub(self.chunk);
            let seq = self.history[window..].to_vec();
            self.forward(&seq, 0)?;
            self.pos = self.history.len();
            return Ok(());
        }
        for part in ids.chunks(self.chunk) {
            self.forward(part, self.pos)?;
            self.pos += part.len();
        }
        Ok(())
    }

    /// Generates from token ids (no tokenizer needed). `on_token` gets each id and its text
    /// (empty without a tokenizer, or while a character is incomplete).
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        mut on_token: impl FnMut(u32, &str),
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        config.sampler.validate()?;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(self.bad_id(bad));
        }
        let t0 = Instant::now();
        self.prefill(prompt)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut stats = Stats {
            prompt_tokens: prompt.len(),
            prefill_ms,
            weight_bytes: self.weight_bytes,
            ..Default::default()
        };
        let mut sampler = Sampler::new(config.sampler);
        let mut stream = TextStream::new(prompt.last().copied());
        let mut ids = Vec::new();
        let mut text = String::new();
        let ctx = self.context;
        let max_new = config.max_new_tokens.unwrap_or(usize::MAX);
        let mut decode_start = None;
        let stop = loop {
            if ids.len() >= max_new {
                break StopReason::MaxTokens;
            }
            let token = sampler.sample(&self.logits);
            ids.push(token);
            if ids.len() == 1 {
                stats.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
                decode_start = Some(Instant::now());
            }
            let is_eos = self.eos.contains(&token);
            if is_eos && !config.ignore_eos {
                on_token(token, "");
                break StopReason::Eos;
            }
            let piece = match &self.tokenizer {
                Some(t) if !is_eos => stream.push(t.as_ref(), token)?.unwrap_or_default(),
                _ => String::new(),
            };
            text.push_str(&piece);
            on_token(token, &piece);
            if ids.len() >= max_new {
                break StopReason::MaxTokens;
            }
            if self.pos >= ctx {
                break StopReason::Context;
            }
            self.prefill(&[token])?;
        };
        if let Some(t) = &self.tokenizer {
            if let Some(rest) = stream.finish(t.as_ref())? {
                text.push_str(&rest);
                on_token(u32::MAX, &rest);
            }
        }
        stats.generated_tokens = ids.len();
        stats.decode_ms = decode_start.map_or(0.0, |d| d.elapsed().as_secs_f64() * 1e3);
        Ok(Generation {
            ids,
            text,
            stop,
            stats,
        })
    }

    /// Refuses text longer than [`Limits::max_input_bytes`] before any work is done on it.
    fn check_text(&self, text: &str) -> Result<()> {
        tokenizer::check_input_len(text, self.limits.max_input_bytes)
    }

    fn tokenizer_or_err(&self) -> Result<&dyn Tokenizer> {
        self.tokenizer.as_deref().ok_or_else(|| {
            Error::InvalidArgument("a text prompt needs a tokenizer (--tokenizer FILE)".into())
        })
    }

    /// Generates a continuation of `prompt` (the tokenizer's usual special tokens, such as
    /// BOS, are added), streaming text pieces to `on_piece`.
    pub fn generate(
        &mut self,
        prompt: &str,
        config: &GenerationConfig,
        mut on_piece: impl FnMut(&str),
    ) -> Result<Generation> {
        self.check_text(prompt)?;
        let ids = self.tokenizer_or_err()?.encode(prompt, true)?;
        self.generate_ids(&ids, config, |_, p| {
            if !p.is_empty() {
                on_piece(p)
            }
        })
    }

    /// One chat turn: `message` from the user, answered by the model. Earlier turns stay in
    /// the KV cache; only the new part of the rendered conversation is fed.
    pub fn chat(
        &mut self,
        message: &str,
        config: &GenerationConfig,
        mut on_piece: impl FnMut(&str),
    ) -> Result<Generation> {
        let tokenizer = self
            .tokenizer
            .as_deref()
            .ok_or_else(|| Error::InvalidArgument("chat needs a tokenizer".into()))?;
        let chat = self.chat.as_mut().ok_or_else(|| {
            Error::Template(
                "the tokenizer has no chat template and no known chat format (Llama 3, ChatML)"
                    .into(),
            )
        })?;
        tokenizer::check_input_len(message, self.limits.max_input_bytes)?;
        chat.messages.push(Message::new("user", message));
        let full = match chat.template.render(&chat.messages, true) {
            Ok(full) => full,
            Err(e) => {
                chat.messages.pop();
                return Err(e);
            }
        };
        let delta = match full.strip_prefix(chat.rendered.as_str()) {
            Some(d) if self.pos > 0 => d.to_string(),
            _ => {
                // First turn, or the template rewrote history: start the cache over.
                self.pos = 0;
                self.history.clear();
                full.clone()
            }
        };
        let ids = match tokenizer.encode(&delta, false) {
            Ok(ids) => ids,
            Err(e) => {
                chat.messages.pop();
                return Err(e);
            }
        };
        let result = self.generate_ids(&ids, config, |_, p| {
            if !p.is_empty() {
                on_piece(p)
            }
        });
        let chat = self
            .chat
            .as_mut()
            .ok_or_else(|| Error::Template("chat state lost".into()))?;
        match &result {
            Ok(g) => {
                chat.rendered = format!("{full}{}", g.text);
                chat.messages.push(Message::new("assistant", &g.text));
            }
            Err(_) => {
                chat.messages.pop();
            }
        }
        result
    }
}

/// Bytes of weights `forward` reads per step: its constant tensors except embedding
/// tables, and the constant data of its XNNPACK delegates.
fn weight_bytes(program: &Program) -> u64 {
    let portable = program
        .constant_bytes("forward", |op| op.contains("embedding"))
        .unwrap_or(0);
    let named = |k: &str| program.named_data(k);
    let delegated = program
        .delegate_blobs("forward")
        .unwrap_or_default()
        .into_iter()
        .filter(|(id, _)| *id == "XnnpackBackend")
        .filter_map(|(_, blob)| ptero::XnnpackSummary::of(blob, &named).ok())
        .fold(0u64, |a, s| a.saturating_add(s.constant_bytes));
    portable.saturating_add(delegated)
}
