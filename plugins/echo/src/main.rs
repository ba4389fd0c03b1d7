//! `bkg-plugin-echo`: the echo plug-in as a standalone executable.
//!
//! This is all a third-party plug-in's `main` needs; register the binary in the daemon's
//! `plugins.json` (path and sha256) and the daemon starts it. Run by hand it only explains that it
//! must be started by `bkg serve`.

fn main() -> std::process::ExitCode {
    bkg_plugin_echo::run()
}
