//! The live venue: Binance USD-M futures (testnet by default).
//!
//! What it guarantees, on top of the executor's claim and lease:
//! - **No order twice.** Every order carries the client id `qib-<plan_id>`. Before each send
//!   the request's `timestamp` and `recvWindow` are recorded (`record`); a send whose answer
//!   was lost (timeout, 5xx, `-1007`, a crash) is resolved by asking the venue for the order
//!   and the account's trades of it, never by sending again: Binance keeps client ids unique
//!   only among open orders, so "not found, send again" could double an order. "Not found"
//!   counts as "never placed" only once the server's clock has passed `timestamp + recvWindow`
//!   plus a margin (`BINANCE_UNKNOWN_MARGIN_MS`), when the venue can no longer accept it.
//!   Until then the plan stays claimed and `quantum_executor_unknown_orders` counts it.
//! - **No fill lost or counted twice.** Fills are the account's trades of the order, each with
//!   the venue's trade id as its fill id and the real commission and its asset.
//! - **Refused before sending what the venue would refuse**: exchange filters (`filters`), the
//!   position mode (one-way: closes are `reduceOnly`; hedge: `positionSide`, never
//!   `reduceOnly`), the symbol's leverage set first when the plan's differs.
//! - **Exchange truth where the bridge and the ledger look for it** (`account`): positions to
//!   `quantum:position:snapshot:<SYM>`, equity to `quantum:state:portfolio`, marks to
//!   `quantum:market:mark_price`; at start, the venue's open orders and recent trades are
//!   checked against the order records, and a mismatch stops the executor.
//!
//! Layout: `sign` (HMAC signing, credentials), `client` (HTTP, clock offset, rate limits),
//! `errors` (reply → disposition), `api` (reply types, order parameters), `filters`
//! (exchangeInfo rules, pure), `record` (the order record and its scripts), `resolve` (pure
//! rules from venue answers to outcomes), `account` (snapshots, start-up reconciliation); this
//! file: the venue's order flow (read record → resolve or fit → record → send → record).

mod account;
mod api;
mod client;
mod errors;
mod filters;
mod record;
mod resolve;
pub mod sign;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use reqwest::Method;
use rust_decimal::Decimal;

use quantum_model::contract::binance_order_key;
use quantum_model::types::{OrderId, Symbol};
use quantum_runtime::cas::queue_eval;
use quantum_runtime::replication::{ReplicaWait, Replicated};
use quantum_runtime::reply::hash_pairs;

pub use account::{reconcile_on_start, AccountSync, Mismatch};
pub use api::{Mode as PositionMode, NewOrder, OrderReply, PositionRisk, Trade};
pub use client::{CallError, Fapi};
pub use errors::{classify, Disposition};
pub use filters::{fit, ExchangeInfo, FilterViolation, FitRequest, SymbolRules};
pub use record::Record;
pub use resolve::{judge, judge_not_found, OrderContext, Resolution};

use crate::order::ORDER_RECORD_TTL_SECS;
use crate::venue::{OrderOutcome, OrderRequest, Venue, VenueError};

/// The documented base URLs.
pub const MAINNET_URL: &str = "https://fapi.binance.com";
pub const TESTNET_URL: &str = "https://demo-fapi.binance.com";

/// Which Binance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BinanceEnv {
    /// The futures testnet (demo trading, no real money).
    Testnet,
    /// The real exchange: real orders, real money.
    Mainnet,
}

/// Command line and environment of the live venue (`INTENT_EXECUTOR_MODE=live`).
#[derive(clap::Args, Debug, Clone)]
pub struct BinanceArgs {
    /// Binance environment of the live venue: testnet (default) or mainnet. Mainnet places
    /// real orders and must be chosen explicitly.
    #[arg(long, env = "BINANCE_ENV", value_enum, default_value = "testnet", ignore_case = true)]
    pub binance_env: BinanceEnv,
    /// Base URL of the USD-M futures API, overriding BINANCE_ENV's (a local test server).
    #[arg(long, env = "BINANCE_FAPI_URL")]
    pub binance_fapi_url: Option<String>,
    /// File holding the API key. Unset: the systemd credential binance-api-key
    /// (LoadCredential=binance-api-key:/path).
    #[arg(long, env = "BINANCE_API_KEY_FILE")]
    pub binance_api_key_file: Option<std::path::PathBuf>,
    /// File holding the API secret. Unset: the systemd credential binance-api-secret.
    #[arg(long, env = "BINANCE_API_SECRET_FILE")]
    pub binance_api_secret_file: Option<std::path::PathBuf>,
    /// recvWindow of signed requests (ms): how long after its timestamp the venue may still
    /// accept a request. It bounds how long an order's outcome can stay unknown.
    #[arg(long, env = "BINANCE_RECV_WINDOW_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub binance_recv_window_ms: u64,
    /// Added to timestamp + recvWindow before "order not found" is taken to mean "never
    /// placed" (ms): covers the clock offset's error and the venue's internal queueing.
    #[arg(long, env = "BINANCE_UNKNOWN_MARGIN_MS", default_value_t = 10_000)]
    pub binance_unknown_margin_ms: u64,
    /// Timeout of one HTTP request to the venue (ms); a timed-out order is resolved, not resent.
    #[arg(long, env = "BINANCE_HTTP_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub binance_http_timeout_ms: u64,
    /// How often (ms) positions, equity and marks are read from the account into
    /// quantum:position:snapshot:<SYM>, quantum:state:portfolio and quantum:market:mark_price.
    #[arg(long, env = "BINANCE_ACCOUNT_SYNC_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub binance_account_sync_ms: u64,
    /// How long (ms) exchangeInfo's filters are cached before they are fetched again.
    #[arg(long, env = "BINANCE_EXCHANGE_INFO_REFRESH_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub binance_exchange_info_refresh_ms: u64,
    /// How far back (ms) the start-up check compares the account's trades with the order
    /// records (at most 7 days, Binance's limit).
    #[arg(long, env = "BINANCE_RECONCILE_LOOKBACK_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..=604_800_000))]
    pub binance_reconcile_lookback_ms: u64,
}

impl BinanceArgs {
    /// The venue settings.
    pub fn config(&self) -> BinanceConfig {
        let base_url = self.binance_fapi_url.clone().unwrap_or_else(|| match self.binance_env {
            BinanceEnv::Testnet => TESTNET_URL.to_string(),
            BinanceEnv::Mainnet => MAINNET_URL.to_string(),
        });
        BinanceConfig {
            base_url,
            recv_window_ms: self.binance_recv_window_ms,
            unknown_margin_ms: self.binance_unknown_margin_ms,
            http_timeout: Duration::from_millis(self.binance_http_timeout_ms),
            rules_refresh: Duration::from_millis(self.binance_exchange_info_refresh_ms),
        }
    }

    /// The API credentials, from the files or the systemd credentials.
    ///
    /// # Errors
    /// As [`sign::Credentials::load`].
    pub fn credentials(&self) -> Result<sign::Credentials, String> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        sign::Credentials::load(
            self.binance_api_key_file.as_deref(),
            self.binance_api_secret_file.as_deref(),
            dir.as_deref(),
        )
    }
}

/// Settings of the live venue.
#[derive(Debug, Clone)]
pub struct BinanceConfig {
    pub base_url: String,
    pub recv_window_ms: u64,
    /// Added to `timestamp + recvWindow` before "not found" is believed.
    pub unknown_margin_ms: u64,
    pub http_timeout: Duration,
    /// How long cached exchange rules are used before they are fetched again.
    pub rules_refresh: Duration,
}

/// The live venue. Clones share one client and one cache.
#[derive(Clone)]
pub struct BinanceVenue {
    inner: Arc<Inner>,
}

struct Inner {
    fapi: Arc<Fapi>,
    redis: Client,
    /// `REDIS_WAIT_REPLICAS`: an order's SENDING record is on the replicas before it is sent.
    replica_wait: Arc<ReplicaWait>,
    config: BinanceConfig,
    rules: Mutex<(HashMap<Symbol, SymbolRules>, Option<Instant>)>,
    mode: Mutex<PositionMode>,
    /// The account's leverage per symbol, as last read or set.
    leverage: Mutex<HashMap<Symbol, Decimal>>,
    /// The last mark per symbol (account sync, premiumIndex).
    marks: Mutex<HashMap<Symbol, Decimal>>,
    /// Orders whose outcome is unknown right now (the gauge).
    unresolved: Mutex<HashSet<OrderId>>,
}

/// How a guarded write of the record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Ok,
    /// The record is final: someone else recorded the outcome.
    Final,
    /// Another writer moved the record since it was read.
    Moved,
}

/// Rounds of one order's flow in one call, at most (each reads the record, then resolves or
/// sends; a `-1021` re-measures the clock and goes round again).
const MAX_ROUNDS_PER_CALL: usize = 3;

impl BinanceVenue {
    /// Connects: measures the clock offset, reads the position mode and the exchange rules.
    ///
    /// # Errors
    /// The venue is unreachable or refuses the credentials.
    pub async fn connect(
        fapi: Arc<Fapi>,
        redis: Client,
        replica_wait: Arc<ReplicaWait>,
        config: BinanceConfig,
    ) -> Result<Self, VenueError> {
        let venue = Self {
            inner: Arc::new(Inner {
                fapi,
                redis,
                replica_wait,
                config,
                rules: Mutex::new((HashMap::new(), None)),
                mode: Mutex::new(PositionMode::OneWay),
                leverage: Mutex::new(HashMap::new()),
                marks: Mutex::new(HashMap::new()),
                unresolved: Mutex::new(HashSet::new()),
            }),
        };
        let offset = venue.inner.fapi.sync_clock().await.map_err(venue_error)?;
        let mode = venue.refresh_mode().await?;
        venue.refresh_rules().await?;
        tracing::info!(
            "Binance: {} clock_offset_ms={offset} position_mode={mode:?} recv_window_ms={} unknown_margin_ms={}",
            venue.inner.config.base_url,
            venue.inner.config.recv_window_ms,
            venue.inner.config.unknown_margin_ms
        );
        Ok(venue)
    }

    /// The HTTP client.
    pub fn fapi(&self) -> &Fapi {
        &self.inner.fapi
    }

    pub(crate) fn redis(&self) -> &Client {
        &self.inner.redis
    }

    /// Reads the account's position mode (`GET /fapi/v1/positionSide/dual`).
    async fn refresh_mode(&self) -> Result<PositionMode, VenueError> {
        let reply: api::PositionMode = self
            .inner
            .fapi
            .signed(Method::GET, "/fapi/v1/positionSide/dual", &[])
            .await
            .map_err(venue_error)?;
        let mode = if reply.dual_side_position {
            PositionMode::Hedge
        } else {
            PositionMode::OneWay
        };
        *lock(&self.inner.mode) = mode;
        Ok(mode)
    }

    /// Fetches `exchangeInfo` and replaces the cached rules.
    async fn refresh_rules(&self) -> Result<(), VenueError> {
        let info: ExchangeInfo = self
            .inner
            .fapi
            .public("/fapi/v1/exchangeInfo", &[])
            .await
            .map_err(venue_error)?;
        let (rules, unusable) = filters::rules_by_symbol(&info);
        for problem in unusable {
            tracing::warn!("exchangeInfo: {problem}; orders for it are refused");
        }
        *lock(&self.inner.rules) = (rules, Some(Instant::now()));
        Ok(())
    }

    /// The rules of `symbol`, fetched again when the cache is older than the refresh period.
    async fn rules_of(&self, symbol: &Symbol) -> Result<Option<SymbolRules>, VenueError> {
        let stale = lock(&self.inner.rules)
            .1
            .is_none_or(|at| at.elapsed() > self.inner.config.rules_refresh);
        if stale {
            self.refresh_rules().await?;
        }
        Ok(lock(&self.inner.rules).0.get(symbol).cloned())
    }

    /// Records the account's marks and leverages (the account sync).
    pub(crate) fn note_account(&self, marks: &HashMap<Symbol, Decimal>, leverage: &HashMap<Symbol, Decimal>) {
        lock(&self.inner.marks).extend(marks.iter().map(|(k, v)| (k.clone(), *v)));
        lock(&self.inner.leverage).extend(leverage.iter().map(|(k, v)| (k.clone(), *v)));
    }

    async fn mark_of(&self, symbol: &Symbol) -> Result<Option<Decimal>, VenueError> {
        if let Some(mark) = lock(&self.inner.marks).get(symbol).copied() {
            return Ok(Some(mark));
        }
        let index: api::PremiumIndex = self
            .inner
            .fapi
            .public("/fapi/v1/premiumIndex", &[("symbol", symbol.to_string())])
            .await
            .map_err(venue_error)?;
        lock(&self.inner.marks).insert(symbol.clone(), index.mark_price);
        Ok(Some(index.mark_price))
    }

    /// Sets the symbol's leverage when the plan's, as the venue takes it ([`venue_leverage`]),
    /// differs from the account's.
    /// Returns the venue's refusal, if it refused.
    async fn ensure_leverage(&self, symbol: &Symbol, wanted: Decimal) -> Result<Option<String>, VenueError> {
        let wanted = venue_leverage(wanted);
        if lock(&self.inner.leverage).get(symbol) == Some(&wanted) {
            return Ok(None);
        }
        let params = [("symbol", symbol.to_string()), ("leverage", wanted.to_string())];
        let set: Result<serde_json::Value, CallError> =
            self.inner.fapi.signed(Method::POST, "/fapi/v1/leverage", &params).await;
        match set {
            Ok(_) => {
                tracing::info!("Leverage of {symbol} set to {wanted}");
                lock(&self.inner.leverage).insert(symbol.clone(), wanted);
                Ok(None)
            }
            Err(e) if e.disposition == Disposition::Rejected => Ok(Some(format!("leverage {wanted} refused: {e}"))),
            Err(e) => Err(venue_error(e)),
        }
    }

    async fn read_record(&self, ctx: &OrderContext) -> Result<Record, VenueError> {
        let key = binance_order_key(&ctx.client_order_id);
        let pairs: Value = self.inner.redis.hgetall(&key).await?;
        Record::parse(&hash_pairs(pairs)).map_err(|detail| VenueError::Corrupt {
            symbol: ctx.symbol.clone(),
            detail: format!("{key}: {detail}"),
        })
    }

    async fn run_script(&self, script: &str, coid: &OrderId, args: Vec<String>) -> Result<Written, VenueError> {
        let pipeline = self.inner.redis.pipeline();
        queue_eval(&pipeline, script, vec![binance_order_key(coid)], args).await?;
        let replies: Vec<Value> = pipeline.all().await?;
        Ok(match replies.first().and_then(|v| v.as_str()).as_deref() {
            Some("OK") => Written::Ok,
            Some("FINAL") => Written::Final,
            _ => Written::Moved,
        })
    }

    /// Writes `fields` over the record, guarded by the `sends` count read.
    async fn update(
        &self,
        ctx: &OrderContext,
        sends: u64,
        fields: Vec<(String, String)>,
    ) -> Result<Written, VenueError> {
        let mut args = vec![sends.to_string(), ORDER_RECORD_TTL_SECS.to_string()];
        for (k, v) in fields {
            args.push(k);
            args.push(v);
        }
        self.run_script(record::UPDATE_SCRIPT, &ctx.client_order_id, args).await
    }

    /// Records `outcome` as final, or returns the final outcome someone else recorded.
    async fn finish(&self, ctx: &OrderContext, sends: u64, outcome: OrderOutcome) -> Result<OrderOutcome, VenueError> {
        let coid = &ctx.client_order_id;
        let outcome = match self.update(ctx, sends, record::final_fields(&outcome)).await? {
            Written::Ok => outcome,
            Written::Final => match self.read_record(ctx).await? {
                Record::Final(first) => first,
                _ => return Err(VenueError::Contended(ctx.symbol.clone())),
            },
            // Another writer moved the record since it was read: read it again.
            Written::Moved => return Err(VenueError::Contended(ctx.symbol.clone())),
        };
        self.resolved(coid, outcome_name(&outcome));
        Ok(outcome)
    }

    /// Asks the venue about a send whose answer is not recorded: by the venue's order id when a
    /// reply named it, else by client id.
    async fn resolve(&self, ctx: &OrderContext, sending: &record::Sending) -> Result<Resolution, VenueError> {
        let by = match sending.venue_order_id {
            Some(id) => ("orderId", id.to_string()),
            None => ("origClientOrderId", ctx.client_order_id.to_string()),
        };
        let query = [("symbol", ctx.symbol.to_string()), by];
        let reply: Result<OrderReply, CallError> = self.inner.fapi.signed(Method::GET, "/fapi/v1/order", &query).await;
        let margin = self.inner.config.unknown_margin_ms;
        match reply {
            Ok(reply) => self.judge_reply(ctx, reply).await,
            Err(e) if e.disposition == Disposition::NotFound => {
                let judged = judge_not_found(sending, self.inner.fapi.server_now_ms(), margin);
                if judged != Resolution::NeverAccepted {
                    return Ok(judged);
                }
                // Believed only on a fresh measure of the server's clock: a local clock step
                // since the last one must not make "not found" definitive early.
                match self.inner.fapi.sync_clock().await {
                    Ok(_) => Ok(judge_not_found(sending, self.inner.fapi.server_now_ms(), margin)),
                    Err(e) => Ok(Resolution::Pending(format!("cannot re-measure the server clock: {e}"))),
                }
            }
            Err(e) => Ok(Resolution::Pending(format!("cannot query the order: {e}"))),
        }
    }

    /// The outcome of the venue's order, once final and its trades are all listed.
    async fn judge_reply(&self, ctx: &OrderContext, reply: OrderReply) -> Result<Resolution, VenueError> {
        if !reply.is_final() || reply.executed_qty.is_zero() {
            return Ok(judge(ctx, &reply, &[]));
        }
        let params = [
            ("symbol", ctx.symbol.to_string()),
            ("orderId", reply.order_id.to_string()),
            ("limit", "1000".to_string()),
        ];
        let trades: Result<Vec<Trade>, CallError> = self
            .inner
            .fapi
            .signed(Method::GET, "/fapi/v1/userTrades", &params)
            .await;
        Ok(match trades {
            Ok(trades) => judge(ctx, &reply, &trades),
            Err(e) => Resolution::Pending(format!("cannot list the trades of order {}: {e}", reply.order_id)),
        })
    }

    /// Counts and logs an order whose outcome is unknown; the error keeps its plan claimed.
    fn unresolved(&self, coid: &OrderId, detail: String) -> VenueError {
        let mut set = lock(&self.inner.unresolved);
        if set.insert(coid.clone()) {
            metrics::counter!(quantum_model::metric_names::EXECUTOR_UNKNOWN_OUTCOMES_TOTAL).increment(1);
            tracing::warn!("ORDER UNKNOWN order_id={coid}: {detail}; resolving it with the venue, sending nothing");
        }
        metrics::gauge!(quantum_model::metric_names::EXECUTOR_UNKNOWN_ORDERS).set(set.len() as f64);
        VenueError::Unresolved {
            client_order_id: coid.clone(),
            detail,
        }
    }

    fn resolved(&self, coid: &OrderId, how: &str) {
        let mut set = lock(&self.inner.unresolved);
        if set.remove(coid) {
            tracing::info!("ORDER RESOLVED order_id={coid} outcome={how}");
        }
        metrics::gauge!(quantum_model::metric_names::EXECUTOR_UNKNOWN_ORDERS).set(set.len() as f64);
    }

    /// Settles a SENDING record from the venue's answers: the outcome, or the record moved to
    /// IDLE when the request was never accepted. `Ok(None)`: IDLE now, may be sent.
    async fn settle_sending(
        &self,
        ctx: &OrderContext,
        sending: &record::Sending,
    ) -> Result<Option<OrderOutcome>, VenueError> {
        match self.resolve(ctx, sending).await? {
            Resolution::Outcome(outcome) => Ok(Some(self.finish(ctx, sending.sends, outcome).await?)),
            Resolution::NeverAccepted => match self.update(ctx, sending.sends, idle_fields()).await? {
                Written::Ok => {
                    self.resolved(&ctx.client_order_id, "NOT_PLACED");
                    Ok(None)
                }
                _ => Err(VenueError::Contended(ctx.symbol.clone())),
            },
            Resolution::Pending(why) => Err(self.unresolved(&ctx.client_order_id, why)),
        }
    }

    /// Fits, records and sends a new order; `sends` is the record's count.
    async fn send(&self, order: &OrderRequest, ctx: &OrderContext, sends: u64) -> Result<Step, VenueError> {
        let coid = &order.client_order_id;
        let fitted = match self.prepare(order).await? {
            Ok(fitted) => fitted,
            Err(reason) => {
                return Ok(Step::Done(
                    self.finish(ctx, sends, OrderOutcome::Rejected { reason }).await?,
                ))
            }
        };
        let new = NewOrder {
            symbol: order.symbol.clone(),
            side: order.side,
            order_type: order.order_type,
            qty: fitted.qty,
            price: fitted.price,
            reduce_only: order.reduce_only,
            client_order_id: coid.clone(),
        };
        let mode = *lock(&self.inner.mode);
        let request = self
            .inner
            .fapi
            .prepare(Method::POST, "/fapi/v1/order", &new.params(mode));
        let mark = vec![
            sends.to_string(),
            order.symbol.to_string(),
            request.timestamp.to_string(),
            request.recv_window_ms.to_string(),
            ORDER_RECORD_TTL_SECS.to_string(),
        ];
        match self.run_script(record::MARK_SENDING_SCRIPT, coid, mark).await? {
            Written::Ok => {}
            Written::Final | Written::Moved => return Ok(Step::Again),
        }
        self.replicate_sending(ctx, sends + 1).await?;
        fail::fail_point!("executor::binance_before_send", |_| std::process::abort());
        let sending = record::Sending {
            sends: sends + 1,
            timestamp: request.timestamp,
            recv_window_ms: request.recv_window_ms,
            venue_order_id: None,
        };
        let reply: Result<OrderReply, CallError> = self.inner.fapi.send(&request).await;
        fail::fail_point!("executor::binance_after_send", |_| std::process::abort());
        match reply {
            Ok(reply) => {
                let venue_order_id = reply.order_id;
                match self.judge_reply(ctx, reply).await? {
                    // The usual case: final in its reply, one write records it.
                    Resolution::Outcome(outcome) => Ok(Step::Done(self.finish(ctx, sending.sends, outcome).await?)),
                    Resolution::Pending(why) => {
                        // Kept so the resolution asks by the venue's own id.
                        let id = vec![("venue_order_id".to_string(), venue_order_id.to_string())];
                        self.update(ctx, sending.sends, id).await?;
                        Err(self.unresolved(coid, why))
                    }
                    Resolution::NeverAccepted => Ok(Step::Again),
                }
            }
            Err(e) => self.after_failed_send(ctx, &sending, e).await,
        }
    }

    /// `REDIS_WAIT_REPLICAS`: the SENDING record just written is on the replicas, or nothing is
    /// sent. A failover that lost the record would forget a send that happened, and the order
    /// could go out twice; so when the replicas fall short the record is set back to IDLE (true:
    /// nothing left) and the plan waits like any unavailable venue.
    async fn replicate_sending(&self, ctx: &OrderContext, sends: u64) -> Result<(), VenueError> {
        let what = format!("the SENDING record of {}", ctx.client_order_id);
        match self.inner.replica_wait.after_write(&self.inner.redis, &what).await? {
            Replicated::Yes => Ok(()),
            Replicated::Short { acked } => {
                self.update(ctx, sends, idle_fields()).await?;
                Err(VenueError::Unavailable(format!(
                    "{what} is on {acked} of {} replicas after {} ms (REDIS_WAIT_REPLICAS, REDIS_WAIT_TIMEOUT_MS); \
                     not sent",
                    self.inner.replica_wait.replicas(),
                    self.inner.replica_wait.timeout_ms()
                )))
            }
        }
    }

    /// What a failed send leaves: a refusal is final; a request provably not accepted leaves
    /// the record IDLE (sent again now after a clock fix or a mode refresh, later otherwise);
    /// anything else is unknown.
    async fn after_failed_send(
        &self,
        ctx: &OrderContext,
        sending: &record::Sending,
        e: CallError,
    ) -> Result<Step, VenueError> {
        let coid = &ctx.client_order_id;
        if e.disposition == Disposition::Rejected {
            let outcome = OrderOutcome::Rejected {
                reason: e.detail.clone(),
            };
            return Ok(Step::Done(self.finish(ctx, sending.sends, outcome).await?));
        }
        if !e.disposition.not_accepted() {
            return Err(self.unresolved(coid, e.detail));
        }
        self.update(ctx, sending.sends, idle_fields()).await?;
        match e.disposition {
            Disposition::ClockSkew => {
                self.inner.fapi.resync_after_skew(&e).await;
                Ok(Step::Again)
            }
            Disposition::PositionModeMismatch => {
                let mode = self.refresh_mode().await?;
                tracing::warn!("Position mode changed at the venue: now {mode:?} ({e})");
                Ok(Step::Again)
            }
            Disposition::Fatal => Err(VenueError::Credentials(e.detail)),
            _ => Err(VenueError::Unavailable(e.detail)),
        }
    }

    /// The order as it will be sent, or why the venue would refuse it, checked before anything
    /// is sent: an unlisted symbol, an exchange filter (named), a leverage the venue refuses.
    async fn prepare(&self, order: &OrderRequest) -> Result<Result<filters::Fitted, String>, VenueError> {
        let Some(rules) = self.rules_of(&order.symbol).await? else {
            return Ok(Err(format!("{} is not listed in exchangeInfo", order.symbol)));
        };
        let mark = self.mark_of(&order.symbol).await?;
        let request = FitRequest {
            symbol: &order.symbol,
            side: order.side,
            order_type: order.order_type,
            qty: order.qty,
            limit_price: order.limit_price,
            reduce_only: order.reduce_only,
        };
        let fitted = match fit(&request, &rules, mark) {
            Ok(fitted) => fitted,
            Err(violation) => return Ok(Err(format!("exchange filter {violation}"))),
        };
        Ok(match self.ensure_leverage(&order.symbol, order.leverage).await? {
            Some(refused) => Err(refused),
            None => Ok(fitted),
        })
    }
}

/// One round of an order's flow.
enum Step {
    Done(OrderOutcome),
    /// The record moved (or a definitive "not accepted"): read it again.
    Again,
}

/// The record's fields once a send provably created nothing.
fn idle_fields() -> Vec<(String, String)> {
    vec![("state".to_string(), "IDLE".to_string())]
}

fn outcome_name(outcome: &OrderOutcome) -> &'static str {
    match outcome {
        OrderOutcome::Filled { .. } => "FILLED",
        OrderOutcome::Rejected { .. } => "REJECTED",
    }
}

/// A plan's leverage as Binance takes it: a whole number from 1 to 125 (rounded down, clamped).
pub fn venue_leverage(plan: Decimal) -> Decimal {
    plan.floor().clamp(Decimal::ONE, Decimal::from(125))
}

/// A venue failure outside the order flow.
fn venue_error(e: CallError) -> VenueError {
    match e.disposition {
        Disposition::Fatal => VenueError::Credentials(e.detail),
        _ => VenueError::Unavailable(e.detail),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding a cache lock leaves a usable cache.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Venue for BinanceVenue {
    fn name(&self) -> &'static str {
        "binance"
    }

    async fn execute(&self, order: &OrderRequest) -> Result<OrderOutcome, VenueError> {
        let ctx = OrderContext {
            client_order_id: order.client_order_id.clone(),
            plan_id: order.plan_id.clone(),
            symbol: order.symbol.clone(),
            leverage: venue_leverage(order.leverage),
        };
        for _ in 0..MAX_ROUNDS_PER_CALL {
            let step = match self.read_record(&ctx).await? {
                Record::Final(outcome) => {
                    // Resolved elsewhere (another executor, the sweep) if it was unknown here.
                    self.resolved(&ctx.client_order_id, outcome_name(&outcome));
                    Step::Done(outcome)
                }
                Record::Sending(sending) => match self.settle_sending(&ctx, &sending).await? {
                    Some(outcome) => Step::Done(outcome),
                    None => Step::Again,
                },
                record @ (Record::Absent | Record::Idle { .. }) => self.send(order, &ctx, record.sends()).await?,
            };
            if let Step::Done(outcome) = step {
                return Ok(outcome);
            }
        }
        // The record kept moving under other writers, or the venue kept refusing for a
        // reason that passes: the plan is retried.
        Err(VenueError::Contended(order.symbol.clone()))
    }

    async fn settle(
        &self,
        client_order_id: &OrderId,
        symbol: &Symbol,
        reason: &str,
    ) -> Result<OrderOutcome, VenueError> {
        let leverage = lock(&self.inner.leverage).get(symbol).copied().unwrap_or(Decimal::ONE);
        let ctx = OrderContext::from_client_order_id(client_order_id, symbol, leverage).map_err(|detail| {
            VenueError::Corrupt {
                symbol: symbol.clone(),
                detail,
            }
        })?;
        for _ in 0..MAX_ROUNDS_PER_CALL {
            let sends = match self.read_record(&ctx).await? {
                Record::Final(outcome) => {
                    self.resolved(client_order_id, outcome_name(&outcome));
                    return Ok(outcome);
                }
                Record::Sending(sending) => match self.settle_sending(&ctx, &sending).await? {
                    Some(outcome) => return Ok(outcome),
                    None => sending.sends,
                },
                record => record.sends(),
            };
            // Never accepted: refused for good, so a late execute of this id gets the refusal.
            let refusal = OrderOutcome::Rejected {
                reason: reason.to_string(),
            };
            match self.update(&ctx, sends, record::final_fields(&refusal)).await? {
                Written::Ok => {
                    self.resolved(client_order_id, "REJECTED");
                    return Ok(refusal);
                }
                Written::Final | Written::Moved => continue,
            }
        }
        Err(VenueError::Contended(symbol.clone()))
    }
}
