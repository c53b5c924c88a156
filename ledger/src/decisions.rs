//! Pure ledger logic: applying fills exactly once and in venue order, and the reconcile rule.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use quantum_model::fill::Fill;
use quantum_model::position::{LedgerEntry, MAX_MISSING_SEQS};
use quantum_model::snapshot::Snapshot;
use quantum_model::types::Symbol;

/// One fill applied, with the position right after it (for the LEDGER_COMMIT line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedFill {
    pub fill: Fill,
    pub position_amt: Decimal,
    pub realized_pnl: Decimal,
}

/// A numbered fill that came before its turn, held until the fills ahead of it come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub fill: Fill,
    /// When it was first parked (Unix ms): the gap timeout counts from here.
    pub since_ms: u64,
}

impl Parked {
    /// Its venue sequence number (parked fills always have one).
    pub fn seq(&self) -> u64 {
        self.fill.venue_seq.unwrap_or_default()
    }
}

/// What a symbol's ledger holds when fills arrive.
#[derive(Debug, Clone, Copy)]
pub struct LedgerState<'a> {
    pub entry: Option<&'a LedgerEntry>,
    /// Fill ids applied before, for fills without a venue sequence number.
    pub applied_ids: &'a HashSet<String>,
    /// Fills parked earlier.
    pub parked: &'a [Parked],
}

/// The result of applying a symbol's fills to its ledger.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Application {
    /// The new ledger state (version bumped) when anything was applied.
    pub entry: Option<LedgerEntry>,
    pub applied: Vec<AppliedFill>,
    /// Fills skipped because they were applied (or parked) before, or came twice.
    pub duplicates: Vec<Fill>,
    /// Fills of this batch that must wait for earlier ones: to be parked.
    pub parked: Vec<Parked>,
    /// Sequence numbers of parked fills now applied or found duplicate: to be unparked.
    pub unparked: Vec<u64>,
    /// Sequence numbers the ledger gave up waiting for (after the gap timeout).
    pub gaps: Vec<RangeInclusive<u64>>,
}

impl Application {
    /// Whether anything must be written.
    pub fn writes_anything(&self) -> bool {
        self.entry.is_some() || !self.parked.is_empty() || !self.unparked.is_empty()
    }
}

/// One fill waiting to be applied: from this batch, or parked earlier (`since_ms` then).
struct Waiting {
    fill: Fill,
    since_ms: Option<u64>,
}

/// Applies a symbol's `fills` to its ledger, exactly once and in venue order.
///
/// Invariants kept:
/// - Numbered fills (`venue_seq`) are applied in sequence order: fill n only once every fill
///   up to n-1 is applied or given up as missing. A fill ahead of its turn is parked (not
///   applied, not lost) until the gap before it fills, or until the oldest fill waiting
///   behind the gap has waited `gap_timeout_ms`; then the missing numbers are recorded in
///   `venue_seq_missing` and a missing fill that still comes is applied late.
/// - A numbered fill at or below the ledger's `venue_seq` that is not missing is a duplicate:
///   the ledger's whole dedup record is one number and at most [`MAX_MISSING_SEQS`] others.
/// - Fills without a number (older executors) are applied in arrival order, deduplicated by
///   fill id against `applied_ids` and within the batch.
pub fn apply_fills(state: LedgerState<'_>, fills: &[Fill], now_ms: u64, gap_timeout_ms: u64) -> Application {
    let mut entry = state.entry.cloned().unwrap_or_else(|| LedgerEntry {
        leverage: Decimal::ONE,
        ..LedgerEntry::default()
    });
    let mut app = Application::default();
    let mut waiting = sort_arrivals(&state, fills, &mut entry, &mut app);
    settle_late(&mut waiting, &mut entry, &mut app);
    apply_in_sequence(&mut waiting, &mut entry, &mut app, now_ms, gap_timeout_ms);
    app.parked = waiting
        .into_values()
        .filter(|w| w.since_ms.is_none())
        .map(|w| Parked {
            fill: w.fill,
            since_ms: now_ms,
        })
        .collect();
    if !app.applied.is_empty() {
        entry.last_update_ts = now_ms.max(entry.last_update_ts);
        entry.source = "fill".into();
        entry.version += 1;
        app.entry = Some(entry);
    }
    app
}

/// Applies the unnumbered fills at once (deduplicated by id) and returns the numbered ones
/// waiting for their turn, by sequence number: the parked ones and this batch's.
fn sort_arrivals(
    state: &LedgerState<'_>,
    fills: &[Fill],
    entry: &mut LedgerEntry,
    app: &mut Application,
) -> BTreeMap<u64, Waiting> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut waiting: BTreeMap<u64, Waiting> = state
        .parked
        .iter()
        .map(|p| {
            let w = Waiting {
                fill: p.fill.clone(),
                since_ms: Some(p.since_ms),
            };
            (p.seq(), w)
        })
        .collect();
    for fill in fills {
        match fill.venue_seq {
            None if state.applied_ids.contains(fill.fill_id.as_str()) || !seen.insert(fill.fill_id.as_str()) => {
                app.duplicates.push(fill.clone());
            }
            None => apply_one(entry, fill, app),
            Some(seq) if waiting.contains_key(&seq) => app.duplicates.push(fill.clone()),
            Some(seq) => {
                let w = Waiting {
                    fill: fill.clone(),
                    since_ms: None,
                };
                waiting.insert(seq, w);
            }
        }
    }
    waiting
}

/// Takes the waiting fills at or below the ledger's sequence out of `waiting`: a late fill the
/// ledger gave up on as missing is applied now, any other is a duplicate.
fn settle_late(waiting: &mut BTreeMap<u64, Waiting>, entry: &mut LedgerEntry, app: &mut Application) {
    let ahead = waiting.split_off(&(entry.venue_seq + 1));
    for (seq, w) in std::mem::replace(waiting, ahead) {
        if w.since_ms.is_some() {
            app.unparked.push(seq);
        }
        if let Some(i) = entry.venue_seq_missing.iter().position(|&m| m == seq) {
            entry.venue_seq_missing.remove(i);
            apply_one(entry, &w.fill, app);
        } else {
            app.duplicates.push(w.fill);
        }
    }
}

/// Applies the waiting fills in sequence, skipping a gap only once the fills behind it have
/// waited `gap_timeout_ms`; what is left waits behind a gap.
fn apply_in_sequence(
    waiting: &mut BTreeMap<u64, Waiting>,
    entry: &mut LedgerEntry,
    app: &mut Application,
    now_ms: u64,
    gap_timeout_ms: u64,
) {
    while let Some((&first, _)) = waiting.first_key_value() {
        if first != entry.venue_seq + 1 {
            let oldest = waiting
                .values()
                .map(|w| w.since_ms.unwrap_or(now_ms))
                .min()
                .unwrap_or(now_ms);
            if now_ms.saturating_sub(oldest) < gap_timeout_ms {
                break;
            }
            skip_gap(entry, app, first);
        }
        let Some((seq, w)) = waiting.pop_first() else { break };
        if w.since_ms.is_some() {
            app.unparked.push(seq);
        }
        entry.venue_seq = seq;
        apply_one(entry, &w.fill, app);
    }
}

/// Gives up on the numbers before `first`: the last [`MAX_MISSING_SEQS`] are remembered as
/// missing (applied late if they still come) and the gap is reported.
fn skip_gap(entry: &mut LedgerEntry, app: &mut Application, first: u64) {
    let gap = entry.venue_seq + 1..=first - 1;
    let remembered = (*gap.end() - *gap.start() + 1).min(MAX_MISSING_SEQS as u64);
    entry.venue_seq_missing.extend(*gap.end() + 1 - remembered..=*gap.end());
    let excess = entry.venue_seq_missing.len().saturating_sub(MAX_MISSING_SEQS);
    entry.venue_seq_missing.drain(..excess);
    app.gaps.push(gap);
    entry.venue_seq = first - 1;
}

/// Applies one fill to the ledger state and records it.
fn apply_one(entry: &mut LedgerEntry, fill: &Fill, app: &mut Application) {
    entry.position.apply(fill.side, fill.qty, fill.price, fill.quote_fee());
    entry.leverage = fill.leverage;
    entry.last_order_id = fill.order_id.to_string();
    entry.last_fill_id = fill.fill_id.to_string();
    entry.fills += 1;
    app.applied.push(AppliedFill {
        fill: fill.clone(),
        position_amt: entry.position.amt,
        realized_pnl: entry.position.realized_pnl,
    });
}

/// A disagreement between the ledger and the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    /// The ledger's amount (`None`: no ledger yet).
    pub ledger_amt: Option<Decimal>,
    pub exchange_amt: Decimal,
}

impl Drift {
    /// Exchange minus ledger.
    pub fn size(&self) -> Decimal {
        self.exchange_amt - self.ledger_amt.unwrap_or_default()
    }
}

/// Whether the snapshot disagrees with the ledger by more than `eps`. A snapshot older than
/// the ledger's last change, or behind it in the venue's fill sequence, says nothing about the
/// current ledger and is ignored.
pub fn detect_drift(ledger: Option<&LedgerEntry>, snapshot: &Snapshot, eps: Decimal) -> Option<Drift> {
    if let Some(entry) = ledger {
        if snapshot.ts < entry.last_update_ts || snapshot.venue_seq.is_some_and(|seq| seq < entry.venue_seq) {
            return None;
        }
    }
    let ledger_amt = ledger.map(|e| e.position.amt);
    let drift = Drift {
        ledger_amt,
        exchange_amt: snapshot.position_amt,
    };
    (drift.size().abs() > eps).then_some(drift)
}

/// The ledger after exchange truth wins: amount, entry price and leverage from the snapshot;
/// realized PnL and fill history kept. The snapshot includes every fill up to its venue
/// sequence number, so the ledger's sequence moves up to it and the missing numbers it
/// covers are forgotten (applying such a fill later would count it twice).
pub fn reconciled(ledger: Option<&LedgerEntry>, snapshot: &Snapshot, now_ms: u64) -> LedgerEntry {
    let mut entry = ledger.cloned().unwrap_or_default();
    entry.position.amt = snapshot.position_amt;
    entry.position.avg_entry = if snapshot.position_amt.is_zero() {
        Decimal::ZERO
    } else {
        snapshot.entry_price
    };
    entry.leverage = snapshot.leverage;
    if let Some(seq) = snapshot.venue_seq {
        entry.venue_seq = entry.venue_seq.max(seq);
        entry.venue_seq_missing.retain(|&missing| missing > seq);
    }
    entry.last_update_ts = now_ms.max(entry.last_update_ts);
    entry.source = "reconcile".into();
    entry.version += 1;
    entry
}

/// Remembers since when each symbol's drift has been seen at the same ledger version, so a
/// drift is only acted on once it has persisted for the grace period with no fill applied.
#[derive(Debug, Default)]
pub struct DriftTracker {
    first_seen: HashMap<Symbol, (u64, Instant)>,
}

impl DriftTracker {
    /// Records a drift observation; returns true when it has persisted at least `grace`.
    pub fn observe(&mut self, symbol: &Symbol, version: u64, now: Instant, grace: Duration) -> bool {
        let seen = self.first_seen.entry(symbol.clone()).or_insert((version, now));
        if seen.0 != version {
            *seen = (version, now);
        }
        now.duration_since(seen.1) >= grace
    }

    /// Whether this is the first observation of the current drift (for logging once).
    pub fn is_new(&self, symbol: &Symbol) -> bool {
        !self.first_seen.contains_key(symbol)
    }

    /// Forgets a symbol (its drift is gone or was reconciled).
    pub fn clear(&mut self, symbol: &Symbol) {
        self.first_seen.remove(symbol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quantum_model::types::{FillId, OrderId, PlanId, Side};

    const NEVER: u64 = u64::MAX;

    fn fill(id: &str, side: Side, qty: i64, price: i64) -> Fill {
        Fill {
            fill_id: FillId::new(id),
            order_id: OrderId::new(format!("o-{id}")),
            plan_id: PlanId::parse("0123456789abcdef").unwrap(),
            symbol: Symbol::parse("BTCUSDT").unwrap(),
            side,
            qty: Decimal::from(qty),
            price: Decimal::from(price),
            fee: Decimal::ZERO,
            fee_asset: None,
            leverage: Decimal::from(2),
            ts: 1,
            venue_seq: None,
        }
    }

    /// Fill number `seq` of the venue: BUY 1 at 100 + seq.
    fn numbered(seq: u64) -> Fill {
        Fill {
            venue_seq: Some(seq),
            ..fill(&format!("n{seq}"), Side::Buy, 1, 100 + seq as i64)
        }
    }

    /// Unnumbered fills against a ledger with these fill ids applied.
    fn apply(entry: Option<&LedgerEntry>, fills: &[Fill], applied: &HashSet<String>, now: u64) -> Application {
        let state = LedgerState {
            entry,
            applied_ids: applied,
            parked: &[],
        };
        apply_fills(state, fills, now, NEVER)
    }

    fn seqs(app: &Application) -> Vec<u64> {
        app.applied.iter().map(|a| a.fill.venue_seq.unwrap()).collect()
    }

    fn snapshot(amt: i64, ts: u64) -> Snapshot {
        Snapshot {
            position_amt: Decimal::from(amt),
            entry_price: Decimal::from(100),
            mark_price: Decimal::from(101),
            unrealized_pnl: Decimal::ZERO,
            leverage: Decimal::from(3),
            ts,
            venue_seq: None,
        }
    }

    #[test]
    fn first_fill_creates_the_ledger() {
        let app = apply(None, &[fill("a", Side::Buy, 2, 100)], &HashSet::new(), 10);
        let entry = app.entry.unwrap();
        assert_eq!(entry.position.amt, Decimal::from(2));
        assert_eq!((entry.fills, entry.version, entry.last_fill_id.as_str()), (1, 1, "a"));
        assert_eq!(entry.source, "fill");
    }

    #[test]
    fn duplicates_are_skipped_in_input_and_history() {
        let applied: HashSet<String> = ["a".to_string()].into();
        let fills = [
            fill("a", Side::Buy, 1, 100),
            fill("b", Side::Buy, 1, 100),
            fill("b", Side::Buy, 1, 100),
        ];
        let app = apply(None, &fills, &applied, 10);
        assert_eq!(app.applied.len(), 1);
        assert_eq!(app.duplicates.len(), 2);
        assert_eq!(app.entry.unwrap().position.amt, Decimal::ONE);
    }

    #[test]
    fn nothing_new_means_no_write() {
        let applied: HashSet<String> = ["a".to_string()].into();
        let app = apply(None, &[fill("a", Side::Buy, 1, 100)], &applied, 10);
        assert!(app.entry.is_none());
        assert!(!app.writes_anything());
    }

    /// (ledger sequence, missing, parked, batch) → (applied, duplicates, parked, unparked, gaps).
    #[test]
    fn venue_sequence_table() {
        struct Row {
            seq: u64,
            missing: Vec<u64>,
            parked: Vec<(u64, u64)>,
            batch: Vec<u64>,
            now: u64,
            applied: Vec<u64>,
            duplicates: Vec<u64>,
            parks: Vec<u64>,
            unparked: Vec<u64>,
            gaps: Vec<RangeInclusive<u64>>,
        }
        let row = |seq, batch: &[u64], applied: &[u64]| Row {
            seq,
            missing: vec![],
            parked: vec![],
            batch: batch.to_vec(),
            now: 1_000,
            applied: applied.to_vec(),
            duplicates: vec![],
            parks: vec![],
            unparked: vec![],
            gaps: vec![],
        };
        let rows = [
            // In order, out of order within a batch: applied in sequence.
            row(0, &[1, 2, 3], &[1, 2, 3]),
            row(0, &[3, 1, 2], &[1, 2, 3]),
            // Already applied, or twice in the batch.
            Row {
                duplicates: vec![2, 3],
                ..row(2, &[2, 3, 3], &[3])
            },
            // Ahead of its turn: parked.
            Row {
                parks: vec![3],
                ..row(1, &[3], &[])
            },
            // The missing one comes: the parked one follows it.
            Row {
                parked: vec![(3, 500)],
                unparked: vec![3],
                ..row(1, &[2], &[2, 3])
            },
            // Parked already, delivered again: a duplicate, still parked.
            Row {
                parked: vec![(3, 900)],
                duplicates: vec![3],
                ..row(1, &[3], &[])
            },
            // The gap timeout (500 ms here) passed for the oldest fill behind each gap.
            Row {
                parked: vec![(5, 400), (7, 450)],
                unparked: vec![5, 7],
                gaps: vec![2..=4, 6..=6],
                ..row(1, &[], &[5, 7])
            },
            // Behind the second gap only a fill parked 100 ms ago: it waits on.
            Row {
                parked: vec![(5, 400), (7, 900)],
                unparked: vec![5],
                gaps: vec![2..=4],
                ..row(1, &[], &[5])
            },
            // A fill the ledger gave up on still comes: applied late, once.
            Row {
                missing: vec![3, 4],
                duplicates: vec![4],
                ..row(6, &[4, 4], &[4])
            },
        ];
        for (i, r) in rows.into_iter().enumerate() {
            let entry = LedgerEntry {
                venue_seq: r.seq,
                venue_seq_missing: r.missing.clone(),
                version: 3,
                ..LedgerEntry::default()
            };
            let parked: Vec<Parked> = r
                .parked
                .iter()
                .map(|&(seq, since_ms)| Parked {
                    fill: numbered(seq),
                    since_ms,
                })
                .collect();
            let state = LedgerState {
                entry: Some(&entry),
                applied_ids: &HashSet::new(),
                parked: &parked,
            };
            let batch: Vec<Fill> = r.batch.iter().map(|&s| numbered(s)).collect();
            let app = apply_fills(state, &batch, r.now, 500);
            assert_eq!(seqs(&app), r.applied, "row {i}: applied");
            let mut dup: Vec<u64> = app.duplicates.iter().map(|f| f.venue_seq.unwrap()).collect();
            dup.sort_unstable();
            assert_eq!(dup, r.duplicates, "row {i}: duplicates");
            let parks: Vec<u64> = app.parked.iter().map(Parked::seq).collect();
            assert_eq!(parks, r.parks, "row {i}: parked");
            assert!(app.parked.iter().all(|p| p.since_ms == r.now), "row {i}: parked now");
            assert_eq!(app.unparked, r.unparked, "row {i}: unparked");
            assert_eq!(app.gaps, r.gaps, "row {i}: gaps");
            match app.entry {
                Some(e) => {
                    assert_eq!(e.version, 4, "row {i}");
                    let expected = r.applied.iter().copied().chain([r.seq]).max().unwrap();
                    assert_eq!(e.venue_seq, expected, "row {i}: sequence");
                    for seq in &r.applied {
                        assert!(!e.venue_seq_missing.contains(seq), "row {i}: {seq} no longer missing");
                    }
                    for gap in &r.gaps {
                        assert!(
                            gap.clone().all(|s| e.venue_seq_missing.contains(&s)),
                            "row {i}: gap kept"
                        );
                    }
                }
                None => assert!(r.applied.is_empty(), "row {i}: nothing applied, nothing written"),
            }
        }
    }

    #[test]
    fn a_huge_gap_remembers_only_the_newest_missing_numbers() {
        let entry = LedgerEntry::default();
        let parked = [Parked {
            fill: numbered(1_000_000),
            since_ms: 0,
        }];
        let state = LedgerState {
            entry: Some(&entry),
            applied_ids: &HashSet::new(),
            parked: &parked,
        };
        let e = apply_fills(state, &[], 10, 5).entry.unwrap();
        assert_eq!(e.venue_seq, 1_000_000);
        assert_eq!(e.venue_seq_missing.len(), MAX_MISSING_SEQS);
        assert_eq!(e.venue_seq_missing.last(), Some(&999_999));
    }

    #[test]
    fn drift_rules() {
        let ledger = apply(None, &[fill("a", Side::Buy, 2, 100)], &HashSet::new(), 50)
            .entry
            .unwrap();
        assert_eq!(detect_drift(Some(&ledger), &snapshot(2, 60), Decimal::ZERO), None);
        let d = detect_drift(Some(&ledger), &snapshot(3, 60), Decimal::ZERO).unwrap();
        assert_eq!(d.size(), Decimal::ONE);
        // A snapshot older than the ledger's last change is ignored.
        assert_eq!(detect_drift(Some(&ledger), &snapshot(3, 40), Decimal::ZERO), None);
        // So is one behind the ledger in the venue's sequence.
        let ahead = LedgerEntry {
            venue_seq: 9,
            ..ledger.clone()
        };
        let behind = Snapshot {
            venue_seq: Some(8),
            ..snapshot(3, 60)
        };
        assert_eq!(detect_drift(Some(&ahead), &behind, Decimal::ZERO), None);
        // Exchange has a position the ledger never saw: drift, and reconcile creates the ledger.
        let d = detect_drift(None, &snapshot(5, 1), Decimal::ZERO).unwrap();
        assert_eq!(d.ledger_amt, None);
        let r = reconciled(None, &snapshot(5, 1), 70);
        assert_eq!(
            (r.position.amt, r.leverage, r.version, r.source.as_str()),
            (Decimal::from(5), Decimal::from(3), 1, "reconcile")
        );
        assert_eq!(detect_drift(None, &snapshot(0, 1), Decimal::ZERO), None);
    }

    #[test]
    fn reconcile_keeps_history_and_bumps_version() {
        let ledger = apply(None, &[fill("a", Side::Buy, 2, 100)], &HashSet::new(), 50)
            .entry
            .unwrap();
        let r = reconciled(Some(&ledger), &snapshot(0, 60), 70);
        assert_eq!(r.position.amt, Decimal::ZERO);
        assert_eq!(r.position.avg_entry, Decimal::ZERO);
        assert_eq!((r.fills, r.version), (1, 2));
    }

    #[test]
    fn reconcile_moves_the_sequence_to_the_snapshots() {
        let ledger = LedgerEntry {
            venue_seq: 10,
            venue_seq_missing: vec![4, 12],
            ..LedgerEntry::default()
        };
        let truth = Snapshot {
            venue_seq: Some(11),
            ..snapshot(2, 60)
        };
        let r = reconciled(Some(&ledger), &truth, 70);
        assert_eq!((r.venue_seq, r.venue_seq_missing), (11, vec![12]));
    }

    #[test]
    fn drift_must_persist_at_one_version() {
        let sym = Symbol::parse("BTCUSDT").unwrap();
        let mut t = DriftTracker::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        assert!(!t.observe(&sym, 1, t0, grace));
        assert!(!t.observe(&sym, 1, t0 + Duration::from_secs(4), grace));
        // A fill landed (version moved): the clock restarts.
        assert!(!t.observe(&sym, 2, t0 + Duration::from_secs(6), grace));
        assert!(t.observe(&sym, 2, t0 + Duration::from_secs(11), grace));
    }

    /// Fills with alternating sides so that order changes the average price and PnL.
    fn venue_fills(n: u64) -> Vec<Fill> {
        (1..=n)
            .map(|seq| Fill {
                side: if seq % 3 == 0 { Side::Sell } else { Side::Buy },
                qty: Decimal::from(1 + seq % 4),
                ..numbered(seq)
            })
            .collect()
    }

    proptest! {
        /// Replaying any prefix of the fills again changes nothing: exactly-once by fill id.
        #[test]
        fn replay_is_idempotent(sides in proptest::collection::vec((any::<bool>(), 1i64..100, 1i64..1000), 1..30), cut in 0usize..30) {
            let fills: Vec<Fill> = sides.iter().enumerate()
                .map(|(i, (buy, q, p))| fill(&format!("f{i}"), if *buy { Side::Buy } else { Side::Sell }, *q, *p))
                .collect();
            let once = apply(None, &fills, &HashSet::new(), 5).entry.unwrap();
            let cut = cut.min(fills.len());
            let applied: HashSet<String> = fills.iter().map(|f| f.fill_id.to_string()).collect();
            let replay = apply(Some(&once), &fills[..cut], &applied, 9);
            prop_assert!(replay.entry.is_none());
            prop_assert_eq!(replay.duplicates.len(), cut);
            // Applying in two halves equals applying at once.
            let mid = fills.len() / 2;
            let first = apply(None, &fills[..mid], &HashSet::new(), 5).entry;
            let first_ids: HashSet<String> = fills[..mid].iter().map(|f| f.fill_id.to_string()).collect();
            let second = apply(first.as_ref(), &fills, &first_ids, 5).entry.unwrap();
            prop_assert_eq!(second.position, once.position);
            prop_assert_eq!(second.fills, once.fills);
        }

        /// Numbered fills delivered in any order, in any batches, any number of times, end in
        /// the ledger of the venue's order: every fill once, the same average price and PnL.
        #[test]
        fn any_delivery_order_gives_the_venue_order_ledger(
            n in 1u64..25,
            deliveries in proptest::collection::vec((0u64..25, 0usize..4), 1..80),
        ) {
            let fills = venue_fills(n);
            let in_order = apply(None, &fills, &HashSet::new(), 1).entry.unwrap();
            // Each fill delivered at least once (at the end), plus the random redeliveries.
            let mut stream: Vec<(Fill, usize)> = deliveries
                .iter()
                .map(|&(i, cut)| (fills[(i % n) as usize].clone(), cut))
                .collect();
            stream.extend(fills.iter().rev().map(|f| (f.clone(), 1)));
            let mut entry: Option<LedgerEntry> = None;
            let mut parked: Vec<Parked> = Vec::new();
            let mut applied = 0;
            let mut batch = Vec::new();
            for (i, (fill, cut)) in stream.iter().enumerate() {
                batch.push(fill.clone());
                if *cut == 0 && i + 1 != stream.len() {
                    continue;
                }
                let state = LedgerState { entry: entry.as_ref(), applied_ids: &HashSet::new(), parked: &parked };
                let app = apply_fills(state, &batch, 1, NEVER);
                batch.clear();
                applied += app.applied.len();
                parked.retain(|p| !app.unparked.contains(&p.seq()));
                parked.extend(app.parked);
                if let Some(e) = app.entry {
                    entry = Some(e);
                }
            }
            prop_assert!(parked.is_empty(), "nothing left waiting");
            prop_assert_eq!(applied as u64, n, "each fill applied once");
            let entry = entry.unwrap();
            prop_assert_eq!(entry.position, in_order.position);
            prop_assert_eq!((entry.venue_seq, entry.fills), (n, n));
        }
    }
}
