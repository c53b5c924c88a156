use std::process::ExitCode;

use clap::Parser;
use quantum_intent_executor::{run, ExecutorArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ExecutorArgs::parse();
    let _logs = quantum_common::telemetry::init_logging(Some(&args.log_level));
    let shutdown = quantum_common::consumer::shutdown_on_signals();
    match run(args, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("quantum-intent-executor failed: {e}");
            ExitCode::FAILURE
        }
    }
}
