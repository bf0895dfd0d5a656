use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use pg2es::cli::{Cli, Command};
use pg2es::config::LogFormat;
use pg2es::pipeline::{self, Mode};
use pg2es::{shutdown, Config, Error};

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pg2es failed");
            eprintln!("pg2es: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("pg2es: hint: {hint}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2: bad configuration; 3: another instance holds the state; 1: anything else.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Config(_) => 2,
        Error::AlreadyRunning { .. } => 3,
        _ => 1,
    }
}

fn try_main() -> pg2es::Result<()> {
    let cli = Cli::parse();
    // Settings are checked before anything starts: a bad value never reaches the runtime.
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(config.log_format);
    let mode = match cli.command.unwrap_or(Command::Run { once: false }) {
        Command::PrintConfig => {
            print!("{}", config.render());
            return Ok(());
        }
        Command::Run { once: true } => Mode::Once,
        Command::Run { once: false } => Mode::Continuous,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io { context: "cannot start runtime", path: ".".into(), source })?;
    runtime.block_on(async {
        let (trigger, shutdown) = shutdown::Shutdown::new();
        shutdown::on_signals(trigger);
        pipeline::run(&config, mode, &shutdown).await.map(|_| ())
    })
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
