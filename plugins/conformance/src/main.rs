//! `bkg-conformance`: runs the svp/1 conformance cases against a plug-in program and prints one
//! line per case. Exits 0 when no case failed, 1 when one did, 2 on a usage error.
//!
//! ```text
//! bkg-conformance [--config JSON] [--env KEY=VALUE]... [--slow-method NAME [--slow-params JSON]]
//!                 [--case NAME]... -- PROGRAM [ARGS]...
//! ```

use std::process::ExitCode;

use bkg_conformance::{Case, PluginCommand, Report, run_case};
use clap::Parser;
use serde_json::Value;

/// Takes an svp/1 plug-in through the conformance cases of protocol.md §2.15.
#[derive(Debug, Parser)]
#[command(name = "bkg-conformance", version)]
struct Args {
    /// JSON object sent as `initialize.config`.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    config: String,
    /// Extra environment variable for the plug-in (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A method that runs for at least a second, for the cancellation case (skipped without one).
    #[arg(long, value_name = "NAME")]
    slow_method: Option<String>,
    /// Params of the slow method; add "stream":true to cover streaming.
    #[arg(long, value_name = "JSON", default_value = "{}", requires = "slow_method")]
    slow_params: String,
    /// Run only this case (repeatable); see --list.
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// List the case names and exit.
    #[arg(long)]
    list: bool,
    /// The plug-in program and its arguments, after `--`.
    #[arg(last = true, value_name = "PROGRAM [ARGS]", required_unless_present = "list")]
    command: Vec<String>,
}

fn parse_json(flag: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{flag}: not valid JSON: {e}"))
}

fn build(args: &Args) -> Result<(PluginCommand, Vec<Case>), String> {
    let Some((program, rest)) = args.command.split_first() else {
        return Err("missing the plug-in program after `--`".into());
    };
    let mut cmd = PluginCommand::new(program).args(rest.iter().cloned());
    let config = parse_json("--config", &args.config)?;
    if !config.is_object() {
        return Err("--config: must be a JSON object".into());
    }
    cmd = cmd.config(config);
    for pair in &args.env {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("--env {pair:?}: expected KEY=VALUE"))?;
        cmd = cmd.env(key, value);
    }
    if let Some(method) = &args.slow_method {
        let params = parse_json("--slow-params", &args.slow_params)?;
        if !params.is_object() {
            return Err("--slow-params: must be a JSON object".into());
        }
        cmd = cmd.slow_call(method.clone(), params);
    }
    let cases = if args.cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        args.cases
            .iter()
            .map(|n| Case::from_name(n).ok_or_else(|| format!("--case {n:?}: no such case (see --list)")))
            .collect::<Result<_, _>>()?
    };
    Ok((cmd, cases))
}

/// Prints one report line. A closed stdout (`| head`) is not an error worth a panic: the exit
/// code still tells the verdict.
fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

async fn run(cmd: PluginCommand, cases: Vec<Case>) -> Report {
    let mut report = Report::default();
    for case in cases {
        let result = run_case(case, &cmd).await;
        print_line(&result.to_string());
        report.results.push(result);
    }
    print_line(&report.summary());
    report
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    if args.list {
        for case in Case::ALL {
            print_line(case.name());
        }
        return ExitCode::SUCCESS;
    }
    let (cmd, cases) = match build(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bkg-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bkg-conformance: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = runtime.block_on(run(cmd, cases));
    if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
