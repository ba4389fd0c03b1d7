//! Runs one generation with the embedded backend, outside the daemon, and prints the prompt's
//! token ids, the text as it streams, and the timings:
//!
//! ```sh
//! cargo run --release -p bkg-plugin-llm --example generate -- MODEL.gguf "What is the capital of France?" [max_tokens]
//! ```

use std::io::Write;
use std::path::PathBuf;

use bkg_plugin_llm::embedded::{EmbeddedModel, Job};
use bkg_plugin_llm::params::Input;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: generate MODEL.gguf PROMPT [max_tokens]")?);
    let prompt = args.next().ok_or("missing the prompt")?;
    let max_tokens = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let chunk = std::env::var("PREFILL_CHUNK").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let convert = match std::env::var("CONVERT").as_deref() {
        Ok("q8_0") => Some(candle_core::quantized::GgmlDType::Q8_0),
        Ok("f16") => Some(candle_core::quantized::GgmlDType::F16),
        Ok("f32") => Some(candle_core::quantized::GgmlDType::F32),
        Ok("q4_0") => Some(candle_core::quantized::GgmlDType::Q4_0),
        Ok("q4k") => Some(candle_core::quantized::GgmlDType::Q4K),
        _ => None,
    };
    let model = EmbeddedModel::load(&path, None, chunk, convert)?;
    eprintln!("loaded {} in {} ms (avx: {})", model.id, model.info.load_ms, model.info.avx);
    let tokens = model.prompt_tokens(&Input::Prompt { text: prompt, raw: std::env::var("RAW").is_ok() }, None).map_err(|e| e.to_string())?;
    eprintln!("prompt: {} tokens {:?}", tokens.len(), tokens);
    let job = Job { prompt: tokens, max_tokens, temperature: 0.0, top_p: 1.0, seed: 0, stop: vec![] };
    let cancel = tokio_util::sync::CancellationToken::new();
    let outcome = model
        .generate(&job, &cancel, &mut |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
            true
        })
        .map_err(|e| e.to_string())?;
    println!();
    eprintln!("{outcome:?}");
    Ok(())
}
