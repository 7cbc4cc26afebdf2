//! `ptero llm`: generate text or chat with a Llama-family program.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use ptero_llm::{Generation, GenerationConfig, SamplerConfig, TextGenerator};

use crate::peak_rss_mb;

/// Options of `ptero llm`.
#[derive(clap::Args)]
pub struct LlmArgs {
    model: PathBuf,
    /// tokenizer.json (Hugging Face), or tokenizer.model (Llama 3 tiktoken, Llama 2 SentencePiece).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The prompt text. Without --prompt or --prompt-ids, chat interactively.
    #[arg(long)]
    prompt: Option<String>,
    /// The prompt as token ids, e.g. 1,2,3 (no tokenizer needed).
    // Read as text so that a negative or huge id gets a message naming it and the
    // vocabulary, not a bare parse error.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    prompt_ids: Option<Vec<String>>,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Stop after this many new tokens (default: when the context is full).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Continue past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print load time, time to first token, tokens/s and peak memory (to stderr).
    #[arg(long)]
    stats: bool,
    /// Print one JSON object: ids, text, stop, stats.
    #[arg(long)]
    json: bool,
}

fn fail(msg: impl Into<String>) -> ptero::Error {
    ptero::Error::InvalidArgument(msg.into())
}

fn llm_err(e: ptero_llm::Error) -> ptero::Error {
    match e {
        ptero_llm::Error::Runtime(e) => e,
        e => fail(e.to_string()),
    }
}

fn report(g: &Generation, load_ms: f64) {
    let s = &g.stats;
    eprintln!();
    eprintln!("load            {load_ms:>9.1} ms");
    eprintln!("first token     {:>9.1} ms", s.ttft_ms);
    eprintln!(
        "prefill         {:>9.1} tokens/s ({} tokens)",
        s.prefill_tokens_per_s(),
        s.prompt_tokens
    );
    eprintln!(
        "decode          {:>9.1} tokens/s ({} tokens)",
        s.decode_tokens_per_s(),
        s.generated_tokens
    );
    eprintln!(
        "weights read    {:>9.1} GB/s ({:.1} MB per token)",
        s.decode_weight_gb_per_s(),
        s.weight_bytes as f64 / 1e6
    );
    eprintln!("peak memory     {:>9.1} MiB", peak_rss_mb());
    eprintln!(
        "stopped         {}",
        match g.stop {
            ptero_llm::StopReason::Eos => "end-of-sequence token",
            ptero_llm::StopReason::MaxTokens => "--max-new-tokens reached",
            ptero_llm::StopReason::Context => "context full",
        }
    );
}

pub fn llm(a: &LlmArgs, load: &crate::LoadArgs) -> Result<(), ptero::Error> {
    if a.prompt.is_some() && a.prompt_ids.is_some() {
        return Err(fail("give either --prompt or --prompt-ids, not both"));
    }
    if a.chat && a.prompt_ids.is_some() {
        return Err(fail("--chat takes a text --prompt, not --prompt-ids"));
    }
    if a.tokenizer.is_none() && a.prompt_ids.is_none() {
        return Err(fail(
            "text prompts and chat need --tokenizer FILE (or give --prompt-ids 1,2,3)",
        ));
    }
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        return Err(fail(format!(
            "--temperature must be a finite number >= 0, got {}",
            a.temperature
        )));
    }
    if a.top_k == Some(0) {
        return Err(fail("--top-k must be at least 1, got 0"));
    }
    if let Some(p) = a.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(fail(format!("--top-p must be in (0, 1], got {p}")));
    }
    let mut options = ptero::ModuleOptions::new()
        .load_mode(if load.no_mmap {
            ptero::LoadMode::Read
        } else {
            ptero::LoadMode::Mmap
        })
        .limits(load.limits())
        .threads(load.threads());
    for d in &load.data {
        options = options.data_file(d);
    }
    let mut gen = TextGenerator::load_with(
        &a.model,
        a.tokenizer.as_ref(),
        &options,
        ptero_llm::Limits::default(),
    )
    .map_err(llm_err)?;
    if let Some(t) = load.timeout {
        gen.set_interrupt(Some(std::sync::Arc::new(ptero::Deadline::after(t))));
    }
    let prompt_ids = a
        .prompt_ids
        .as_deref()
        .map(|ids| prompt_ids(&gen, ids))
        .transpose()?;
    let config = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        ignore_eos: a.ignore_eos,
    };
    let stream = !a.json;
    let mut out = std::io::stdout();
    let mut print = |piece: &str| {
        if stream {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    };
    let g = if let Some(ids) = prompt_ids.as_deref() {
        gen.generate_ids(ids, &config, |_, p| print(p))
            .map_err(llm_err)?
    } else if let Some(prompt) = a.prompt.as_deref() {
        if a.chat {
            gen.chat(prompt, &config, &mut print).map_err(llm_err)?
        } else {
            gen.generate(prompt, &config, &mut print).map_err(llm_err)?
        }
    } else if std::io::stdin().is_terminal() && !a.json {
        return interactive(&mut gen, &config, a.stats);
    } else {
        let mut prompt = String::new();
        for line in std::io::stdin().lock().lines() {
            prompt.push_str(&line.map_err(|e| fail(e.to_string()))?);
            prompt.push('\n');
        }
        let prompt = prompt.trim_end();
        if a.chat {
            gen.chat(prompt, &config, &mut print).map_err(llm_err)?
        } else {
            gen.generate(prompt, &config, &mut print).map_err(llm_err)?
        }
    };
    if a.json {
        let o = serde_json::json!({
            "ids": g.ids,
            "text": g.text,
            "stop": g.stop.as_str(),
            "stats": {
                "load_ms": gen.load_ms(),
                "ttft_ms": g.stats.ttft_ms,
                "prefill_tokens_per_s": g.stats.prefill_tokens_per_s(),
                "decode_tokens_per_s": g.stats.decode_tokens_per_s(),
                "peak_rss_mb": peak_rss_mb(),
                "prompt_tokens": g.stats.prompt_tokens,
                "generated_tokens": g.stats.generated_tokens,
                "weight_bytes_per_token": g.stats.weight_bytes,
                "decode_weight_gb_per_s": g.stats.decode_weight_gb_per_s(),
            },
        });
        outln!("{o}");
    } else {
        outln!();
    }
    if a.stats {
        report(&g, gen.load_ms());
    }
    Ok(())
}

/// Parses `--prompt-ids` and checks them against the model's vocabulary.
fn prompt_ids(gen: &TextGenerator, ids: &[String]) -> Result<Vec<u32>, ptero::Error> {
    let mut parsed = Vec::with_capacity(ids.len());
    for id in ids {
        let id = id.trim();
        parsed.push(id.parse::<i64>().map_err(|_| {
            fail(format!(
                "--prompt-ids: '{id}' is not a token id (an integer from 0 to {})",
                gen.vocab_size().saturating_sub(1)
            ))
        })?);
    }
    gen.token_ids(&parsed).map_err(llm_err)
}

/// A chat in the terminal: each answer streams as it is generated; history stays in the
/// KV cache. `/reset` starts over, `/exit` (or Ctrl-D) quits.
fn interactive(
    gen: &mut TextGenerator,
    config: &GenerationConfig,
    stats: bool,
) -> Result<(), ptero::Error> {
    let format = gen.chat_format().ok_or_else(|| {
        fail("interactive chat needs a chat template: the tokenizer has none and is neither Llama 3 nor ChatML")
    })?;
    eprintln!(
        "Chatting ({format}, {} tokens of context). /reset starts over, /exit quits.",
        gen.context_len()
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("\n> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| fail(e.to_string()))?
            == 0
        {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                gen.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        let result = gen.chat(line, config, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        });
        outln!();
        match result {
            Ok(g) => {
                if g.stop == ptero_llm::StopReason::Context {
                    eprintln!("(the context is full: /reset to continue)");
                }
                if stats {
                    report(&g, gen.load_ms());
                }
            }
            Err(e) => eprintln!("error: {}", llm_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        llm: LlmArgs,
        #[command(flatten)]
        load: crate::LoadArgs,
    }

    fn tiny() -> String {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/llm/tiny/model.pte"
        )
        .into()
    }

    fn run(args: &[&str]) -> Result<(), String> {
        let cli = Cli::try_parse_from(std::iter::once("ptero-llm").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        llm(&cli.llm, &cli.load).map_err(|e| e.to_string())
    }

    /// Arguments that cannot mean anything are clear errors, never panics.
    #[test]
    fn bad_arguments_are_named() {
        let model = tiny();
        let cases: &[(&[&str], &str)] = &[
            (&["--temperature", "NaN"], "--temperature"),
            (&["--temperature=-1"], "--temperature"),
            (&["--temperature", "inf"], "--temperature"),
            (&["--top-k", "0"], "--top-k"),
            (&["--top-p", "NaN"], "--top-p"),
            (&["--top-p", "0"], "--top-p"),
            (&["--top-p", "2"], "--top-p"),
            (
                &["--prompt-ids", "-5"],
                "token id -5 is outside the model's vocabulary of 512",
            ),
            (&["--prompt-ids", "1,-5"], "token id -5 is outside"),
            (&["--prompt-ids=1,512"], "token id 512 is outside"),
            (
                &["--prompt-ids", "99999999999999999999"],
                "'99999999999999999999' is not a token id (an integer from 0 to 511)",
            ),
            (&["--prompt-ids", "x"], "'x' is not a token id"),
        ];
        for (args, want) in cases {
            let mut all = vec![model.as_str(), "--json"];
            if !args.iter().any(|a| a.starts_with("--prompt-ids")) {
                all.extend(["--prompt-ids", "1,2"]);
            }
            all.extend_from_slice(args);
            let e = run(&all).expect_err(want);
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn huge_but_meaningful_arguments_run() {
        let model = tiny();
        run(&[
            &model,
            "--json",
            "--prompt-ids",
            "1,2,3",
            "--max-new-tokens",
            "18446744073709551615",
            "--top-k",
            "18446744073709551615",
            "--temperature",
            "1e30",
            "--ignore-eos",
        ])
        .unwrap();
    }
}
