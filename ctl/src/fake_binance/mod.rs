//! `quantumctl fake-binance`: a local Binance USD-M futures test server for the live venue, since
//! tests cannot reach Binance. It follows Binance's documented behaviour for the endpoints the
//! executor uses: it verifies API keys, HMAC signatures, `timestamp` and `recvWindow`; enforces
//! the exchange filters and the position mode; keeps orders, trades, positions and the balance;
//! answers with the documented error codes; counts request weight and orders in the
//! `X-MBX-USED-WEIGHT-1M` / `X-MBX-ORDER-COUNT-*` headers; answers `429` past the weight limit and
//! bans (`418`) a client that sends again before its `Retry-After` (past `IN_FLIGHT_GRACE_MS`).
//!
//! Faults are injected on request ([`Faults`]): accept an order then time out or answer 5xx,
//! 429 and 418 bursts, partial fills, clock skew, a duplicate client id. The control endpoints
//! `GET /fake/state` (orders, trades, positions, counters) and `POST /fake/faults` (a JSON
//! [`Faults`]) let a test or an operator drive it from outside.
//!
//! Layout: `book` the account and the order rules (pure); this file the HTTP layer.

pub mod book;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use quantum_intent_executor::binance::sign::verify;
use quantum_model::time::now_ms;

pub use book::{ApiError, Book};

/// Faults to inject; counts apply to the next requests of their kind, then run out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// New orders that are placed, then answered only after `reply_delay_ms` (the client
    /// times out first): the order exists, the client cannot know.
    pub accept_then_timeout: u32,
    /// New orders that are placed, then answered `503 {-1007 ... execution status unknown}`.
    pub accept_then_5xx: u32,
    /// Requests answered `429 {-1003}` with `Retry-After: retry_after_secs`.
    pub throttle: u32,
    /// Requests answered `418` (banned) for `ban_secs`.
    pub ban: u32,
    /// New orders answered `-4116 clientOrderId is duplicated`, placing nothing.
    pub duplicate_client_id: u32,
    /// Fill MARKET orders in two trades and IOC limits by half.
    pub partial_fills: bool,
    /// The server clock runs this far ahead of the local one (ms; negative: behind).
    pub clock_skew_ms: i64,
    pub retry_after_secs: u64,
    pub ban_secs: u64,
    pub reply_delay_ms: u64,
}

/// What the server saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub new_order_requests: u64,
    pub orders_placed: u64,
    pub bad_signatures: u64,
    pub outside_recv_window: u64,
    pub throttled: u64,
    pub banned: u64,
    /// Requests that came while the client should have been backing off or banned.
    pub ignored_backoff: u64,
}

/// Settings of a fake venue.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub api_key: String,
    pub secret: String,
    /// Symbol → mark price.
    pub marks: BTreeMap<String, Decimal>,
    pub wallet_usdt: Decimal,
    pub dual_side: bool,
    /// Request weight per minute before `429`.
    pub weight_limit: u64,
}

impl FakeConfig {
    /// A one-way account with 100,000 USDT trading `marks`.
    pub fn new(api_key: &str, secret: &str, marks: BTreeMap<String, Decimal>) -> Self {
        Self {
            api_key: api_key.to_string(),
            secret: secret.to_string(),
            marks,
            wallet_usdt: Decimal::from(100_000),
            dual_side: false,
            weight_limit: 2400,
        }
    }
}

struct Inner {
    book: Book,
    faults: Faults,
    counters: Counters,
    throttled_until: u64,
    banned_until: u64,
    /// When the last 429 or 418 was issued: see [`IN_FLIGHT_GRACE_MS`].
    limited_at: u64,
    /// (minute, weight used in it).
    weight: (u64, u64),
    /// Order times of the last minute (the order-count headers).
    order_times: Vec<u64>,
}

struct Server {
    config: FakeConfig,
    inner: Mutex<Inner>,
}

/// A running fake venue.
pub struct FakeBinance {
    pub addr: SocketAddr,
    server: Arc<Server>,
    shutdown: CancellationToken,
}

impl FakeBinance {
    /// Serves on `addr` (port 0: any free port) until dropped.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(config: FakeConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let mut book = Book::new(config.marks.clone(), config.wallet_usdt);
        book.dual_side = config.dual_side;
        let server = Arc::new(Server {
            config,
            inner: Mutex::new(Inner::new(book)),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let app = axum::Router::new().fallback(handle).with_state(server.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                eprintln!("fake-binance stopped: {e}");
            }
        });
        Ok(Self { addr, server, shutdown })
    }

    /// The base URL (`BINANCE_FAPI_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the faults to inject.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Works on the account (seed positions, read orders).
    pub fn with_book<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        f(&mut self.lock().book)
    }

    /// What the server saw so far.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// How many orders the venue holds per client order id.
    pub fn orders_per_client_id(&self) -> BTreeMap<String, usize> {
        let inner = self.lock();
        let mut out = BTreeMap::new();
        for o in &inner.book.orders {
            *out.entry(o.client_order_id.clone()).or_default() += 1;
        }
        out
    }

    /// One line per client order id the venue holds more than one order under (none: no
    /// order was placed twice).
    pub fn doubled_orders(&self) -> Vec<String> {
        self.orders_per_client_id()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, n)| format!("the venue holds {n} orders under client id {id}"))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.server
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FakeBinance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A reply: status, headers, JSON body.
struct Reply {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Option<Duration>,
}

impl Reply {
    fn ok(value: Value) -> Self {
        Self {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: value.to_string(),
            delay: None,
        }
    }

    fn error(e: &ApiError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            headers: Vec::new(),
            body: e.body(),
            delay: None,
        }
    }
}

/// The request weight of an endpoint, as documented.
fn weight(method: &Method, path: &str, params: &BTreeMap<String, String>) -> u64 {
    match (method.as_str(), path) {
        ("POST", "/fapi/v1/order") => 0,
        ("GET", "/fapi/v1/premiumIndex") if !params.contains_key("symbol") => 10,
        ("GET", "/fapi/v1/openOrders") if !params.contains_key("symbol") => 40,
        ("GET", "/fapi/v1/positionSide/dual") => 30,
        ("GET", "/fapi/v1/userTrades" | "/fapi/v2/positionRisk" | "/fapi/v2/account") => 5,
        _ => 1,
    }
}

fn parse_query(raw: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(raw.as_bytes()).into_owned().collect()
}

async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = server.respond(&method, &uri, &headers, &body);
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::builder()
        .status(reply.status)
        .header("content-type", "application/json");
    for (k, v) in reply.headers {
        response = response.header(k, v);
    }
    response
        .body(Body::from(reply.body))
        .unwrap_or_else(|_| Response::new(Body::from("{}")))
}

impl Server {
    fn respond(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Reply {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = uri.path();
        if path.starts_with("/fake/") {
            return control(&mut inner, method, path, body);
        }
        let raw_query = uri.query().unwrap_or_default().to_string();
        let raw_body = String::from_utf8_lossy(body).to_string();
        let mut params = parse_query(&raw_query);
        params.extend(parse_query(&raw_body));
        let now = now_ms();
        let server_now = now.saturating_add_signed(inner.faults.clock_skew_ms);
        inner.counters.requests += 1;
        if let Some(reply) = inner.limits(now) {
            return reply;
        }
        let minute = now / 60_000;
        if inner.weight.0 != minute {
            inner.weight = (minute, 0);
        }
        inner.weight.1 += weight(method, path, &params);
        let used = inner.weight.1;
        let mut reply = if used > self.config.weight_limit {
            inner.throttle(now, 60, format!("Too many requests; current limit is {} requests per minute. Please use the websocket for live updates to avoid polling the API.", self.config.weight_limit))
        } else {
            let signed = !matches!(
                path,
                "/fapi/v1/time" | "/fapi/v1/exchangeInfo" | "/fapi/v1/premiumIndex" | "/fapi/v1/ping"
            );
            let checked = if signed {
                self.authenticate(&mut inner, headers, &raw_query, &raw_body, &params, server_now)
            } else {
                Ok(())
            };
            match checked {
                Ok(()) => inner.route(method, path, &params, server_now),
                Err(e) => Reply::error(&e),
            }
        };
        reply.headers.push(("X-MBX-USED-WEIGHT-1M", used.to_string()));
        if method == Method::POST && path == "/fapi/v1/order" {
            inner.order_times.retain(|t| now - t < 60_000);
            inner.order_times.push(now);
            let last_10s = inner.order_times.iter().filter(|t| now - **t < 10_000).count();
            reply.headers.push(("X-MBX-ORDER-COUNT-10S", last_10s.to_string()));
            reply
                .headers
                .push(("X-MBX-ORDER-COUNT-1M", inner.order_times.len().to_string()));
        }
        reply
    }

    /// API key, signature, timestamp and recvWindow, as Binance checks them.
    fn authenticate(
        &self,
        inner: &mut Inner,
        headers: &HeaderMap,
        raw_query: &str,
        raw_body: &str,
        params: &BTreeMap<String, String>,
        server_now: u64,
    ) -> Result<(), ApiError> {
        match headers.get("x-mbx-apikey").and_then(|v| v.to_str().ok()) {
            None => return Err(ApiError::new(401, -2014, "API-key format invalid.")),
            Some(key) if key != self.config.api_key => {
                return Err(ApiError::new(
                    401,
                    -2015,
                    "Invalid API-key, IP, or permissions for action.",
                ))
            }
            Some(_) => {}
        }
        // totalParams: the query string then the body, the signature parameter left out.
        let total = format!("{raw_query}{raw_body}");
        let payload: Vec<&str> = total.split('&').filter(|kv| !kv.starts_with("signature=")).collect();
        let signature = params.get("signature").cloned().unwrap_or_default();
        if !verify(&self.config.secret, &payload.join("&"), &signature) {
            inner.counters.bad_signatures += 1;
            return Err(ApiError::new(400, -1022, "Signature for this request is not valid."));
        }
        let timestamp: u64 = params.get("timestamp").and_then(|t| t.parse().ok()).ok_or_else(|| {
            ApiError::new(
                400,
                -1102,
                "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
            )
        })?;
        let recv_window: u64 = params.get("recvWindow").and_then(|t| t.parse().ok()).unwrap_or(5000);
        if timestamp >= server_now + 1000 {
            inner.counters.outside_recv_window += 1;
            return Err(ApiError::new(
                400,
                -1021,
                "Timestamp for this request was 1000ms ahead of the server's time.",
            ));
        }
        if server_now.saturating_sub(timestamp) > recv_window {
            inner.counters.outside_recv_window += 1;
            return Err(ApiError::new(
                400,
                -1021,
                "Timestamp for this request is outside of the recvWindow.",
            ));
        }
        Ok(())
    }
}

/// How long after a 429 or 418 a request still counts as sent before the client could have
/// read it (its tasks call the venue concurrently: a position snapshot may be on the wire while
/// an order's 429 is). Such a request is refused like any in the window, but it is not counted
/// as ignoring the back-off, and a 429 is not escalated to a ban for it: Binance bans clients
/// that repeatedly fail to back off, not a request that crossed the 429 on the wire.
const IN_FLIGHT_GRACE_MS: u64 = 100;

/// The message of an injected 429 (`Faults::throttle`) and of the 429s that follow it.
const INJECTED_THROTTLE_MSG: &str = "Too many requests; current limit is 2400 requests per minute.";

impl Inner {
    /// A venue holding `book`, with no faults, limits or counts yet.
    fn new(book: Book) -> Self {
        Self {
            book,
            faults: Faults::default(),
            counters: Counters::default(),
            throttled_until: 0,
            banned_until: 0,
            limited_at: 0,
            weight: (0, 0),
            order_times: Vec::new(),
        }
    }

    /// A ban or a back-off in force, or an injected one.
    fn limits(&mut self, now: u64) -> Option<Reply> {
        let in_flight = now.saturating_sub(self.limited_at) < IN_FLIGHT_GRACE_MS;
        if self.banned_until > now {
            if !in_flight {
                self.counters.ignored_backoff += 1;
            }
            return Some(self.banned(now));
        }
        if self.throttled_until > now {
            if in_flight {
                let secs = (self.throttled_until - now).div_ceil(1000);
                return Some(self.throttled(secs, INJECTED_THROTTLE_MSG.into()));
            }
            // Binance bans clients that do not back off after a 429.
            self.counters.ignored_backoff += 1;
            let secs = self.faults.ban_secs.max(1);
            self.banned_until = now + secs * 1000;
            self.limited_at = now;
            return Some(self.banned(now));
        }
        if self.faults.ban > 0 {
            self.faults.ban -= 1;
            self.banned_until = now + self.faults.ban_secs.max(1) * 1000;
            self.limited_at = now;
            return Some(self.banned(now));
        }
        if self.faults.throttle > 0 {
            self.faults.throttle -= 1;
            let secs = self.faults.retry_after_secs.max(1);
            return Some(self.throttle(now, secs, INJECTED_THROTTLE_MSG.into()));
        }
        None
    }

    fn banned(&mut self, now: u64) -> Reply {
        self.counters.banned += 1;
        let secs = (self.banned_until - now).div_ceil(1000);
        let mut reply = Reply::error(&ApiError::new(
            418,
            -1003,
            format!(
                "Way too many requests; IP banned until {}. Please use the websocket for live updates to avoid bans.",
                self.banned_until
            ),
        ));
        reply.headers.push(("Retry-After", secs.to_string()));
        reply
    }

    fn throttle(&mut self, now: u64, secs: u64, msg: String) -> Reply {
        self.throttled_until = now + secs * 1000;
        self.limited_at = now;
        self.throttled(secs, msg)
    }

    /// A 429 for a back-off of `secs` already in force.
    fn throttled(&mut self, secs: u64, msg: String) -> Reply {
        self.counters.throttled += 1;
        let mut reply = Reply::error(&ApiError::new(429, -1003, msg));
        reply.headers.push(("Retry-After", secs.to_string()));
        reply
    }

    fn route(&mut self, method: &Method, path: &str, p: &BTreeMap<String, String>, now: u64) -> Reply {
        let result = match (method.as_str(), path) {
            ("GET", "/fapi/v1/ping") => Ok(json!({})),
            ("GET", "/fapi/v1/time") => Ok(json!({ "serverTime": now })),
            ("GET", "/fapi/v1/exchangeInfo") => Ok(self.book.exchange_info(now)),
            ("GET", "/fapi/v1/premiumIndex") => Ok(self.premium_index(p, now)),
            ("GET", "/fapi/v1/positionSide/dual") => Ok(json!({ "dualSidePosition": self.book.dual_side })),
            ("POST", "/fapi/v1/positionSide/dual") => self.set_dual(p),
            ("POST", "/fapi/v1/leverage") => self.set_leverage(p),
            ("POST", "/fapi/v1/order") => return self.new_order(p, now),
            ("GET", "/fapi/v1/order") => self.query_order(p),
            ("GET", "/fapi/v1/openOrders") => Ok(json!([])),
            ("GET", "/fapi/v1/userTrades") => self.user_trades(p),
            ("GET", "/fapi/v2/positionRisk") => Ok(self.book.position_risk()),
            ("GET", "/fapi/v2/account") => Ok(self.book.account()),
            _ => Err(ApiError::new(
                404,
                -5000,
                format!("Path {path}, Method {method} is invalid"),
            )),
        };
        match result {
            Ok(value) => Reply::ok(value),
            Err(e) => Reply::error(&e),
        }
    }

    fn new_order(&mut self, p: &BTreeMap<String, String>, now: u64) -> Reply {
        self.counters.new_order_requests += 1;
        if self.faults.duplicate_client_id > 0 {
            self.faults.duplicate_client_id -= 1;
            return Reply::error(&ApiError::new(400, -4116, "clientOrderId is duplicated"));
        }
        self.book.partial_fills = self.faults.partial_fills;
        let order = match self.book.place(p, now) {
            Ok(order) => order,
            Err(e) => return Reply::error(&e),
        };
        self.counters.orders_placed += 1;
        if self.faults.accept_then_timeout > 0 {
            self.faults.accept_then_timeout -= 1;
            let mut reply = Reply::ok(order.to_json());
            reply.delay = Some(Duration::from_millis(self.faults.reply_delay_ms.max(1000)));
            return reply;
        }
        if self.faults.accept_then_5xx > 0 {
            self.faults.accept_then_5xx -= 1;
            return Reply::error(&ApiError::new(
                503,
                -1007,
                "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
            ));
        }
        Reply::ok(order.to_json())
    }

    fn query_order(&self, p: &BTreeMap<String, String>) -> Result<Value, ApiError> {
        let symbol = book::mandatory(p, "symbol")?;
        let order_id = p.get("orderId").and_then(|v| v.parse().ok());
        let client = p.get("origClientOrderId").map(String::as_str);
        if order_id.is_none() && client.is_none() {
            return Err(ApiError::new(
                400,
                -1102,
                "Param 'orderId' or 'origClientOrderId' must be sent, but both were empty/null!",
            ));
        }
        self.book
            .find(symbol, order_id, client)
            .map(book::Order::to_json)
            .ok_or_else(|| ApiError::new(400, -2013, "Order does not exist."))
    }

    fn user_trades(&self, p: &BTreeMap<String, String>) -> Result<Value, ApiError> {
        let symbol = book::mandatory(p, "symbol")?;
        let order_id: Option<u64> = p.get("orderId").and_then(|v| v.parse().ok());
        let start: u64 = p.get("startTime").and_then(|v| v.parse().ok()).unwrap_or(0);
        let from_id: u64 = p.get("fromId").and_then(|v| v.parse().ok()).unwrap_or(0);
        let limit: usize = p.get("limit").and_then(|v| v.parse().ok()).unwrap_or(500).min(1000);
        let trades: Vec<Value> = self
            .book
            .trades
            .iter()
            .filter(|t| {
                t.symbol == symbol && order_id.is_none_or(|id| t.order_id == id) && t.time >= start && t.id >= from_id
            })
            .take(limit)
            .map(book::Trade::to_json)
            .collect();
        Ok(Value::Array(trades))
    }

    fn premium_index(&self, p: &BTreeMap<String, String>, now: u64) -> Value {
        let one = |(s, m): (&String, &Decimal)| {
            json!({"symbol": s, "markPrice": m.normalize().to_string(), "indexPrice": m.normalize().to_string(),
                   "lastFundingRate": "0.0001", "nextFundingTime": now + 3_600_000, "time": now})
        };
        match p.get("symbol") {
            Some(s) => self.book.marks.get_key_value(s).map(one).unwrap_or(json!({})),
            None => Value::Array(self.book.marks.iter().map(one).collect()),
        }
    }

    fn set_leverage(&mut self, p: &BTreeMap<String, String>) -> Result<Value, ApiError> {
        let symbol = p.get("symbol").cloned().unwrap_or_default();
        if !self.book.marks.contains_key(&symbol) {
            return Err(ApiError::new(400, -1121, "Invalid symbol."));
        }
        let leverage: u32 = p
            .get("leverage")
            .and_then(|v| v.parse().ok())
            .filter(|l| (1..=125).contains(l))
            .ok_or_else(|| ApiError::new(400, -4028, "Leverage is not valid"))?;
        self.book.leverage.insert(symbol.clone(), leverage);
        Ok(json!({"leverage": leverage, "maxNotionalValue": "1000000", "symbol": symbol}))
    }

    fn set_dual(&mut self, p: &BTreeMap<String, String>) -> Result<Value, ApiError> {
        let dual = p.get("dualSidePosition").map(String::as_str) == Some("true");
        if self.book.legs.values().any(|l| !l.amt.is_zero()) {
            return Err(ApiError::new(
                400,
                -4068,
                "Position side cannot be changed if there exists position.",
            ));
        }
        self.book.dual_side = dual;
        Ok(json!({"code": 200, "msg": "success"}))
    }
}

/// The control endpoints.
fn control(inner: &mut Inner, method: &Method, path: &str, body: &[u8]) -> Reply {
    match (method.as_str(), path) {
        ("GET", "/fake/state") => Reply::ok(json!({
            "orders": inner.book.orders,
            "trades": inner.book.trades,
            "positions": inner.book.legs.iter().map(|((s, side), l)| json!({"symbol": s, "positionSide": side, "amt": l.amt, "entry": l.entry})).collect::<Vec<_>>(),
            "wallet": inner.book.wallet,
            "dual_side": inner.book.dual_side,
            "faults": inner.faults,
            "counters": inner.counters,
        })),
        ("POST", "/fake/faults") => match serde_json::from_slice::<Faults>(body) {
            Ok(faults) => {
                inner.faults = faults;
                Reply::ok(json!(inner.faults))
            }
            Err(e) => Reply::error(&ApiError::new(400, -1, format!("not a faults object: {e}"))),
        },
        _ => Reply::error(&ApiError::new(
            404,
            -5000,
            format!("Path {path}, Method {method} is invalid"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(faults: Faults) -> Inner {
        Inner {
            faults,
            ..Inner::new(Book::new(BTreeMap::new(), Decimal::from(1000)))
        }
    }

    fn status(reply: Option<Reply>) -> Option<u16> {
        reply.map(|r| r.status.as_u16())
    }

    #[test]
    fn a_request_that_crossed_a_429_on_the_wire_is_refused_but_not_banned() {
        let mut venue = inner(Faults {
            throttle: 1,
            retry_after_secs: 1,
            ..Faults::default()
        });
        assert_eq!(status(venue.limits(10_000)), Some(429));
        // Sent before the 429 could have reached the client.
        assert_eq!(status(venue.limits(10_000 + IN_FLIGHT_GRACE_MS - 1)), Some(429));
        assert_eq!((venue.counters.ignored_backoff, venue.counters.banned), (0, 0));
        // Sent after: the client ignored the back-off, and is banned.
        assert_eq!(status(venue.limits(10_000 + IN_FLIGHT_GRACE_MS)), Some(418));
        assert_eq!((venue.counters.ignored_backoff, venue.counters.banned), (1, 1));
        // The ban's own grace, then every request in the ban counts again.
        assert_eq!(status(venue.limits(10_000 + IN_FLIGHT_GRACE_MS + 1)), Some(418));
        assert_eq!(venue.counters.ignored_backoff, 1);
        assert_eq!(status(venue.limits(10_000 + 2 * IN_FLIGHT_GRACE_MS)), Some(418));
        assert_eq!(venue.counters.ignored_backoff, 2);
        // Once the ban is over, requests pass.
        assert_eq!(status(venue.limits(10_000 + IN_FLIGHT_GRACE_MS + 1000)), None);
    }
}
