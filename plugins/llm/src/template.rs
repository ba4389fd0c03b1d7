//! The chat template: ChatML, written by hand (`<|im_start|>role\ncontent<|im_end|>\n`), the
//! format of SmolLM2, Qwen and many other GGUF models.
//!
//! The GGUF's own Jinja template (`tokenizer.chat_template`) is only inspected: when it is
//! ChatML, its default system prompt (SmolLM2 has one) is reused. A model with another template
//! cannot be chatted with here; it still answers `raw` prompts.

use crate::params::{ChatMessage, Role};

/// How conversations are turned into prompt text for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    ChatMl {
        /// The system message the template inserts when the conversation has none.
        default_system: Option<String>,
    },
    /// The GGUF declares a template that is not ChatML.
    Unsupported { reason: String },
}

impl ChatTemplate {
    /// Picks the template from the GGUF's `tokenizer.chat_template` (ChatML when absent).
    pub fn from_gguf(template: Option<&str>) -> Self {
        let Some(template) = template else { return ChatTemplate::ChatMl { default_system: None } };
        if !template.contains("<|im_start|>") {
            return ChatTemplate::Unsupported {
                reason: "the model's chat template is not ChatML; only ChatML templates are supported, so send \
                         `prompt` with `raw: true` (and format it yourself)"
                    .into(),
            };
        }
        ChatTemplate::ChatMl { default_system: default_system(template) }
    }

    /// Renders a conversation and opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], system_override: Option<&str>) -> Result<String, String> {
        let default_system = match self {
            ChatTemplate::ChatMl { default_system } => default_system.as_deref(),
            ChatTemplate::Unsupported { reason } => return Err(reason.clone()),
        };
        let mut out = String::new();
        if messages.first().is_none_or(|m| m.role != Role::System)
            && let Some(system) = system_override.or(default_system)
        {
            push_turn(&mut out, "system", system);
        }
        for m in messages {
            push_turn(&mut out, m.role.as_str(), &m.content);
        }
        out.push_str("<|im_start|>assistant\n");
        Ok(out)
    }
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

/// The literal system turn a ChatML Jinja template inserts, e.g. SmolLM2's
/// `'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'`.
fn default_system(template: &str) -> Option<String> {
    // In the Jinja source the newline is written as the two characters `\n`.
    for marker in ["<|im_start|>system\\n", "<|im_start|>system\n"] {
        if let Some(start) = template.find(marker) {
            let rest = &template[start + marker.len()..];
            let end = rest.find("<|im_end|>")?;
            let text = &rest[..end];
            // A template that builds the system turn from a variable has no literal default.
            if text.contains('\'') || text.contains('"') || text.contains("{{") || text.contains('+') {
                return None;
            }
            return Some(text.replace("\\n", "\n"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn user(text: &str) -> ChatMessage {
        ChatMessage { role: Role::User, content: text.into() }
    }

    #[test]
    fn renders_smollm2_like_its_jinja_template() {
        let t = ChatTemplate::from_gguf(Some(SMOLLM2));
        let prompt = t.render(&[user("What is the capital of France?")], None).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system =
            t.render(&[ChatMessage { role: Role::System, content: "Be brief.".into() }, user("Hi")], None).unwrap();
        assert!(with_system.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"));
        let overridden = t.render(&[user("Hi")], Some("You are terse.")).unwrap();
        assert!(overridden.starts_with("<|im_start|>system\nYou are terse.<|im_end|>\n"));
    }

    #[test]
    fn no_template_means_chatml_without_system_and_others_are_refused() {
        let t = ChatTemplate::from_gguf(None);
        assert_eq!(t.render(&[user("x")], None).unwrap(), "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
        let llama3 = ChatTemplate::from_gguf(Some("{{ '<|start_header_id|>' + message['role'] }}"));
        assert!(llama3.render(&[user("x")], None).unwrap_err().contains("raw"));
    }
}
