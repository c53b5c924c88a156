//! `quantumctl status`: stream lengths, group backlogs, the bridge's outcomes by reason over
//! the last minutes, and the ledgers, as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write;

use fred::prelude::*;
use fred::types::Value;

use quantum_model::contract::*;
use quantum_model::position::LedgerEntry;
use quantum_model::snapshot::Snapshot;
use quantum_model::types::Symbol;
use quantum_runtime::consumer::{scan_keys, GroupBacklog};

use crate::pipeline_facts::{shard_backlogs, stream_shards, sum_backlogs, total_len};
use quantum_runtime::reply::hash_pairs;

/// Every ledger, by symbol (unreadable ones are reported as errors).
///
/// # Errors
/// Redis unreachable.
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

/// What `quantumctl status` shows.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The pipeline's `STREAM_SHARDS`: the lengths and backlogs below add up every shard.
    pub shards: u16,
    pub streams: Vec<(&'static str, u64)>,
    /// (group, stream, backlog; None when the group does not exist yet)
    pub groups: Vec<(&'static str, &'static str, Option<GroupBacklog>)>,
    /// With `STREAM_SHARDS` > 1, the same per shard (group, shard stream, backlog): a shard
    /// that lags alone (a hot symbol, a stuck loop) shows here.
    pub shard_groups: Vec<(&'static str, String, Option<GroupBacklog>)>,
    /// (symbol, ledger or why it is unreadable, exchange position)
    pub ledgers: Vec<(Symbol, Result<LedgerEntry, String>, Option<String>)>,
    /// The window the outcomes cover, in minutes.
    pub minutes: u64,
    /// Intents added in the window, and what the bridge did with them (`kind[:reason]`).
    pub intents: u64,
    pub outcomes: BTreeMap<String, u64>,
}

/// Reads everything the status shows; outcomes cover the last `minutes`.
///
/// # Errors
/// Redis errors only.
pub async fn gather(client: &Client, minutes: u64) -> Result<Status, Error> {
    let shards = stream_shards(client).await?;
    let mut status = Status {
        minutes,
        shards: shards.count(),
        ..Status::default()
    };
    for stream in [
        INTENT_STREAM,
        INTENT_DLQ_STREAM,
        PLAN_STREAM,
        RESULT_STREAM,
        LEDGER_COMMIT_STREAM,
        LEDGER_COMMIT_DLQ_STREAM,
    ] {
        status.streams.push((stream, total_len(client, shards, stream).await?));
    }
    for (stream, group) in [
        (INTENT_STREAM, INTENT_GROUP),
        (PLAN_STREAM, PLAN_GROUP),
        (LEDGER_COMMIT_STREAM, LEDGER_GROUP),
    ] {
        let backlogs = shard_backlogs(client, shards, stream, group).await?;
        status.groups.push((group, stream, sum_backlogs(&backlogs)));
        if shards.count() > 1 {
            status
                .shard_groups
                .extend(backlogs.into_iter().map(|(shard, backlog)| (group, shard, backlog)));
        }
    }
    for (symbol, entry) in ledgers(client).await? {
        let snap: Value = client.hgetall(snapshot_key(&symbol)).await?;
        let exchange = Snapshot::from_hash(&hash_pairs(snap)).map(|s| s.position_amt.to_string());
        status.ledgers.push((symbol, entry, exchange));
    }
    (status.intents, status.outcomes) = crate::why::bridge_outcomes(client, minutes).await?;
    Ok(status)
}

impl Status {
    /// The report as text; `color` only on a terminal.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        self.render_streams(&mut out);
        self.render_outcomes(&mut out, color);
        self.render_ledgers(&mut out);
        out
    }

    fn render_streams(&self, out: &mut String) {
        if self.shards > 1 {
            let _ = writeln!(
                out,
                "STREAM_SHARDS={}: apply.plan, apply.result and ledger.commit are split by symbol; \
                 their lengths and backlogs add up every shard\n",
                self.shards
            );
        }
        let _ = writeln!(out, "STREAM                                   LENGTH");
        for (stream, len) in &self.streams {
            let _ = writeln!(out, "{stream:<40} {len:>6}");
        }
        let _ = writeln!(
            out,
            "\nGROUP                         STREAM                              CONSUMERS  PENDING      LAG"
        );
        Self::render_backlogs(out, self.groups.iter().map(|(g, s, b)| (*g, *s, b)));
        if !self.shard_groups.is_empty() {
            let _ = writeln!(
                out,
                "\nBY SHARD                      STREAM                              CONSUMERS  PENDING      LAG"
            );
            Self::render_backlogs(out, self.shard_groups.iter().map(|(g, s, b)| (*g, s.as_str(), b)));
        }
    }

    fn render_backlogs<'a>(out: &mut String, rows: impl Iterator<Item = (&'a str, &'a str, &'a Option<GroupBacklog>)>) {
        for (group, stream, backlog) in rows {
            match backlog {
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
    }

    fn render_outcomes(&self, out: &mut String, color: bool) {
        let _ = writeln!(
            out,
            "\nBRIDGE OUTCOMES (last {} min): {} intents",
            self.minutes, self.intents
        );
        if self.outcomes.is_empty() {
            let _ = writeln!(out, "(no intents in the window)");
        }
        for (label, n) in &self.outcomes {
            let style = if label == "published" {
                anstyle::AnsiColor::Green
            } else if label.starts_with("blocked") || label.starts_with("dlq") {
                anstyle::AnsiColor::Red
            } else {
                anstyle::AnsiColor::Yellow
            };
            let text = format!("{label:<48} {n:>8}");
            if color {
                let style = anstyle::Style::new().fg_color(Some(style.into()));
                let _ = writeln!(out, "{}{text}{}", style.render(), style.render_reset());
            } else {
                let _ = writeln!(out, "{text}");
            }
        }
    }

    fn render_ledgers(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nLEDGER       SIDE   POSITION_AMT     AVG_ENTRY   REALIZED_PNL  FILLS  SOURCE     EXCHANGE_AMT"
        );
        if self.ledgers.is_empty() {
            let _ = writeln!(out, "(no ledgers)");
        }
        for (symbol, entry, exchange) in &self.ledgers {
            let exchange = exchange.as_deref().unwrap_or("-");
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
    }

    /// The same facts as JSON, for scripts.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        json!({
            "stream_shards": self.shards,
            "streams": self.streams.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "groups": self.groups.iter().map(|(g, s, b)| json!({
                "group": g, "stream": s,
                "consumers": b.as_ref().map(|b| b.consumers),
                "pending": b.as_ref().map(|b| b.pending),
                "lag": b.as_ref().and_then(|b| b.lag),
            })).collect::<Vec<_>>(),
            "shard_groups": self.shard_groups.iter().map(|(g, s, b)| json!({
                "group": g, "stream": s,
                "consumers": b.as_ref().map(|b| b.consumers),
                "pending": b.as_ref().map(|b| b.pending),
                "lag": b.as_ref().and_then(|b| b.lag),
            })).collect::<Vec<_>>(),
            "bridge_outcomes": {
                "minutes": self.minutes,
                "intents": self.intents,
                "by_outcome": self.outcomes,
            },
            "ledgers": self.ledgers.iter().map(|(sym, e, exchange)| match e {
                Ok(e) => json!({
                    "symbol": sym.as_str(),
                    "position_amt": e.position.amt.to_string(),
                    "side": e.position.side().as_str(),
                    "avg_entry_price": e.position.avg_entry.to_string(),
                    "realized_pnl": e.position.realized_pnl.to_string(),
                    "fills": e.fills,
                    "source": e.source,
                    "exchange_amt": exchange,
                }),
                Err(err) => json!({"symbol": sym.as_str(), "error": err}),
            }).collect::<Vec<_>>(),
        })
    }
}
