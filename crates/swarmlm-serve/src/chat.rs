//! The Mistral instruct chat format: how a list of chat messages becomes prompt token ids.
//!
//! Mistral's v1 instruct models (Mistral-7B-Instruct, Mixtral-8x7B-Instruct) were trained on
//! `<s>[INST] user [/INST] assistant</s>[INST] user [/INST]`, a system message being put in
//! front of the first user message followed by a blank line. The rendered text is tokenized as
//! Hugging Face's `apply_chat_template` does it: with a `tokenizer.json`, the whole text at once
//! (the `tokenizers` library splits out `<s>`/`</s>` itself); with only a SentencePiece
//! `tokenizer.model`, the text between the special tokens piece by piece, each with its own
//! leading `▁`, which is what `transformers`' legacy Llama tokenizer and mistral-common produce.
//! `tests/fixtures/chat_template_ids.json` holds the ids `transformers` gives for a few chats.

use swarmlm_engine::tokenizer::{Tokenizer, TokenizerKind};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The OpenAI role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" | "developer" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// Why a conversation cannot be put in the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("messages is empty: at least one user message is needed")]
    Empty,
    #[error("messages[{index}]: a system message is only allowed first")]
    LateSystem { index: usize },
    #[error("messages[{index}]: roles must alternate user/assistant/user/... (after an optional system message), found {found}")]
    Alternation { index: usize, found: &'static str },
    #[error("the last message must be from the user, so that the assistant answers it")]
    LastNotUser,
    #[error("the tokenizer has no {0} token, which the chat template needs")]
    NoSpecialToken(&'static str),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// A piece of the rendered chat: text, or a special token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Bos,
    Eos,
    Text(String),
}

/// The conversation in the template, as text and special-token parts.
fn render(messages: &[Message]) -> Result<Vec<Part>, ChatError> {
    let (system, turns) = match messages.first() {
        None => return Err(ChatError::Empty),
        Some(m) if m.role == Role::System => (Some(m.content.as_str()), &messages[1..]),
        Some(_) => (None, messages),
    };
    if turns.is_empty() {
        return Err(ChatError::LastNotUser);
    }
    let offset = messages.len() - turns.len();
    let mut parts = vec![Part::Bos];
    let mut text = String::new();
    for (i, m) in turns.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if m.role == Role::System {
            return Err(ChatError::LateSystem { index: i + offset });
        }
        if m.role != expected {
            return Err(ChatError::Alternation {
                index: i + offset,
                found: role_name(m.role),
            });
        }
        match m.role {
            Role::User => {
                text.push_str("[INST] ");
                if let (0, Some(sys)) = (i, system) {
                    text.push_str(sys);
                    text.push_str("\n\n");
                }
                text.push_str(&m.content);
                text.push_str(" [/INST]");
            }
            _ => {
                text.push(' ');
                text.push_str(&m.content);
                parts.push(Part::Text(std::mem::take(&mut text)));
                parts.push(Part::Eos);
            }
        }
    }
    if turns.last().map(|m| m.role) != Some(Role::User) {
        return Err(ChatError::LastNotUser);
    }
    parts.push(Part::Text(text));
    Ok(parts)
}

/// The rendered chat as one string (`<s>` / `</s>` spelled with the tokenizer's pieces).
pub fn chat_text(tokenizer: &Tokenizer, messages: &[Message]) -> Result<String, ChatError> {
    let (bos, eos) = special_pieces(tokenizer)?;
    Ok(render(messages)?
        .into_iter()
        .map(|p| match p {
            Part::Bos => bos.clone(),
            Part::Eos => eos.clone(),
            Part::Text(t) => t,
        })
        .collect())
}

fn special_pieces(tokenizer: &Tokenizer) -> Result<(String, String), ChatError> {
    let piece = |id: Option<u32>, name| {
        id.and_then(|id| tokenizer.id_to_piece(id))
            .ok_or(ChatError::NoSpecialToken(name))
    };
    Ok((
        piece(tokenizer.bos_id(), "BOS")?,
        piece(tokenizer.eos_id(), "EOS")?,
    ))
}

/// Prompt ids of a chat, ending where the assistant's answer starts.
pub fn chat_ids(tokenizer: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, ChatError> {
    let tok_err =
        |e: swarmlm_engine::tokenizer::TokenizerError| ChatError::Tokenizer(e.to_string());
    if tokenizer.kind() == TokenizerKind::HfJson {
        let text = chat_text(tokenizer, messages)?;
        return tokenizer.encode(&text, false).map_err(tok_err);
    }
    let bos = tokenizer.bos_id().ok_or(ChatError::NoSpecialToken("BOS"))?;
    let eos = tokenizer.eos_id().ok_or(ChatError::NoSpecialToken("EOS"))?;
    let mut ids = Vec::new();
    for part in render(messages)? {
        match part {
            Part::Bos => ids.push(bos),
            Part::Eos => ids.push(eos),
            Part::Text(t) => ids.extend(tokenizer.encode(&t, false).map_err(tok_err)?),
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.to_string(),
        }
    }

    #[test]
    fn bad_conversations_are_refused_with_the_index() {
        assert_eq!(render(&[]), Err(ChatError::Empty));
        assert_eq!(render(&[m(Role::System, "s")]), Err(ChatError::LastNotUser));
        assert_eq!(
            render(&[m(Role::User, "a"), m(Role::User, "b")]),
            Err(ChatError::Alternation {
                index: 1,
                found: "user"
            })
        );
        assert_eq!(
            render(&[m(Role::User, "a"), m(Role::System, "b")]),
            Err(ChatError::LateSystem { index: 1 })
        );
        assert_eq!(
            render(&[m(Role::User, "a"), m(Role::Assistant, "b")]),
            Err(ChatError::LastNotUser)
        );
    }
}
