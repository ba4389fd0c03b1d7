//! Temporary: embedding throughput by batch size.
use std::time::Instant;
fn main() {
    let dir = bkg_plugin_rag::config::default_model_dir().unwrap();
    let m = bkg_plugin_rag::embed::Embedder::load(&dir).unwrap();
    let para = "Ownership is a set of rules that govern how a Rust program manages memory. All programs have to manage the way they use a computer's memory while running. Some languages have garbage collection that regularly looks for no-longer-used memory as the program runs; in other languages, the programmer must explicitly allocate and free the memory. Rust uses a third approach: memory is managed through a system of ownership with a set of rules that the compiler checks. If any of the rules are violated, the program won't compile. None of the features of ownership will slow down your program while it's running.";
    let texts: Vec<String> = (0..64).map(|i| format!("{i} {para}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for bs in [1usize, 4, 8, 16, 32] {
        let t = Instant::now();
        for c in refs.chunks(bs) { m.embed(c).unwrap(); }
        let s = t.elapsed().as_secs_f64();
        eprintln!("batch {bs}: {:.1} chunks/s ({:.1} ms/chunk)", 64.0 / s, s * 1000.0 / 64.0);
    }
    let t = Instant::now();
    for _ in 0..20 { m.embed_one("how do I share data between threads").unwrap(); }
    eprintln!("query: {:.2} ms", t.elapsed().as_secs_f64() * 50.0);
}
