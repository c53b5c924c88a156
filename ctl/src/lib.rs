//! `quantumctl`: the operator's tool for the quantum pipeline, and the harness the system
//! tests use to stand up a real local stack.

pub mod bench;
pub mod demo;
pub mod fake_binance;
pub mod faults;
pub mod invariants;
pub mod pipeline_facts;
pub mod redis_server;
pub mod sim;
pub mod stack;
pub mod status;
pub mod why;
