//! Chat prompts: the tokenizer's own Jinja template when it ships one (as Hugging Face
//! tokenizers do), otherwise Llama 3's or ChatML's format, picked by the special tokens
//! the tokenizer knows.

use minijinja::context;

use crate::tokenizer::Tokenizer;
use crate::{Limits, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A chat format.
pub struct ChatTemplate {
    source: String,
    /// Where it came from, for `--verbose` output.
    pub origin: &'static str,
    bos: String,
    eos: String,
    limits: Limits,
}

impl ChatTemplate {
    /// The template for `tokenizer`, or `None` when it has none and no known format fits.
    pub fn for_tokenizer(tokenizer: &dyn Tokenizer) -> Option<ChatTemplate> {
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let (bos, eos) = (text(tokenizer.bos_id()), text(tokenizer.eos_id()));
        let (source, origin) = if let Some(t) = tokenizer.chat_template() {
            (t.to_string(), "the tokenizer's chat template")
        } else if tokenizer.token_to_id("<|start_header_id|>").is_some() {
            (LLAMA3.to_string(), "Llama 3 format")
        } else if tokenizer.token_to_id("<|im_start|>").is_some() {
            (CHATML.to_string(), "ChatML format")
        } else {
            return None;
        };
        Some(ChatTemplate {
            source,
            origin,
            bos,
            eos,
            limits: Limits::default(),
        })
    }

    /// A template from Jinja source, with the given special-token texts.
    pub fn from_source(source: &str, bos: &str, eos: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            origin: "a custom template",
            bos: bos.into(),
            eos: eos.into(),
            limits: Limits::default(),
        }
    }

    /// Sets the rendering limits ([`Limits::template_fuel`], output and work bytes,
    /// recursion depth); the defaults are [`Limits::default`]'s.
    pub fn set_limits(&mut self, limits: &Limits) {
        self.limits = *limits;
    }

    /// Renders a conversation; with `add_generation_prompt`, ends where the assistant's
    /// answer starts.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        crate::template::render(
            &self.source,
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            },
            &self.limits,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_formats() {
        let chatml = ChatTemplate::from_source(CHATML, "", "<|im_end|>");
        let msgs = [Message::new("user", "Hi")];
        assert_eq!(
            chatml.render(&msgs, true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let llama = ChatTemplate::from_source(LLAMA3, "<|begin_of_text|>", "<|eot_id|>");
        assert_eq!(
            llama.render(&[Message::new("system", "Be brief."), Message::new("user", " Hi ")], true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        // Multi-turn renders extend earlier renders, which keeps history in the KV cache.
        let one = chatml.render(&msgs, true).unwrap();
        let two = chatml
            .render(
                &[
                    Message::new("user", "Hi"),
                    Message::new("assistant", "Hello!"),
                    Message::new("user", "Bye"),
                ],
                true,
            )
            .unwrap();
        assert!(two.starts_with(&format!("{one}Hello!")));
        let bad = ChatTemplate::from_source("{{ raise_exception('no system role') }}", "", "");
        assert!(bad
            .render(&msgs, true)
            .unwrap_err()
            .to_string()
            .contains("no system role"));
    }
}
