//! The governor's settings and its glue to the batch: which proposal and history to read, how a
//! verdict shapes the plan, its log line and metrics, and the history sample to record. The
//! decision itself is the pure `quantum_model::governor::decide`.

use fred::clients::Pipeline;
use fred::prelude::*;
use fred::types::Value;

use quantum_model::contract::{kill_history_key, proposal_key};
use quantum_model::governor::{
    GovernorConfig, KillWeights, MissingPolicy, Mode, ProposalError, ProposalFields, ProposalView, Sample, SymbolRisk,
    Verdict, PROPOSAL_FIELDS,
};
use quantum_model::labels::symbol_label;
use quantum_model::plan::Plan;
use quantum_model::types::{Decision, Symbol};
use quantum_runtime::reply::opt_text;

/// How long a symbol's history outlives its last sample (a delisted symbol's set goes away).
const HISTORY_TTL_SECS: i64 = 7 * 24 * 3600;

fn parse_unit(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{raw:?} is not a number between 0 and 1")),
    }
}

fn parse_finite_non_negative(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{raw:?} is not a finite number ≥ 0")),
    }
}

fn parse_weight(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{raw:?} is not a finite number")),
    }
}

/// Governor settings (`GOVERNOR_*`, `K_BLOCK_*`).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Governor (kill score)")]
pub struct GovernorArgs {
    /// separated (default: exits never blocked, entries judged on K's z-score against the
    /// symbol's history) or legacy (production's rule: K ≥ K_BLOCK_WARNING blocks entries).
    #[arg(
        long,
        env = "GOVERNOR_MODE",
        value_enum,
        default_value = "separated",
        ignore_case = true
    )]
    pub governor_mode: Mode,
    /// Legacy: K at or above blocks entries and exits (kill_score_critical).
    #[arg(long, env = "K_BLOCK_CRITICAL", default_value = "0.80", value_parser = parse_unit)]
    pub k_block_critical: f64,
    /// Legacy: K at or above blocks entries (kill_score_warning_risk_increase); exits pass.
    #[arg(long, env = "K_BLOCK_WARNING", default_value = "0.60", value_parser = parse_unit)]
    pub k_block_warning: f64,
    /// Separated: K at or above blocks entries whatever the history (kill_score_entry_critical).
    #[arg(long, env = "GOVERNOR_ENTRY_K_CRITICAL", default_value = "0.95", value_parser = parse_unit)]
    pub entry_k_critical: f64,
    /// Separated: a z-score at or above blocks entries (kill_score_entry_outlier).
    #[arg(long, env = "GOVERNOR_ENTRY_Z_BLOCK", default_value = "3.0", value_parser = parse_finite_non_negative)]
    pub entry_z_block: f64,
    /// Separated, fewer than GOVERNOR_Z_MIN_SAMPLES samples: K at or above blocks entries
    /// (kill_score_entry_fallback_blocked).
    #[arg(long, env = "GOVERNOR_ENTRY_K_FALLBACK", default_value = "0.85", value_parser = parse_unit)]
    pub entry_k_fallback: f64,
    /// Kill-score samples kept per symbol for the z-score.
    #[arg(long, env = "GOVERNOR_Z_WINDOW", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub z_window: u64,
    /// Samples needed before the z-score is used (the fallback threshold applies until then).
    #[arg(long, env = "GOVERNOR_Z_MIN_SAMPLES", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub z_min_samples: u64,
    /// Floor of the history's standard deviation in the z-score.
    #[arg(long, env = "GOVERNOR_Z_MIN_STD", default_value = "0.1", value_parser = parse_unit)]
    pub z_min_std: f64,
    /// A proposal whose last_update_epoch is older than this (seconds) is stale.
    #[arg(long, env = "GOVERNOR_PROPOSAL_MAX_AGE_S", default_value_t = 300)]
    pub proposal_max_age_s: u64,
    /// What a missing or stale proposal means for entries: allow (EXECUTE, reason
    /// proposal_missing / proposal_stale) or block-entries. Exits always pass.
    #[arg(
        long,
        env = "GOVERNOR_MISSING_PROPOSAL",
        value_enum,
        default_value = "allow",
        ignore_case = true
    )]
    pub missing_proposal: MissingPolicy,
    /// Weight of k_regime_flip when K is computed from the components.
    #[arg(long, env = "GOVERNOR_W_REGIME_FLIP", default_value = "1.0", value_parser = parse_weight)]
    pub w_regime_flip: f64,
    /// Weight of k_sigma_spike.
    #[arg(long, env = "GOVERNOR_W_SIGMA_SPIKE", default_value = "0.5", value_parser = parse_weight)]
    pub w_sigma_spike: f64,
    /// Weight of k_ts_drop.
    #[arg(long, env = "GOVERNOR_W_TS_DROP", default_value = "0.5", value_parser = parse_weight)]
    pub w_ts_drop: f64,
    /// Weight of k_age_penalty.
    #[arg(long, env = "GOVERNOR_W_AGE_PENALTY", default_value = "0.3", value_parser = parse_weight)]
    pub w_age_penalty: f64,
}

impl GovernorArgs {
    /// The pure module's configuration.
    ///
    /// # Errors
    /// Thresholds in an order that cannot work (warning above critical).
    pub fn config(&self) -> Result<GovernorConfig, String> {
        if self.k_block_warning > self.k_block_critical {
            return Err(format!(
                "K_BLOCK_WARNING ({}) is above K_BLOCK_CRITICAL ({})",
                self.k_block_warning, self.k_block_critical
            ));
        }
        if self.z_min_std <= 0.0 {
            return Err("GOVERNOR_Z_MIN_STD must be greater than 0 (it divides the z-score)".into());
        }
        if self.z_min_samples > self.z_window {
            return Err(format!(
                "GOVERNOR_Z_MIN_SAMPLES ({}) is above GOVERNOR_Z_WINDOW ({}): the z-score would never apply",
                self.z_min_samples, self.z_window
            ));
        }
        Ok(GovernorConfig {
            mode: self.governor_mode,
            k_block_critical: self.k_block_critical,
            k_block_warning: self.k_block_warning,
            entry_k_critical: self.entry_k_critical,
            entry_k_fallback: self.entry_k_fallback,
            entry_z_block: self.entry_z_block,
            history_window: self.z_window as usize,
            min_samples: self.z_min_samples as usize,
            z_min_std: self.z_min_std,
            max_age_secs: self.proposal_max_age_s,
            missing: self.missing_proposal,
            weights: KillWeights {
                regime_flip: self.w_regime_flip,
                sigma_spike: self.w_sigma_spike,
                ts_drop: self.w_ts_drop,
                age_penalty: self.w_age_penalty,
            },
        })
    }
}

/// Queues the reads of one symbol's proposal and history on the batch's pipeline: the newest
/// `window + 1` samples, so `window` remain older than a proposal already recorded.
///
/// # Errors
/// Only a failure to queue the commands.
pub async fn queue_reads(pipeline: &Pipeline<Client>, cfg: &GovernorConfig, symbol: &Symbol) -> Result<(), Error> {
    pipeline
        .hmget::<(), _, _>(proposal_key(symbol), PROPOSAL_FIELDS.to_vec())
        .await?;
    let newest = cfg.history_window as i64 + 1;
    pipeline
        .zrange::<(), _, _, _>(kill_history_key(symbol), -newest, -1, None, false, None, false)
        .await
}

/// Builds a symbol's risk view from the two replies [`queue_reads`] queued. A reply that is an
/// error (a key of the wrong type) makes the proposal unreadable for this symbol only.
pub fn read_replies(
    cfg: &GovernorConfig,
    proposal: Result<Value, Error>,
    history: Result<Value, Error>,
    now: u64,
) -> SymbolRisk {
    let (proposal, history) = match (proposal, history) {
        (Ok(p), Ok(h)) => (p, h),
        (Err(e), _) | (_, Err(e)) => {
            return SymbolRisk {
                view: ProposalView::Unreadable(ProposalError::Storage(e.to_string())),
                history: Vec::new(),
                unrecorded: None,
            }
        }
    };
    let mut fields = ProposalFields::default();
    for (slot, value) in fields.0.iter_mut().zip(proposal.into_array()) {
        *slot = opt_text(&value);
    }
    let members: Vec<String> = history.into_array().iter().filter_map(opt_text).collect();
    SymbolRisk::assess(cfg, &fields, &members, now)
}

/// Queues the recording of a new sample (bounded to the window) on the batch's transaction.
/// Idempotent: the member is the proposal's epoch and K, so replicas record it once.
///
/// # Errors
/// Only a failure to queue the commands.
pub async fn queue_record(
    trx: &Pipeline<Client>,
    cfg: &GovernorConfig,
    symbol: &Symbol,
    sample: Sample,
) -> Result<(), Error> {
    let key = kill_history_key(symbol);
    trx.zadd::<(), _, _>(&key, None, None, false, false, (sample.epoch as f64, sample.member()))
        .await?;
    let keep = cfg.history_window as i64;
    trx.zremrangebyrank::<(), _>(&key, 0, -(keep + 1)).await?;
    trx.expire::<(), _>(&key, HISTORY_TTL_SECS, None).await
}

/// Puts the verdict on the plan: decision, reason (when BLOCKED), reason codes and the
/// governor's inputs.
pub fn annotate(plan: &mut Plan, verdict: &Verdict, view: &ProposalView) {
    plan.decision = verdict.decision;
    plan.reason = (verdict.decision == Decision::Blocked).then(|| verdict.reason.code().to_string());
    plan.reason_codes = vec![verdict.reason.code().to_string()];
    plan.risk.clear();
    if let Some(k) = verdict.kill_score {
        plan.risk.push(("kill_score", format!("{k:.4}")));
    }
    if let Some(z) = verdict.z {
        plan.risk.push(("kill_score_z", format!("{z:.4}")));
    }
    if let Some(proposal) = view.proposal() {
        plan.risk.extend(proposal.carried.iter().cloned());
    }
}

/// A score at 4 decimals, or `none`.
fn opt4(value: Option<f64>) -> String {
    value.map_or_else(|| "none".to_string(), |v| format!("{v:.4}"))
}

/// The decision metrics, and for a BLOCKED plan its greppable `GOVERNOR decision=BLOCKED` line
/// (every plan's `Publishing plan ...` line also ends with its decision and the governor's reason).
pub fn report(cfg: &GovernorConfig, plan: &Plan, verdict: &Verdict) {
    if verdict.decision == Decision::Blocked {
        tracing::warn!("{}", blocked_line(cfg, plan, verdict));
    }
    let symbol = symbol_label(&plan.symbol);
    metrics::counter!(
        quantum_model::metric_names::GOVERNOR_DECISIONS_TOTAL,
        "symbol" => symbol.clone(),
        "side" => plan.side.as_str(),
        "decision" => verdict.decision.as_str(),
        "reason" => verdict.reason.code()
    )
    .increment(1);
    if let Some(k) = verdict.kill_score {
        metrics::gauge!(quantum_model::metric_names::GOVERNOR_KILL_SCORE, "symbol" => symbol.clone()).set(k);
    }
    if let Some(z) = verdict.z {
        metrics::gauge!(quantum_model::metric_names::GOVERNOR_KILL_SCORE_Z, "symbol" => symbol).set(z);
    }
}

fn blocked_line(cfg: &GovernorConfig, plan: &Plan, verdict: &Verdict) -> String {
    format!(
        "GOVERNOR decision={} symbol={} side={} mode={} kill_score={} z={} threshold={} reason={} plan_id={}",
        verdict.decision,
        plan.symbol,
        plan.side,
        cfg.mode.as_str(),
        opt4(verdict.kill_score),
        opt4(verdict.z),
        verdict.threshold.map_or_else(|| "none".to_string(), |t| format!("{t}")),
        verdict.reason,
        plan.plan_id.short()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantum_model::governor::{decide, Reason};
    use quantum_model::types::Side;

    fn array(values: &[Option<&str>]) -> Value {
        Value::Array(
            values
                .iter()
                .map(|v| v.map_or(Value::Null, |s| Value::from(s.to_string())))
                .collect(),
        )
    }

    fn proposal(k: &str, epoch: &str) -> Value {
        array(&[
            Some(k),
            Some("1.0"),
            None,
            None,
            None,
            Some("UNKNOWN"),
            None,
            Some(epoch),
        ])
    }

    #[test]
    fn a_new_proposal_is_recorded_once_and_never_judged_against_itself() {
        let cfg = GovernorConfig::default();
        let history = array(&[Some("100:0.500000"), Some("200:0.600000")]);
        let fresh = read_replies(&cfg, Ok(proposal("0.7", "300")), Ok(history.clone()), 310);
        assert_eq!(fresh.history, vec![0.5, 0.6]);
        assert_eq!(
            fresh.unrecorded,
            Some(Sample {
                epoch: 300,
                kill_score: 0.7
            })
        );
        // Once recorded, the same proposal is judged against the same earlier samples.
        let recorded = array(&[Some("100:0.500000"), Some("200:0.600000"), Some("300:0.700000")]);
        let again = read_replies(&cfg, Ok(proposal("0.7", "300")), Ok(recorded), 311);
        assert_eq!(again.history, vec![0.5, 0.6]);
        assert_eq!(again.unrecorded, None);
        // Stale and missing proposals record nothing.
        let stale = read_replies(&cfg, Ok(proposal("0.7", "300")), Ok(history), 300 + 301);
        assert!(matches!(stale.view, ProposalView::Stale { .. }));
        assert_eq!(stale.unrecorded, None);
        let missing = read_replies(&cfg, Ok(Value::Null), Ok(Value::Null), 0);
        assert_eq!(missing.view, ProposalView::Missing);
        let wrong_type = Error::new(
            ErrorKind::Unknown,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        );
        let broken = read_replies(&cfg, Err(wrong_type), Ok(Value::Null), 0);
        assert!(matches!(
            broken.view,
            ProposalView::Unreadable(ProposalError::Storage(_))
        ));
    }

    #[test]
    fn the_verdict_shapes_the_plan() {
        let entry = quantum_model::stream_entry::StreamEntry::new(
            "1-0",
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")],
        );
        let intent = quantum_model::intent::Intent::parse(&entry, &Default::default()).unwrap();
        let mut plan = Plan::from_intent(&intent, rust_decimal::Decimal::ONE, 0);
        let cfg = GovernorConfig {
            mode: Mode::Legacy,
            ..GovernorConfig::default()
        };
        let risk = read_replies(&cfg, Ok(proposal("0.7563", "300")), Ok(Value::Null), 300);
        let verdict = decide(&cfg, Side::Buy, &risk.view, &risk.history);
        assert_eq!(verdict.reason, Reason::WarningRiskIncrease);
        annotate(&mut plan, &verdict, &risk.view);
        assert_eq!(plan.decision, Decision::Blocked);
        assert_eq!(plan.reason.as_deref(), Some("kill_score_warning_risk_increase"));
        assert_eq!(plan.reason_codes, vec!["kill_score_warning_risk_increase"]);
        assert_eq!(
            plan.risk,
            vec![
                ("kill_score", "0.7563".to_string()),
                ("k_regime_flip", "1.0".to_string()),
                ("harvest_action", "UNKNOWN".to_string()),
            ]
        );
    }
}
