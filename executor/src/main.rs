use std::process::ExitCode;

use clap::Parser;
use quantum_intent_executor::{run, ExecutorArgs};

// The services allocate many small, short-lived buffers per stream entry; mimalloc handles
// that pattern markedly better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = ExecutorArgs::parse();
    let _telemetry = match quantum_runtime::telemetry::init("quantum-intent-executor", Some(&args.log_level)) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("quantum-intent-executor: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Only in builds with the `failpoints` feature (the system tests'): reads FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let shutdown = quantum_runtime::consumer::shutdown_on_signals();
    match run(args, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("quantum-intent-executor failed: {e}");
            ExitCode::FAILURE
        }
    }
}
