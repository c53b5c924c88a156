//! `quantumctl status`: stream lengths, group backlogs and the ledgers as a table.

use std::fmt::Write;

use fred::prelude::*;
use fred::types::Value;

use quantum_common::consumer::{group_backlog, scan_keys};
use quantum_common::contract::*;
use quantum_common::fields::hash_pairs;
use quantum_common::position::LedgerEntry;
use quantum_common::snapshot::Snapshot;
use quantum_common::types::Symbol;

/// Every ledger, by symbol (unreadable ones are reported as errors).
pub async fn ledgers(client: &Client) -> Result<Vec<(Symbol, Result<LedgerEntry, String>)>, Error> {
    let keys = scan_keys(client, &format!("{LEDGER_KEY_PREFIX}*")).await?;
    let symbols: Vec<Symbol> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(LEDGER_KEY_PREFIX))
        .filter_map(|s| Symbol::parse(s).ok())
        .collect();
    if symbols.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = client.pipeline();
    for s in &symbols {
        pipeline.hgetall::<(), _>(ledger_key(s)).await?;
    }
    let replies: Vec<Value> = pipeline.all().await?;
    Ok(symbols
        .into_iter()
        .zip(replies)
        .filter_map(|(s, v)| LedgerEntry::from_hash(&hash_pairs(v)).map(|e| (s, e)))
        .collect())
}

/// Renders the status report.
pub async fn report(client: &Client) -> Result<String, Error> {
    let mut out = String::new();
    let _ = writeln!(out, "STREAM                                   LENGTH");
    for stream in [
        INTENT_STREAM,
        INTENT_DLQ_STREAM,
        PLAN_STREAM,
        RESULT_STREAM,
        LEDGER_COMMIT_STREAM,
        LEDGER_COMMIT_DLQ_STREAM,
    ] {
        let len: u64 = client.xlen(stream).await?;
        let _ = writeln!(out, "{stream:<40} {len:>6}");
    }
    let _ = writeln!(
        out,
        "\nGROUP                         STREAM                              CONSUMERS  PENDING      LAG"
    );
    for (stream, group) in [
        (INTENT_STREAM, INTENT_GROUP),
        (PLAN_STREAM, PLAN_GROUP),
        (LEDGER_COMMIT_STREAM, LEDGER_GROUP),
    ] {
        match group_backlog(client, stream, group).await? {
            Some(b) => {
                let lag = b.lag.map_or_else(|| "?".to_string(), |l| l.to_string());
                let _ = writeln!(
                    out,
                    "{group:<29} {stream:<35} {:>9} {:>8} {lag:>8}",
                    b.consumers, b.pending
                );
            }
            None => {
                let _ = writeln!(out, "{group:<29} {stream:<35} (no group yet)");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nLEDGER       SIDE   POSITION_AMT     AVG_ENTRY   REALIZED_PNL  FILLS  SOURCE     EXCHANGE_AMT"
    );
    let all = ledgers(client).await?;
    if all.is_empty() {
        let _ = writeln!(out, "(no ledgers)");
    }
    for (symbol, entry) in all {
        let snap: Value = client.hgetall(snapshot_key(&symbol)).await?;
        let exchange =
            Snapshot::from_hash(&hash_pairs(snap)).map_or_else(|| "-".to_string(), |s| s.position_amt.to_string());
        match entry {
            Ok(e) => {
                let _ = writeln!(
                    out,
                    "{:<12} {:<6} {:>12} {:>13} {:>14} {:>6}  {:<10} {:>12}",
                    symbol.as_str(),
                    e.position.side().as_str(),
                    e.position.amt.to_string(),
                    e.position.avg_entry.round_dp(4).to_string(),
                    e.position.realized_pnl.round_dp(4).to_string(),
                    e.fills,
                    e.source,
                    exchange
                );
            }
            Err(err) => {
                let _ = writeln!(out, "{:<12} UNREADABLE: {err}", symbol.as_str());
            }
        }
    }
    Ok(out)
}
