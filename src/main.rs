//! The `bkg` binary: `bkg serve` runs the daemon, `bkg plugin <name>` runs a built-in plug-in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for configuration errors (EX_CONFIG); systemd should not restart on it.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "bkg", version, about = "Supervisor daemon for an AI backend")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, env = "BKG_LISTEN", default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Directory for bkg.db, the plugins.json mirror and plug-in working directories.
        #[arg(long, env = "BKG_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Registry to seed a new database from (default: ./plugins.json if present, else the
        /// embedded copy).
        #[arg(long, env = "BKG_REGISTRY")]
        registry: Option<PathBuf>,
        /// Log format of the daemon's own logs: pretty or json (default: pretty on a TTY).
        #[arg(long, env = "BKG_LOG_FORMAT")]
        log_format: Option<String>,
        /// Settings-group values; each wins over the database (see `/admin/settings`).
        #[command(flatten)]
        settings: bkg::settings::SettingsArgs,
    },
    /// Run a built-in plug-in (started by the daemon, not by hand).
    Plugin {
        /// One of the built-in plug-ins.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Plugin { name } => match name.as_str() {
            "apikeys" => bkg_plugin_apikeys::run(),
            "echo" => bkg_plugin_echo::run(),
            "fake" => bkg_plugin_fake::run(),
            "llm" => bkg_plugin_llm::run(),
            "rag" => bkg_plugin_rag::run(),
            other => {
                eprintln!("unknown built-in plug-in {other:?} (known: {})", bkg::config::BUILTINS.join(", "));
                ExitCode::from(2)
            }
        },
        Cmd::Serve { listen, data_dir, registry, log_format, settings } => {
            if let Err(e) = settings.apply_to(&bkg::settings::DaemonSettings::default()) {
                eprintln!("bkg: invalid setting {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            // Held until the end of `main`: dropping it flushes what the log thread still holds.
            let (log_control, _log_flush) = init_tracing(log_format.as_deref(), settings.log_level().unwrap_or("info"));
            let registry = registry.or_else(|| {
                let local = PathBuf::from("plugins.json");
                local.is_file().then_some(local)
            });
            if let Err(e) = bkg::app::check_registry_file(registry.as_deref()) {
                eprintln!("bkg: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let settings =
                bkg::Settings { data_dir, registry_file: registry, args: settings, log_control: Some(log_control) };
            serve(settings, listen)
        }
    }
}

fn serve(settings: bkg::Settings, listen: SocketAddr) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bkg: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = bkg::Shutdown::new();
        shutdown.listen_for_signals()?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        bkg::run(settings, listener, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "bkg failed");
            eprintln!("bkg: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the daemon's subscriber (stderr, JSON or pretty) with a reloadable filter, and
/// returns the handle that `logging.level` changes go through, and the guard of the log thread.
///
/// Lines are formatted on the thread that logs and written by a dedicated thread, in batches
/// (a 64 KiB buffer flushed whenever the queue runs empty): a plug-in's log flood re-emitted line
/// by line cost a write syscall per line on a tokio worker. The queue holds 8,192 lines (its
/// slots are allocated up front); beyond that, lines are dropped rather than blocking a worker:
/// they stay in the plug-in's ring, and `bkg_daemon_log_dropped_total` counts them.
fn init_tracing(
    format: Option<&str>,
    level: &str,
) -> (bkg::settings::LogControl, tracing_appender::non_blocking::WorkerGuard) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(8_192)
        .thread_name("bkg-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    bkg::logs::set_daemon_log_drops(writer.error_counter());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    fn control<L, S>(handle: tracing_subscriber::reload::Handle<L, S>) -> bkg::settings::LogControl
    where
        L: From<EnvFilter> + Send + Sync + 'static,
        S: 'static,
    {
        bkg::settings::LogControl::new(move |level| {
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    let handle = if json {
        let builder = builder.json().flatten_event(true).with_filter_reloading();
        let handle = control(builder.reload_handle());
        builder.init();
        handle
    } else {
        let builder = builder.with_filter_reloading();
        let handle = control(builder.reload_handle());
        builder.init();
        handle
    };
    (handle, guard)
}
