//! The `assay` command: `validate`, `up` (the local stack in one process), `run`, `rerun`,
//! `get`, `logs`, `trigger` and `history`.
//!
//! Exit codes: 0 success (for `run` and `rerun`: the execution passed), 1 failure (invalid definitions,
//! a failed execution, an unreachable service, a timeout), 2 `assay up` found no usable
//! nats-server, 130 interrupted. A reader that goes away (`assay get executions | head`)
//! ends a command quietly with 0; `assay up` keeps running without its stdout.

// Everything for stdout goes through `out!`/`outln!` (a closed pipe ends the process
// quietly), so `print_stdout` stays a warning here: a stray `println!` fails the lint.
#![allow(clippy::print_stderr)]

/// `print!` to stdout that ends the process quietly when the reader went away
/// (`assay get executions | head`): see [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

/// `println!` to stdout that ends the process quietly when the reader went away.
#[macro_export]
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod api;
pub mod args;
pub mod cmd;
pub mod format;
pub mod logline;
pub mod provenance;
pub mod report;
pub mod style;
pub mod view;

use anyhow::{Result, anyhow};
use assay_bus::{Bus, NatsOptions};
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command};
use crate::style::Palette;

/// Default log filter of client commands (everything but `up`): only warnings, such as
/// "nats unreachable, retrying".
pub const CLIENT_FILTER: &str = "warn";

/// The log filter for a command.
pub fn log_filter(command: &Command) -> &'static str {
    match command {
        Command::Up(_) => assay_telemetry::DEFAULT_FILTER,
        _ => CLIENT_FILTER,
    }
}

/// Connects to NATS (retrying with backoff, logged) with an error that says what to do.
pub async fn connect_bus(url: &str, name: &str, shutdown: &CancellationToken) -> Result<Bus> {
    let options = NatsOptions {
        url: url.to_string(),
        connect_attempts: 6,
        name: name.to_string(),
        ..NatsOptions::default()
    };
    Bus::connect(&options, shutdown)
        .await
        .map_err(|e| anyhow!("{e} (set --nats or ASSAY_NATS_URL)"))
}

/// Writes to stdout. `print!` panics when stdout is a closed pipe ("failed printing to
/// stdout: Broken pipe", exit 101); here the process ends at once with exit 0, as a reader
/// that stopped early (`| head`, `| grep -q`) has all it wanted. Any other write error ends
/// it with exit 1 and the reason on stderr.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        exit_on_write_error(&e);
    }
}

/// Flushes stdout, ending the process as [`write_stdout`] does when that fails.
pub fn flush_stdout() {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().flush() {
        exit_on_write_error(&e);
    }
}

fn exit_on_write_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// Runs one command; returns the process exit code.
pub async fn dispatch(cli: Cli) -> Result<u8> {
    let palette = Palette::detect();
    let global = cli.global;
    match cli.command {
        Command::Validate(a) => {
            let path = a.path.unwrap_or_else(|| global.workflows.clone());
            cmd::validate::run(&path, &palette)
        }
        Command::Up(a) => cmd::up::run(&global, *a, palette).await,
        Command::Run(a) => cmd::run::run(&global, a, palette).await,
        Command::Rerun(a) => cmd::rerun::run(&global, a, palette).await,
        Command::Get(g) => cmd::get::run(&global, g, palette).await,
        Command::Logs(a) => cmd::logs::run(&global, a, palette).await,
        Command::Trigger(a) => cmd::trigger::run(&global, a).await,
        Command::History(a) => cmd::history::run(&global, a, &palette).await,
        Command::Cancel(a) => cmd::cancel::run(&global, a).await,
        Command::Crds(a) => cmd::crds::run(a),
    }
}
