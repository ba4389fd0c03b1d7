//! The tokenizer, rebuilt from a GGUF file's metadata (no `tokenizer.json` needed).
//!
//! Supported: `tokenizer.ggml.model = "gpt2"`, the byte-level BPE of GPT-2, SmolLM, Qwen and
//! Llama 3. Control and user-defined tokens become special added tokens, so `<|im_start|>` in a
//! rendered chat template is one token and is never split. No BOS is added: the chat template
//! already says everything the model needs.

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A tokenizer plus the ids that end generation.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// Token ids that end a turn: the declared EOS plus the usual end-of-turn tokens.
    pub eos: Vec<u32>,
}

/// Builds the tokenizer from `tokenizer.ggml.*` metadata.
pub fn from_gguf(content: &gguf_file::Content) -> Result<GgufTokenizer, String> {
    let md = &content.metadata;
    let get = |key: &str| md.get(key).ok_or_else(|| format!("the GGUF has no {key} metadata"));
    let model = get("tokenizer.ggml.model")?.to_string().map_err(|e| e.to_string())?;
    if model != "gpt2" {
        return Err(format!(
            "the GGUF's tokenizer is {model:?}; only byte-level BPE (\"gpt2\": GPT-2, SmolLM, Qwen, Llama 3) is supported"
        ));
    }
    let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
        .to_vec()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|v| {
            let line = v.to_string().map_err(|e| e.to_string())?;
            line.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| format!("bad merge {line:?}"))
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec().map_err(|e| e.to_string())?.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        None => vec![],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("cannot build the BPE model from the GGUF: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str);
    // SmolLM's pre-tokenizer splits digits one by one before the GPT-2 regex.
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        _ => byte_level.into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter().copied().chain(std::iter::repeat(1)))
        .filter(|(_, t)| *t == TOKEN_TYPE_CONTROL || *t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer.add_special_tokens(specials).map_err(|e| format!("cannot add the GGUF's special tokens: {e}"))?;

    let mut eos = Vec::new();
    if let Some(id) = md.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()) {
        eos.push(id);
    }
    for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<|end_of_text|>"] {
        if let Some(id) = tokenizer.token_to_id(end)
            && !eos.contains(&id)
        {
            eos.push(id);
        }
    }
    if eos.is_empty() {
        return Err("the GGUF declares no end-of-sequence token (tokenizer.ggml.eos_token_id)".into());
    }
    Ok(GgufTokenizer { tokenizer, eos })
}
