//! Any stream entry, however hostile, goes through the whole money path (parse → size → caps
//! → gates → plan → the executor's re-read → the paper venue → the ledger's position maths)
//! without a panic, and ends in exactly one of: a DLQ reason, a skip reason, or a plan whose
//! order fills or is rejected with a reason. Along the way the gates' and the venue's
//! invariants hold: a SELL never exceeds what is available, a reduce-only order never opens or
//! flips a position, and the ledger's arithmetic equals the venue's.
//!
//! A quarter of the cases are hostile field maps, the rest well-formed intents at the edges of
//! the plausible; of 10,000 cases about 35% end with a DLQ reason, 50% with a skip reason and
//! 14% at the venue (measured once by counting the ends).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use rust_decimal::Decimal;

use quantum_intent_bridge::gate::{exposure_pct, gate, GateConfig, GateInput, GateOutcome, LedgerView};
use quantum_intent_executor::paper::{simulate, PaperConfig, PaperPosition};
use quantum_intent_executor::venue::{OrderOutcome, OrderRequest};
use quantum_model::intent::{Intent, IntentLimits, SymbolCaps};
use quantum_model::plan::Plan;
use quantum_model::position::Position;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::types::{Side, Symbol};

/// Numbers as producers get them wrong: huge, tiny, negative, NaN, exponents, junk.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..1_000_000, 0u32..12).prop_map(|(n, scale)| Decimal::new(n as i64, scale).to_string()),
        "[0-9]{1,32}(\\.[0-9]{1,32})?",
        prop_oneof![
            Just("NaN"),
            Just("inf"),
            Just("-0"),
            Just("1e25"),
            Just("1e-20"),
            Just("0.123456789012345678"),
            Just("")
        ]
        .prop_map(String::from),
        ".{0,12}",
    ]
}

fn entry_fields() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        Just("qty"),
        Just("quantity"),
        Just("size"),
        Just("price"),
        Just("position_usd"),
        Just("position_size_usd"),
        Just("entry_price"),
        Just("leverage"),
        Just("stop_loss"),
        Just("take_profit"),
        Just("type"),
        Just("confidence"),
    ];
    (
        prop_oneof![
            Just("BTCUSDT"),
            Just("ZECUSDT"),
            Just("DOGEUSDT"),
            Just("btc usdt"),
            Just("")
        ],
        prop_oneof![
            Just("BUY"),
            Just("SELL"),
            Just("sell"),
            Just("LONG"),
            Just("SHORT"),
            Just("HOLD")
        ],
        proptest::collection::vec((key, number()), 0..7),
    )
        .prop_map(|(symbol, side, pairs)| {
            let mut out = vec![
                ("symbol".to_string(), symbol.to_string()),
                ("side".to_string(), side.to_string()),
            ];
            out.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
            out
        })
}

/// Well-formed intents at the edges of the plausible: most reach the gates and the venue.
fn plausible_fields() -> impl Strategy<Value = Vec<(String, String)>> {
    let amount = (1i64..1_000_000, 2u32..9).prop_map(|(n, scale)| Decimal::new(n, scale).to_string());
    let size = prop_oneof![
        amount.clone().prop_map(|q| vec![("qty".to_string(), q)]),
        (amount.clone(), 1u32..126).prop_map(|(usd, lev)| vec![
            ("position_usd".to_string(), usd),
            ("leverage".to_string(), lev.to_string()),
        ]),
        (amount.clone(), amount.clone()).prop_map(|(q, p)| vec![
            ("qty".to_string(), q),
            ("type".to_string(), "LIMIT".to_string()),
            ("price".to_string(), p),
        ]),
    ];
    (
        prop_oneof![Just("BTCUSDT"), Just("ZECUSDT"), Just("DOGEUSDT")],
        prop_oneof![Just("BUY"), Just("SELL")],
        size,
    )
        .prop_map(|(symbol, side, size)| {
            let mut out = vec![
                ("symbol".to_string(), symbol.to_string()),
                ("side".to_string(), side.to_string()),
            ];
            out.extend(size);
            out
        })
}

fn gates() -> GateConfig {
    GateConfig {
        allowlist: ["BTCUSDT", "ZECUSDT"]
            .iter()
            .filter_map(|s| Symbol::parse(s).ok())
            .collect::<HashSet<_>>(),
        require_ledger_for_open: false,
        skip_flat_sell: true,
        flat_eps: Decimal::ZERO,
        max_exposure_pct: Decimal::from(80),
        allow_unknown_equity: false,
    }
}

fn paper() -> PaperConfig {
    PaperConfig {
        seed: 42,
        reference_prices: HashMap::new(),
        default_price: Decimal::from(100),
        slippage_bps: Decimal::from(2),
        fee_bps: Decimal::from(5),
        qty_step: Decimal::new(1, 3),
        price_tick: Decimal::new(1, 4),
        equity_usd: Decimal::from(100_000),
    }
}

/// How an entry ended.
#[derive(Debug)]
enum End {
    Dlq(&'static str),
    Skip(&'static str),
    Filled,
    Rejected,
}

fn through_the_pipeline(
    fields: &[(String, String)],
    mark: Option<Decimal>,
    ledger: LedgerView,
    sells_in_flight: Decimal,
    equity: Option<Decimal>,
    venue_amt: Decimal,
) -> Result<End, TestCaseError> {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let limits = IntentLimits {
        max_notional_usd: SymbolCaps::parse("1000000").unwrap(),
        ..IntentLimits::default()
    };
    let sized = Intent::parse(&StreamEntry::new("1-0", &pairs), &limits).and_then(|intent| {
        let qty = intent.quantity(mark)?;
        intent.check_caps(qty, mark, &limits)?;
        Ok((intent, qty))
    });
    let (intent, qty) = match sized {
        Err(e) => return Ok(End::Dlq(e.reason())),
        Ok(sized) => sized,
    };
    let own = intent.notional_usd(qty, mark).unwrap_or_default();
    let order = GateInput {
        side: intent.side,
        qty,
        ledger,
        sells_in_flight,
        exposure_pct: exposure_pct(own, equity),
    };
    let gated = match gate(&gates(), &intent.symbol, &order) {
        GateOutcome::Skip(reason) => return Ok(End::Skip(reason.code())),
        GateOutcome::Publish { qty: gated, .. } => gated,
    };
    prop_assert!(gated > Decimal::ZERO && gated <= qty, "gated {gated} of {qty}");
    if intent.side == Side::Sell {
        let LedgerView::Known(amt) = ledger else {
            return Err(TestCaseError::fail("a SELL published without a known ledger"));
        };
        prop_assert!(
            gated <= amt - sells_in_flight,
            "SELL {gated} > {amt} - {sells_in_flight}"
        );
    }
    let mut plan = Plan::from_intent(&intent, gated, 1);
    plan.reduce_only = intent.side == Side::Sell;
    let written = plan.to_fields();
    let pairs: Vec<(&str, &str)> = written.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let read = Plan::parse(&StreamEntry::new("2-0", &pairs));
    prop_assert_eq!(
        read.as_ref().ok(),
        Some(&plan),
        "the executor reads what the bridge wrote"
    );

    let request = OrderRequest::from(&plan);
    let state = PaperPosition {
        position: Position {
            amt: venue_amt,
            ..Position::default()
        },
        ..PaperPosition::default()
    };
    let (outcome, next) = simulate(&paper(), &request, &state, 1);
    match outcome {
        OrderOutcome::Rejected { reason } => {
            prop_assert!(!reason.is_empty());
            prop_assert_eq!(next.position, state.position, "a rejection moves nothing");
            Ok(End::Rejected)
        }
        OrderOutcome::Filled { fills } => {
            let mut ledger = state.position.clone();
            for f in &fills {
                prop_assert!(f.qty > Decimal::ZERO && f.qty <= request.qty);
                ledger.apply(f.side, f.qty, f.price, f.fee);
            }
            prop_assert_eq!(ledger.amt, next.position.amt, "the ledger's maths equals the venue's");
            if request.reduce_only {
                prop_assert!(next.position.amt.abs() <= venue_amt.abs(), "reduce-only increased");
                prop_assert!(
                    next.position.amt.is_zero() || next.position.amt.is_sign_positive() == venue_amt.is_sign_positive(),
                    "reduce-only flipped {venue_amt} to {}",
                    next.position.amt
                );
            }
            Ok(End::Filled)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn any_entry_ends_in_a_dlq_reason_a_skip_reason_or_an_order_outcome(
        fields in prop_oneof![1 => entry_fields(), 3 => plausible_fields()],
        mark in prop_oneof![
            1 => proptest::option::of(number()),
            3 => (1i64..10_000_000, 2u32..6).prop_map(|(n, s)| Some(Decimal::new(n, s).to_string())),
        ],
        ledger in prop_oneof![
            Just(LedgerView::Missing),
            Just(LedgerView::Unreadable),
            (-2_000_000i64..2_000_000).prop_map(|n| LedgerView::Known(Decimal::new(n, 3))),
        ],
        in_flight in 0i64..2_000_000,
        equity in prop_oneof![1 => Just(None), 6 => (0i64..1_000_000_000).prop_map(Some)],
        venue_amt in -2_000_000i64..2_000_000,
    ) {
        let mark = mark
            .and_then(|m| quantum_model::types::parse_decimal("mark", &m).ok())
            .filter(|m| *m > Decimal::ZERO);
        let end = through_the_pipeline(
            &fields,
            mark,
            ledger,
            Decimal::new(in_flight, 3),
            equity.map(Decimal::from),
            Decimal::new(venue_amt, 3),
        )?;
        match end {
            End::Dlq(reason) | End::Skip(reason) => prop_assert!(!reason.is_empty()),
            End::Filled | End::Rejected => {}
        }
    }
}
