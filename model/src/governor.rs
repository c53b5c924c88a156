//! The governor: the upstream risk kernel's kill score turned into EXECUTE or BLOCKED for one
//! gated intent, before its plan is published. Pure: its inputs are the proposal hash
//! (`quantum:harvest:proposal:<SYMBOL>`), the symbol's recent kill-score history and the clock.
//!
//! Two modes:
//! - `legacy` reproduces production: K ≥ `K_BLOCK_CRITICAL` blocks everything, K ≥
//!   `K_BLOCK_WARNING` blocks entries and lets exits through.
//! - `separated` (the default, the fix): exits are never blocked by the kill score (closing
//!   reduces risk). Entries are judged on K's z-score against the symbol's own history, so a
//!   level that is normal for the symbol (a regime flip alone puts K above 0.73 by construction)
//!   no longer blocks, while an outlier still does; an absolute ceiling blocks whatever the
//!   history. Until the symbol has enough history, a fixed fallback threshold applies.
//!
//! Scores are dimensionless risk numbers in [0, 1], not money, so they are `f64`.
//!
//! Invariants (property-tested below):
//! - in `separated` mode an exit (SELL) is never BLOCKED, whatever the proposal;
//! - for entries, blocking is monotone in K: if K blocks, every larger K blocks too;
//! - under the default settings a regime flip alone never blocks an entry in `separated` mode.

use crate::fields::Fields;
use std::fmt;

use thiserror::Error;

use crate::types::{Decision, Side};

/// The proposal hash fields, in the order [`ProposalFields`] holds them.
pub const PROPOSAL_FIELDS: [&str; 8] = [
    "kill_score",
    "k_regime_flip",
    "k_sigma_spike",
    "k_ts_drop",
    "k_age_penalty",
    "harvest_action",
    "computed_at_utc",
    "last_update_epoch",
];

/// Longest proposal value carried onto a plan; a longer one is cut.
const MAX_CARRIED_LEN: usize = 64;

/// The four kill-score components the kernel publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Components {
    pub regime_flip: f64,
    pub sigma_spike: f64,
    pub ts_drop: f64,
    pub age_penalty: f64,
}

/// Weights of the kernel's logistic kill score: K = 1 / (1 + e^(−z)), z = Σ weight·component.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KillWeights {
    pub regime_flip: f64,
    pub sigma_spike: f64,
    pub ts_drop: f64,
    pub age_penalty: f64,
}

impl Default for KillWeights {
    /// The kernel's weights: 1.0, 0.5, 0.5, 0.3.
    fn default() -> Self {
        Self {
            regime_flip: 1.0,
            sigma_spike: 0.5,
            ts_drop: 0.5,
            age_penalty: 0.3,
        }
    }
}

impl KillWeights {
    /// The kill score of `c`, computed as the kernel does.
    ///
    /// ```
    /// use quantum_model::governor::{Components, KillWeights};
    /// let c = Components { regime_flip: 1.0, sigma_spike: 0.0, ts_drop: 0.2398, age_penalty: 0.0417 };
    /// assert_eq!(format!("{:.4}", KillWeights::default().kill_score(&c)), "0.7563");
    /// ```
    pub fn kill_score(&self, c: &Components) -> f64 {
        let z = self.regime_flip * c.regime_flip
            + self.sigma_spike * c.sigma_spike
            + self.ts_drop * c.ts_drop
            + self.age_penalty * c.age_penalty;
        1.0 / (1.0 + (-z).exp())
    }
}

/// The raw values of a proposal hash, as read (`None`: field absent or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProposalFields(pub [Option<String>; 8]);

impl ProposalFields {
    /// From `(field, value)` pairs (for example an HGETALL); unknown fields are ignored.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut out = Self::default();
        for (k, v) in pairs {
            if let Some(i) = PROPOSAL_FIELDS.iter().position(|f| *f == k) {
                out.0[i] = Some(v.to_string());
            }
        }
        out
    }

    fn get(&self, name: &str) -> Option<&str> {
        let i = PROPOSAL_FIELDS.iter().position(|f| *f == name)?;
        self.0[i].as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    fn is_empty(&self) -> bool {
        PROPOSAL_FIELDS.iter().all(|f| self.get(f).is_none())
    }
}

/// Why a proposal hash cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProposalError {
    #[error("{field} {value:?} is not a finite number")]
    NotANumber { field: &'static str, value: String },
    #[error("kill_score {0} is outside 0..=1")]
    OutOfRange(String),
    #[error("no kill_score and component {0} missing, so K cannot be computed")]
    Incomplete(&'static str),
    #[error("last_update_epoch {0:?} is not unix seconds")]
    BadEpoch(String),
    #[error("cannot read it: {0}")]
    Storage(String),
}

/// A usable proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// K as published, or computed from the components when the kernel left it out.
    pub kill_score: f64,
    /// Whether `kill_score` was computed here from the components.
    pub computed: bool,
    /// When the kernel last updated it (unix seconds), if it said.
    pub updated_epoch: Option<u64>,
    /// The fields carried onto plans: the K components, `harvest_action`, `computed_at_utc`.
    pub carried: Vec<(&'static str, String)>,
}

impl Proposal {
    /// Reads a proposal hash: `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// A field that is not a number, a K outside 0..=1, or neither K nor all four components.
    pub fn parse(fields: &ProposalFields, weights: &KillWeights) -> Result<Option<Self>, ProposalError> {
        if fields.is_empty() {
            return Ok(None);
        }
        let number = |name: &'static str| -> Result<Option<f64>, ProposalError> {
            let Some(raw) = fields.get(name) else { return Ok(None) };
            match raw.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Some(v)),
                _ => Err(ProposalError::NotANumber {
                    field: name,
                    value: raw.chars().take(MAX_CARRIED_LEN).collect(),
                }),
            }
        };
        let components = [
            number("k_regime_flip")?,
            number("k_sigma_spike")?,
            number("k_ts_drop")?,
            number("k_age_penalty")?,
        ];
        let (kill_score, computed) = match number("kill_score")? {
            Some(k) if (0.0..=1.0).contains(&k) => (k, false),
            Some(_) => {
                return Err(ProposalError::OutOfRange(
                    fields.get("kill_score").unwrap_or_default().to_string(),
                ))
            }
            None => {
                let missing = |i: usize| ProposalError::Incomplete(PROPOSAL_FIELDS[i + 1]);
                let c = Components {
                    regime_flip: components[0].ok_or_else(|| missing(0))?,
                    sigma_spike: components[1].ok_or_else(|| missing(1))?,
                    ts_drop: components[2].ok_or_else(|| missing(2))?,
                    age_penalty: components[3].ok_or_else(|| missing(3))?,
                };
                (weights.kill_score(&c), true)
            }
        };
        let updated_epoch = fields
            .get("last_update_epoch")
            .map(|raw| parse_epoch(raw).ok_or_else(|| ProposalError::BadEpoch(raw.chars().take(32).collect())))
            .transpose()?;
        let carried = PROPOSAL_FIELDS[1..7]
            .iter()
            .filter_map(|name| {
                fields
                    .get(name)
                    .map(|v| (*name, v.chars().take(MAX_CARRIED_LEN).collect::<String>()))
            })
            .collect();
        Ok(Some(Self {
            kill_score,
            computed,
            updated_epoch,
            carried,
        }))
    }
}

/// Unix seconds, accepting the kernel's float form (`1738450000.123`).
fn parse_epoch(raw: &str) -> Option<u64> {
    let secs = raw.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)?;
    (secs < 1e12).then_some(secs as u64)
}

/// How far ahead of the bridge's clock a proposal's `last_update_epoch` may be (clock skew).
pub const FUTURE_TOLERANCE_SECS: u64 = 60;

/// What the governor knows of a symbol's proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum ProposalView {
    /// No proposal hash.
    Missing,
    /// A hash that cannot be read (fails closed for entries).
    Unreadable(ProposalError),
    /// Older than the allowed age, or without `last_update_epoch`: kept for the plan's fields.
    Stale {
        proposal: Proposal,
        age_secs: Option<u64>,
    },
    Fresh(Proposal),
}

impl ProposalView {
    /// Classifies a proposal hash read at `now` (unix seconds). One dated more than
    /// [`FUTURE_TOLERANCE_SECS`] ahead of `now` is stale too: a skewed clock must not make a
    /// proposal fresh forever.
    pub fn assess(fields: &ProposalFields, weights: &KillWeights, max_age_secs: u64, now: u64) -> Self {
        match Proposal::parse(fields, weights) {
            Ok(None) => Self::Missing,
            Err(e) => Self::Unreadable(e),
            Ok(Some(proposal)) => match proposal.updated_epoch {
                Some(at) if now.saturating_sub(at) <= max_age_secs && at <= now + FUTURE_TOLERANCE_SECS => {
                    Self::Fresh(proposal)
                }
                at => Self::Stale {
                    age_secs: at.filter(|at| *at <= now).map(|at| now - at),
                    proposal,
                },
            },
        }
    }

    /// The proposal, fresh or stale.
    pub fn proposal(&self) -> Option<&Proposal> {
        match self {
            Self::Fresh(p) | Self::Stale { proposal: p, .. } => Some(p),
            _ => None,
        }
    }
}

/// `GOVERNOR_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Production's rule: K ≥ warning blocks entries, K ≥ critical blocks everything.
    Legacy,
    /// Entry/exit separation: exits never blocked, entries judged on the z-score of K.
    Separated,
}

impl Mode {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Separated => "separated",
        }
    }
}

/// `GOVERNOR_MISSING_PROPOSAL`: what a missing or stale proposal means for entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MissingPolicy {
    /// The governor has nothing to say: EXECUTE (counted and logged with the reason).
    Allow,
    /// Entries are BLOCKED until a fresh proposal exists; exits still flow.
    BlockEntries,
}

/// Governor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorConfig {
    pub mode: Mode,
    /// Legacy: K at or above blocks everything.
    pub k_block_critical: f64,
    /// Legacy: K at or above blocks entries.
    pub k_block_warning: f64,
    /// Separated: K at or above blocks entries whatever the history.
    pub entry_k_critical: f64,
    /// Separated, too little history: K at or above blocks entries.
    pub entry_k_fallback: f64,
    /// Separated: a z-score at or above blocks entries.
    pub entry_z_block: f64,
    /// History samples kept per symbol.
    pub history_window: usize,
    /// Fewer samples than this: the fallback threshold applies.
    pub min_samples: usize,
    /// Floor of the history's standard deviation, so a flat history does not make every
    /// small move an outlier.
    pub z_min_std: f64,
    /// A proposal older than this (seconds) is stale.
    pub max_age_secs: u64,
    pub missing: MissingPolicy,
    pub weights: KillWeights,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Separated,
            k_block_critical: 0.80,
            k_block_warning: 0.60,
            entry_k_critical: 0.95,
            entry_k_fallback: 0.85,
            entry_z_block: 3.0,
            history_window: 120,
            min_samples: 20,
            z_min_std: 0.1,
            max_age_secs: 300,
            missing: MissingPolicy::Allow,
            weights: KillWeights::default(),
        }
    }
}

impl GovernorConfig {
    /// The settings as flat fields (the bridge publishes them for `quantumctl why`).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("governor_mode", self.mode.as_str().to_string()),
            ("k_block_critical", self.k_block_critical.to_string()),
            ("k_block_warning", self.k_block_warning.to_string()),
            ("entry_k_critical", self.entry_k_critical.to_string()),
            ("entry_k_fallback", self.entry_k_fallback.to_string()),
            ("entry_z_block", self.entry_z_block.to_string()),
            ("z_window", self.history_window.to_string()),
            ("z_min_samples", self.min_samples.to_string()),
            ("z_min_std", self.z_min_std.to_string()),
            ("proposal_max_age_s", self.max_age_secs.to_string()),
            (
                "missing_proposal",
                match self.missing {
                    MissingPolicy::Allow => "allow",
                    MissingPolicy::BlockEntries => "block-entries",
                }
                .to_string(),
            ),
            ("w_regime_flip", self.weights.regime_flip.to_string()),
            ("w_sigma_spike", self.weights.sigma_spike.to_string()),
            ("w_ts_drop", self.weights.ts_drop.to_string()),
            ("w_age_penalty", self.weights.age_penalty.to_string()),
        ]
    }

    /// Reads [`Self::to_fields`] back; a field missing or unreadable keeps its default.
    pub fn from_fields(fields: &(impl Fields + ?Sized)) -> Self {
        let d = Self::default();
        let num = |k: &str, default: f64| fields.field(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
        let int = |k: &str, default: usize| fields.field(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(default);
        Self {
            mode: match fields.field("governor_mode") {
                Some("legacy") => Mode::Legacy,
                _ => Mode::Separated,
            },
            k_block_critical: num("k_block_critical", d.k_block_critical),
            k_block_warning: num("k_block_warning", d.k_block_warning),
            entry_k_critical: num("entry_k_critical", d.entry_k_critical),
            entry_k_fallback: num("entry_k_fallback", d.entry_k_fallback),
            entry_z_block: num("entry_z_block", d.entry_z_block),
            history_window: int("z_window", d.history_window),
            min_samples: int("z_min_samples", d.min_samples),
            z_min_std: num("z_min_std", d.z_min_std),
            max_age_secs: fields
                .field("proposal_max_age_s")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.max_age_secs),
            missing: match fields.field("missing_proposal") {
                Some("block-entries") => MissingPolicy::BlockEntries,
                _ => MissingPolicy::Allow,
            },
            weights: KillWeights {
                regime_flip: num("w_regime_flip", d.weights.regime_flip),
                sigma_spike: num("w_sigma_spike", d.weights.sigma_spike),
                ts_drop: num("w_ts_drop", d.weights.ts_drop),
                age_penalty: num("w_age_penalty", d.weights.age_penalty),
            },
        }
    }
}

/// Why the governor decided as it did: the plan's `reason_codes` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Legacy: K below the warning threshold.
    KillScoreOk,
    /// Legacy: K at or above critical, entries and exits blocked.
    KillScoreCritical,
    /// Legacy: K at or above warning, an entry blocked.
    WarningRiskIncrease,
    /// Legacy: K at or above warning, an exit let through.
    WarningCloseOk,
    /// Separated: exits are never blocked by the kill score.
    ExitOk,
    /// Separated: the entry's z-score is below the block threshold.
    EntryOk,
    /// Separated: the entry's z-score is an outlier against the symbol's history.
    EntryOutlier,
    /// Separated: K at or above the absolute entry ceiling.
    EntryCritical,
    /// Separated, too little history: K below the fallback threshold.
    EntryFallbackOk,
    /// Separated, too little history: K at or above the fallback threshold.
    EntryFallbackBlocked,
    ProposalMissing,
    ProposalStale,
    ProposalUnreadable,
}

impl Reason {
    /// Every reason, for tables and tests.
    pub const ALL: [Reason; 13] = [
        Self::KillScoreOk,
        Self::KillScoreCritical,
        Self::WarningRiskIncrease,
        Self::WarningCloseOk,
        Self::ExitOk,
        Self::EntryOk,
        Self::EntryOutlier,
        Self::EntryCritical,
        Self::EntryFallbackOk,
        Self::EntryFallbackBlocked,
        Self::ProposalMissing,
        Self::ProposalStale,
        Self::ProposalUnreadable,
    ];

    /// The stable code (plans, metrics labels, log lines).
    pub fn code(self) -> &'static str {
        match self {
            Self::KillScoreOk => "kill_score_ok",
            Self::KillScoreCritical => "kill_score_critical",
            Self::WarningRiskIncrease => "kill_score_warning_risk_increase",
            Self::WarningCloseOk => "kill_score_warning_close_ok",
            Self::ExitOk => "kill_score_exit_ok",
            Self::EntryOk => "kill_score_entry_ok",
            Self::EntryOutlier => "kill_score_entry_outlier",
            Self::EntryCritical => "kill_score_entry_critical",
            Self::EntryFallbackOk => "kill_score_entry_fallback_ok",
            Self::EntryFallbackBlocked => "kill_score_entry_fallback_blocked",
            Self::ProposalMissing => "proposal_missing",
            Self::ProposalStale => "proposal_stale",
            Self::ProposalUnreadable => "proposal_unreadable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The governor's verdict on one intent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    pub reason: Reason,
    /// K judged (absent without a usable proposal).
    pub kill_score: Option<f64>,
    /// K's z-score against the symbol's history, when the rule used it.
    pub z: Option<f64>,
    /// The threshold K or z was compared with, when one was.
    pub threshold: Option<f64>,
}

impl Verdict {
    fn new(decision: Decision, reason: Reason) -> Self {
        Self {
            decision,
            reason,
            kill_score: None,
            z: None,
            threshold: None,
        }
    }

    fn with(mut self, kill_score: f64, z: Option<f64>, threshold: Option<f64>) -> Self {
        self.kill_score = Some(kill_score);
        self.z = z;
        self.threshold = threshold;
        self
    }
}

/// K's z-score against `history`, or `None` with fewer than `min_samples` samples. The
/// standard deviation (population) is floored at `min_std`.
pub fn zscore(kill_score: f64, history: &[f64], min_samples: usize, min_std: f64) -> Option<f64> {
    if history.is_empty() || history.len() < min_samples {
        return None;
    }
    let n = history.len() as f64;
    let mean = history.iter().sum::<f64>() / n;
    let variance = history.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / n;
    Some((kill_score - mean) / variance.sqrt().max(min_std))
}

/// Decides one intent. `side` BUY is an entry (opens or adds), SELL an exit (reduces or
/// closes); `history` holds the symbol's earlier kill scores (not the current proposal's).
pub fn decide(cfg: &GovernorConfig, side: Side, view: &ProposalView, history: &[f64]) -> Verdict {
    let entry = side == Side::Buy;
    let proposal = match view {
        ProposalView::Fresh(p) => p,
        ProposalView::Missing | ProposalView::Stale { .. } => {
            let reason = if matches!(view, ProposalView::Missing) {
                Reason::ProposalMissing
            } else {
                Reason::ProposalStale
            };
            let block = entry && cfg.missing == MissingPolicy::BlockEntries;
            let decision = if block { Decision::Blocked } else { Decision::Execute };
            let mut verdict = Verdict::new(decision, reason);
            verdict.kill_score = view.proposal().map(|p| p.kill_score);
            return verdict;
        }
        // Unreadable risk input fails closed for entries; closing still reduces risk.
        ProposalView::Unreadable(_) => {
            let decision = if entry { Decision::Blocked } else { Decision::Execute };
            return Verdict::new(decision, Reason::ProposalUnreadable);
        }
    };
    let k = proposal.kill_score;
    match cfg.mode {
        Mode::Legacy => decide_legacy(cfg, entry, k),
        Mode::Separated if !entry => Verdict::new(Decision::Execute, Reason::ExitOk).with(k, None, None),
        Mode::Separated => decide_entry(cfg, k, history),
    }
}

fn decide_legacy(cfg: &GovernorConfig, entry: bool, k: f64) -> Verdict {
    let (decision, reason, threshold) = if k >= cfg.k_block_critical {
        (Decision::Blocked, Reason::KillScoreCritical, cfg.k_block_critical)
    } else if k >= cfg.k_block_warning && entry {
        (Decision::Blocked, Reason::WarningRiskIncrease, cfg.k_block_warning)
    } else if k >= cfg.k_block_warning {
        (Decision::Execute, Reason::WarningCloseOk, cfg.k_block_warning)
    } else {
        (Decision::Execute, Reason::KillScoreOk, cfg.k_block_warning)
    };
    Verdict::new(decision, reason).with(k, None, Some(threshold))
}

fn decide_entry(cfg: &GovernorConfig, k: f64, history: &[f64]) -> Verdict {
    let z = zscore(k, history, cfg.min_samples, cfg.z_min_std);
    if k >= cfg.entry_k_critical {
        return Verdict::new(Decision::Blocked, Reason::EntryCritical).with(k, z, Some(cfg.entry_k_critical));
    }
    match z {
        Some(z) if z >= cfg.entry_z_block => {
            Verdict::new(Decision::Blocked, Reason::EntryOutlier).with(k, Some(z), Some(cfg.entry_z_block))
        }
        Some(z) => Verdict::new(Decision::Execute, Reason::EntryOk).with(k, Some(z), Some(cfg.entry_z_block)),
        None if k >= cfg.entry_k_fallback => {
            Verdict::new(Decision::Blocked, Reason::EntryFallbackBlocked).with(k, None, Some(cfg.entry_k_fallback))
        }
        None => Verdict::new(Decision::Execute, Reason::EntryFallbackOk).with(k, None, Some(cfg.entry_k_fallback)),
    }
}

/// One kill score the bridge observed, as stored in the history sorted set (member
/// `<last_update_epoch>:<K>`, score = the epoch): the same proposal seen twice, by one bridge
/// or several, is one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub epoch: u64,
    pub kill_score: f64,
}

impl Sample {
    /// The sorted-set member.
    pub fn member(&self) -> String {
        format!("{}:{:.6}", self.epoch, self.kill_score)
    }

    /// Reads a member; `None` for anything else (ignored, never fatal).
    pub fn parse(member: &str) -> Option<Self> {
        let (epoch, k) = member.split_once(':')?;
        let kill_score = k.parse::<f64>().ok().filter(|k| (0.0..=1.0).contains(k))?;
        Some(Self {
            epoch: epoch.parse().ok()?,
            kill_score,
        })
    }
}

/// The newest `window` kill scores of `members` older than the proposal being judged
/// (`current_epoch`), so a proposal is never compared with itself and its verdict is the same
/// in every batch, before and after its own sample is stored. `members` come oldest first.
pub fn reference_history<'a>(
    members: impl IntoIterator<Item = &'a str>,
    current_epoch: u64,
    window: usize,
) -> Vec<f64> {
    let older: Vec<f64> = members
        .into_iter()
        .filter_map(Sample::parse)
        .filter(|s| s.epoch < current_epoch)
        .map(|s| s.kill_score)
        .collect();
    older[older.len().saturating_sub(window)..].to_vec()
}

/// Everything the governor needs about one symbol, from its proposal hash and its stored
/// history (the newest `history_window + 1` members, oldest first).
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolRisk {
    pub view: ProposalView,
    /// Earlier kill scores (never the current proposal's own sample).
    pub history: Vec<f64>,
    /// The current proposal's sample, when the history does not hold it yet.
    pub unrecorded: Option<Sample>,
}

impl SymbolRisk {
    /// Assesses the proposal read at `now` (unix seconds) against its history.
    pub fn assess(cfg: &GovernorConfig, fields: &ProposalFields, members: &[String], now: u64) -> Self {
        let view = ProposalView::assess(fields, &cfg.weights, cfg.max_age_secs, now);
        let ProposalView::Fresh(p) = &view else {
            return Self {
                view,
                history: Vec::new(),
                unrecorded: None,
            };
        };
        let epoch = p.updated_epoch.unwrap_or_default();
        let newest = members.iter().filter_map(|m| Sample::parse(m)).map(|s| s.epoch).max();
        let unrecorded = newest.is_none_or(|n| epoch > n).then_some(Sample {
            epoch,
            kill_score: p.kill_score,
        });
        let history = reference_history(members.iter().map(String::as_str), epoch, cfg.history_window);
        Self {
            view,
            history,
            unrecorded,
        }
    }

    /// K's z-score against the history, when there is enough of it.
    pub fn zscore(&self, cfg: &GovernorConfig) -> Option<f64> {
        let k = self.view.proposal()?.kill_score;
        zscore(k, &self.history, cfg.min_samples, cfg.z_min_std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn fields(pairs: &[(&str, &str)]) -> ProposalFields {
        ProposalFields::from_pairs(pairs.iter().copied())
    }

    /// The production proposal: components 1.0 / 0.0 / 0.2398 / 0.0417, no K given.
    fn production() -> ProposalFields {
        let epoch = NOW.to_string();
        fields(&[
            ("k_regime_flip", "1.0"),
            ("k_sigma_spike", "0.0"),
            ("k_ts_drop", "0.2398"),
            ("k_age_penalty", "0.0417"),
            ("harvest_action", "UNKNOWN"),
            ("last_update_epoch", epoch.as_str()),
        ])
    }

    fn fresh(k: f64) -> ProposalView {
        ProposalView::Fresh(Proposal {
            kill_score: k,
            computed: false,
            updated_epoch: Some(NOW),
            carried: Vec::new(),
        })
    }

    fn cfg(mode: Mode) -> GovernorConfig {
        GovernorConfig {
            mode,
            ..GovernorConfig::default()
        }
    }

    #[test]
    fn production_example_is_blocked_by_legacy_and_passes_separated() {
        let view = ProposalView::assess(&production(), &KillWeights::default(), 300, NOW);
        let ProposalView::Fresh(p) = &view else {
            panic!("expected fresh, got {view:?}")
        };
        assert!(p.computed);
        assert_eq!(format!("{:.4}", p.kill_score), "0.7563");
        let legacy = decide(&cfg(Mode::Legacy), Side::Buy, &view, &[]);
        assert_eq!(legacy.decision, Decision::Blocked);
        assert_eq!(legacy.reason.code(), "kill_score_warning_risk_increase");
        assert_eq!(legacy.threshold, Some(0.60));
        let close = decide(&cfg(Mode::Legacy), Side::Sell, &view, &[]);
        assert_eq!(
            (close.decision, close.reason.code()),
            (Decision::Execute, "kill_score_warning_close_ok")
        );
        let separated = decide(&cfg(Mode::Separated), Side::Buy, &view, &[]);
        assert_eq!(
            (separated.decision, separated.reason),
            (Decision::Execute, Reason::EntryFallbackOk)
        );
        let with_history = decide(&cfg(Mode::Separated), Side::Buy, &view, &[0.7563; 30]);
        assert_eq!(
            (with_history.decision, with_history.reason),
            (Decision::Execute, Reason::EntryOk)
        );
        assert!(with_history.z.unwrap().abs() < 1e-3);
    }

    /// One row of the decision table: mode, side, K, history, expected decision and reason.
    type Case<'a> = (Mode, Side, f64, &'a [f64], Decision, Reason);

    #[test]
    fn decision_table() {
        let calm: Vec<f64> = (0..40).map(|i| 0.50 + 0.002 * f64::from(i % 5)).collect();
        let flipped = vec![0.75; 40];
        let b = Decision::Blocked;
        let e = Decision::Execute;
        let cases: Vec<Case> = vec![
            (Mode::Legacy, Side::Buy, 0.59, &[], e, Reason::KillScoreOk),
            (Mode::Legacy, Side::Buy, 0.60, &[], b, Reason::WarningRiskIncrease),
            (Mode::Legacy, Side::Sell, 0.79, &[], e, Reason::WarningCloseOk),
            (Mode::Legacy, Side::Sell, 0.80, &[], b, Reason::KillScoreCritical),
            (Mode::Legacy, Side::Buy, 0.95, &flipped, b, Reason::KillScoreCritical),
            (Mode::Separated, Side::Sell, 0.99, &[], e, Reason::ExitOk),
            (Mode::Separated, Side::Sell, 1.0, &calm, e, Reason::ExitOk),
            (Mode::Separated, Side::Buy, 0.84, &[], e, Reason::EntryFallbackOk),
            (Mode::Separated, Side::Buy, 0.85, &[], b, Reason::EntryFallbackBlocked),
            (Mode::Separated, Side::Buy, 0.95, &flipped, b, Reason::EntryCritical),
            // A regime flip against a calm history: z = (0.7563 - 0.504) / 0.1 ≈ 2.5 < 3.
            (Mode::Separated, Side::Buy, 0.7563, &calm, e, Reason::EntryOk),
            // A genuine outlier against a calm history: z ≈ 3.9.
            (Mode::Separated, Side::Buy, 0.8941, &calm, b, Reason::EntryOutlier),
            // The same K is normal for a symbol that has lived there.
            (Mode::Separated, Side::Buy, 0.8941, &flipped, e, Reason::EntryOk),
        ];
        for (mode, side, k, history, decision, reason) in cases {
            let v = decide(&cfg(mode), side, &fresh(k), history);
            assert_eq!(
                (v.decision, v.reason),
                (decision, reason),
                "{mode:?} {side} K={k} history={}",
                history.len()
            );
            assert_eq!(v.kill_score, Some(k));
        }
    }

    #[test]
    fn missing_stale_and_unreadable_proposals() {
        let w = KillWeights::default();
        let allow = cfg(Mode::Separated);
        let block = GovernorConfig {
            missing: MissingPolicy::BlockEntries,
            ..cfg(Mode::Legacy)
        };
        let missing = ProposalView::assess(&ProposalFields::default(), &w, 300, NOW);
        assert_eq!(missing, ProposalView::Missing);
        let old = (NOW - 301).to_string();
        let stale = ProposalView::assess(
            &fields(&[("kill_score", "0.99"), ("last_update_epoch", old.as_str())]),
            &w,
            300,
            NOW,
        );
        assert!(matches!(
            stale,
            ProposalView::Stale {
                age_secs: Some(301),
                ..
            }
        ));
        let undated = ProposalView::assess(&fields(&[("kill_score", "0.5")]), &w, 300, NOW);
        assert!(matches!(undated, ProposalView::Stale { age_secs: None, .. }));

        let v = decide(&allow, Side::Buy, &missing, &[]);
        assert_eq!((v.decision, v.reason), (Decision::Execute, Reason::ProposalMissing));
        let v = decide(&allow, Side::Buy, &stale, &[]);
        assert_eq!((v.decision, v.reason), (Decision::Execute, Reason::ProposalStale));
        assert_eq!(v.kill_score, Some(0.99), "a stale K is still reported");
        let v = decide(&block, Side::Buy, &stale, &[]);
        assert_eq!((v.decision, v.reason), (Decision::Blocked, Reason::ProposalStale));
        let v = decide(&block, Side::Sell, &missing, &[]);
        assert_eq!((v.decision, v.reason), (Decision::Execute, Reason::ProposalMissing));

        for bad in [
            fields(&[("kill_score", "abc")]),
            fields(&[("kill_score", "1.5")]),
            fields(&[("kill_score", "NaN")]),
            fields(&[("k_regime_flip", "1.0"), ("k_ts_drop", "0.2")]),
            fields(&[("kill_score", "0.5"), ("last_update_epoch", "yesterday")]),
        ] {
            let view = ProposalView::assess(&bad, &w, 300, NOW);
            assert!(matches!(view, ProposalView::Unreadable(_)), "{bad:?} gave {view:?}");
            let v = decide(&allow, Side::Buy, &view, &[]);
            assert_eq!((v.decision, v.reason), (Decision::Blocked, Reason::ProposalUnreadable));
            assert_eq!(decide(&allow, Side::Sell, &view, &[]).decision, Decision::Execute);
        }
    }

    #[test]
    fn given_kill_score_wins_and_fields_are_carried() {
        let mut f = production();
        f.0[0] = Some("0.9".into());
        let p = Proposal::parse(&f, &KillWeights::default()).unwrap().unwrap();
        assert_eq!((p.kill_score, p.computed), (0.9, false));
        assert_eq!(p.updated_epoch, Some(NOW));
        let names: Vec<&str> = p.carried.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "k_regime_flip",
                "k_sigma_spike",
                "k_ts_drop",
                "k_age_penalty",
                "harvest_action"
            ]
        );
        assert_eq!(parse_epoch("1738450000.75"), Some(1_738_450_000));
    }

    #[test]
    fn settings_round_trip_through_fields() {
        let cfg = GovernorConfig {
            mode: Mode::Legacy,
            k_block_warning: 0.55,
            min_samples: 7,
            missing: MissingPolicy::BlockEntries,
            ..GovernorConfig::default()
        };
        let fields = cfg.to_fields();
        let pairs: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let back = GovernorConfig::from_fields(&pairs);
        assert_eq!(back, cfg);
        assert_eq!(GovernorConfig::from_fields(&Vec::new()), GovernorConfig::default());
    }

    #[test]
    fn history_samples_exclude_the_current_proposal() {
        let members = ["100:0.500000", "200:0.700000", "300:0.756300", "junk", "400:7"];
        assert_eq!(reference_history(members, 300, 120), vec![0.5, 0.7]);
        assert_eq!(reference_history(members, 300, 1), vec![0.7], "the newest window");
        let s = Sample {
            epoch: 7,
            kill_score: 0.7563,
        };
        assert_eq!(Sample::parse(&s.member()), Some(s));
        assert_eq!(zscore(0.9, &[0.5; 3], 4, 0.1), None);
        assert_eq!(zscore(0.9, &[0.5; 4], 4, 0.1).map(|z| (z * 1e6).round()), Some(4e6));
    }

    fn component() -> impl Strategy<Value = f64> {
        0.0f64..=1.0
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Separated mode never blocks an exit, whatever K and the history.
        #[test]
        fn separated_never_blocks_exits(k in 0.0f64..=1.0, history in proptest::collection::vec(0.0f64..=1.0, 0..60)) {
            let v = decide(&cfg(Mode::Separated), Side::Sell, &fresh(k), &history);
            prop_assert_eq!(v.decision, Decision::Execute);
        }

        /// For entries, a larger K never turns BLOCKED into EXECUTE (both modes).
        #[test]
        fn entries_are_monotone_in_k(a in 0.0f64..=1.0, b in 0.0f64..=1.0,
                                     history in proptest::collection::vec(0.0f64..=1.0, 0..60),
                                     legacy in any::<bool>()) {
            let c = cfg(if legacy { Mode::Legacy } else { Mode::Separated });
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let blocked = |k| decide(&c, Side::Buy, &fresh(k), &history).decision == Decision::Blocked;
            prop_assert!(!blocked(lo) || blocked(hi), "K={lo} blocked but K={hi} not");
        }

        /// A regime flip alone (other components at most small) never blocks an entry under the
        /// default settings, against any history the kernel can produce (components ≥ 0, so K ≥ 0.5).
        #[test]
        fn regime_flip_alone_does_not_block_entries(
            small in proptest::collection::vec(0.0f64..0.05, 3),
            history in proptest::collection::vec((component(), component(), component(), component()), 0..60),
        ) {
            let w = KillWeights::default();
            let k = w.kill_score(&Components { regime_flip: 1.0, sigma_spike: small[0], ts_drop: small[1], age_penalty: small[2] });
            prop_assert!(k > 0.73);
            let history: Vec<f64> = history.iter()
                .map(|&(r, s, t, a)| w.kill_score(&Components { regime_flip: r, sigma_spike: s, ts_drop: t, age_penalty: a }))
                .collect();
            let v = decide(&GovernorConfig::default(), Side::Buy, &fresh(k), &history);
            prop_assert_eq!(v.decision, Decision::Execute, "{:?}", v);
            let legacy = decide(&cfg(Mode::Legacy), Side::Buy, &fresh(k), &history);
            prop_assert_eq!(legacy.decision, Decision::Blocked);
        }

        /// Arbitrary proposal hashes never panic and always classify.
        #[test]
        fn arbitrary_proposals_classify(values in proptest::collection::vec(proptest::option::of(".{0,12}"), 8)) {
            let mut f = ProposalFields::default();
            for (slot, v) in f.0.iter_mut().zip(values) {
                *slot = v;
            }
            let view = ProposalView::assess(&f, &KillWeights::default(), 300, NOW);
            let v = decide(&GovernorConfig::default(), Side::Buy, &view, &[]);
            if let Some(k) = v.kill_score {
                prop_assert!((0.0..=1.0).contains(&k));
            }
        }
    }
}
