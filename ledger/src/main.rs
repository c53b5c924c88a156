use std::process::ExitCode;

use clap::Parser;
use quantum_ledger::{run, LedgerArgs};

// The services allocate many small, short-lived buffers per stream entry; mimalloc handles
// that pattern markedly better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = LedgerArgs::parse();
    let _telemetry = match quantum_runtime::telemetry::init("quantum-ledger", Some(&args.log_level)) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("quantum-ledger: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = quantum_runtime::consumer::shutdown_on_signals();
    match run(args, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("quantum-ledger failed: {e}");
            ExitCode::FAILURE
        }
    }
}
