//! Runs one generation with the embedded backend, outside the daemon, and prints the prompt's
//! token ids, the text as it streams, and the timings:
//!
//! `PREFILL_CHUNK` (default 16), `WEIGHTS` (`f32`, `f16`, `quantized`) and `RAW` (no chat
//! template) change the settings.
//!
//! ```sh
//! cargo run --release -p bkg-plugin-llm --example generate -- MODEL.gguf "What is the capital of France?" [max_tokens]
//! ```

use std::io::Write;
use std::path::PathBuf;

use bkg_plugin_llm::embedded::{EmbeddedModel, Job, Weights};
use bkg_plugin_llm::params::Input;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: generate MODEL.gguf PROMPT [max_tokens]")?);
    let prompt = args.next().ok_or("missing the prompt")?;
    let max_tokens = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let chunk = std::env::var("PREFILL_CHUNK").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let weights = match std::env::var("WEIGHTS").as_deref() {
        Ok("f16") => Weights::F16,
        Ok("quantized") => Weights::Quantized,
        _ => Weights::F32,
    };
    let model = EmbeddedModel::load(&path, None, chunk, weights)?;
    eprintln!("loaded {} in {} ms (avx: {})", model.id, model.info.load_ms, model.info.avx);
    let tokens = model
        .prompt_tokens(&Input::Prompt { text: prompt, raw: std::env::var("RAW").is_ok() }, None)
        .map_err(|e| e.to_string())?;
    eprintln!("prompt: {} tokens {:?}", tokens.len(), tokens);
    let job = Job { prompt: tokens, max_tokens, temperature: 0.0, top_p: 1.0, seed: 0, stop: vec![] };
    let cancel = tokio_util::sync::CancellationToken::new();
    let outcome = model
        .generate(&job, &cancel, &mut |piece| {
            let mut out = std::io::stdout();
            let _ = out.write_all(piece.as_bytes()).and_then(|()| out.flush());
            true
        })
        .map_err(|e| e.to_string())?;
    let _ = std::io::stdout().write_all(b"\n");
    eprintln!("{outcome:?}");
    Ok(())
}
