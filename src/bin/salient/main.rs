//! The `salient` command line. Errors are typed in the library and reported here, once, with
//! their context; the exit status tells a scheduler what happened (see [`ExitCode`]s below).

mod commands;

use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use crate::commands::Command;

/// Exit status for errors caused by input, configuration or the environment.
const EXIT_FAILURE: u8 = 1;
/// Exit status for command-line usage errors (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "salient",
    version,
    about = "Cluster images by what matters in them, not by their background (contrastive IDFD)"
)]
struct Cli {
    /// Log format on stderr: human-readable text, or JSON lines for schedulers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The error and its causes on one line. Library errors already print their source (for
/// users of the library), so a cause whose text is already in the line is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SALIENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a scheduler's log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Datasets(args) => args.run(),
        Command::Train(args) => args.run(),
        Command::Evaluate(args) => args.run(),
        Command::Export(args) => args.run(),
        Command::Inspect(args) => args.run(),
        Command::Embed(args) => args.run(),
        Command::Report(args) => args.run(),
        Command::Sql(args) => args.run(),
        #[cfg(feature = "serve")]
        Command::Serve(args) => args.run(),
        #[cfg(feature = "ballista")]
        Command::Scheduler(args) => args.run(),
        #[cfg(feature = "ballista")]
        Command::Executor(args) => args.run(),
        Command::Compare(args) => args.run(),
        Command::Run(args) => args.run(),
        Command::Quickstart(args) => args.run(),
    }
}
