//! `bkg-plugin-llm`: the llm plug-in as a standalone executable (the daemon runs the same code as
//! `bkg plugin llm`).

fn main() -> std::process::ExitCode {
    bkg_plugin_llm::run()
}
