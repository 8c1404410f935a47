//! `assay`: parses flags, starts logging, runs the command, returns its exit code.

use std::process::ExitCode;

/// mimalloc, as in the services' own binaries: `assay up` hosts all four in this process.
/// With its `override` feature it also serves SQLite's C allocations, which under glibc
/// stayed in one arena per blocking-pool thread after a large execution. Its idle threads
/// give memory back (see `assay_alloc`).
#[global_allocator]
static ALLOC: assay_alloc::MiMalloc = assay_alloc::MiMalloc;

fn main() -> ExitCode {
    let cli = assay_cli::args::Cli::parse_noting_sources();
    assay_telemetry::init("assay", assay_cli::log_filter(&cli.command));
    let runtime = match assay_alloc::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(assay_cli::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Do not wait for lingering background tasks (e.g. a blocked stdin reader).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}
