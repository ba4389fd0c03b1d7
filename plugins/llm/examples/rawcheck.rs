//! Temporary debugging aid.
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let ids: Vec<u32> = std::env::args().nth(2).unwrap().split(',').map(|s| s.parse().unwrap()).collect();
    let ctx = std::env::var("CTX").is_ok();
    let mut f = std::fs::File::open(&path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    for (k, v) in c.metadata.iter() { if !k.starts_with("tokenizer.ggml.t") && !k.starts_with("tokenizer.ggml.m") { println!("{k}: {v:?}"); } }
    let dev = Device::Cpu;
    let mut m = ModelWeights::from_gguf(c, &mut f, &dev).unwrap();
    let run = |m: &mut ModelWeights| {
        let mut out = vec![];
        let input = Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
        let mut logits = m.forward(&input, 0).unwrap();
        let mut pos = ids.len();
        for _ in 0..12 {
            let next = logits.squeeze(0).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
            out.push(next);
            let input = Tensor::new(&[next], &dev).unwrap().unsqueeze(0).unwrap();
            logits = m.forward(&input, pos).unwrap();
            pos += 1;
        }
        out
    };
    let out = if ctx { dev.with_context(|| run(&mut m)) } else { run(&mut m) };
    println!("{out:?}");
}
