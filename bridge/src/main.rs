use std::process::ExitCode;

use clap::Parser;
use quantum_intent_bridge::{run, BridgeArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = BridgeArgs::parse();
    let _logs = quantum_common::telemetry::init_logging(Some(&args.log_level));
    let shutdown = quantum_common::consumer::shutdown_on_signals();
    match run(args, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("quantum-intent-bridge failed: {e}");
            ExitCode::FAILURE
        }
    }
}
