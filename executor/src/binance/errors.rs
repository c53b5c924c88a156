//! What a Binance reply means for an order, decided once from the HTTP status and the error
//! code, as the API documents them: the order was definitively refused, it was never accepted
//! (send again later), or its fate is unknown (resolve it before anything else).
//!
//! The rule that keeps orders single: anything that may have reached the matching engine is
//! [`Disposition::Unknown`]. Binance: "5XX ... It is important to NOT treat this as a failure
//! operation; the execution status is UNKNOWN and could have been a success"; `-1007` says the
//! same in an error body. Only replies that prove the order was not accepted may lead to a
//! re-send.

/// The class of a reply or transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The venue refused the order for good (parameters, filters, margin, reduce-only, ...).
    Rejected,
    /// Not accepted, and may pass (overload, WAF, a connection refused before sending).
    NotAccepted,
    /// `-1021`: the timestamp was outside recvWindow; not accepted. Re-measure the clock.
    ClockSkew,
    /// `429` / `-1003` / `-1015`: not accepted; back off (Retry-After).
    Throttled,
    /// `418`: the IP is banned; not accepted; send nothing until the ban ends.
    Banned,
    /// `-4061`: positionSide does not match the account's position mode; not accepted.
    PositionModeMismatch,
    /// `-4116`: an order with this client id exists already: look it up.
    DuplicateClientId,
    /// `-2013`: no such order (a query's answer).
    NotFound,
    /// Credentials refused (`401`, `-1002`, `-1022`, `-2014`, `-2015`): no retry fixes it.
    Fatal,
    /// The order may have been accepted: timeouts, 5xx, `-1000`, `-1006`, `-1007`, a reply
    /// lost or unreadable after sending.
    Unknown,
}

impl Disposition {
    /// Short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::NotAccepted => "not_accepted",
            Self::ClockSkew => "clock_skew",
            Self::Throttled => "throttled",
            Self::Banned => "banned",
            Self::PositionModeMismatch => "position_mode_mismatch",
            Self::DuplicateClientId => "duplicate_client_id",
            Self::NotFound => "not_found",
            Self::Fatal => "fatal",
            Self::Unknown => "unknown",
        }
    }

    /// Whether the request provably did not create an order.
    pub fn not_accepted(self) -> bool {
        !matches!(self, Self::Unknown | Self::DuplicateClientId)
    }
}

/// Classifies a reply by HTTP status and Binance error code (`None`: no readable code).
pub fn classify(http_status: u16, code: Option<i64>) -> Disposition {
    match (http_status, code) {
        (418, _) => Disposition::Banned,
        (429, _) | (_, Some(-1003 | -1015)) => Disposition::Throttled,
        (401, _) | (_, Some(-1002 | -1022 | -2014 | -2015)) => Disposition::Fatal,
        // -5028: outside recvWindow at the matching engine; not accepted either.
        (_, Some(-1021 | -5028)) => Disposition::ClockSkew,
        (_, Some(-4061)) => Disposition::PositionModeMismatch,
        (_, Some(-4116)) => Disposition::DuplicateClientId,
        (_, Some(-2013)) => Disposition::NotFound,
        // "Unknown error", "Internal error", "Timeout waiting for response from backend
        // server. Send status unknown; execution status unknown."
        (_, Some(-1000 | -1001 | -1006 | -1007)) => Disposition::Unknown,
        // Server busy: the request was turned away before processing.
        (_, Some(-1008)) => Disposition::NotAccepted,
        (500..=599, _) => Disposition::Unknown,
        // The WAF refused the request before it reached the API.
        (403, _) => Disposition::NotAccepted,
        // 408: "timeout waiting for response from the backend server"; a 4xx without a
        // Binance code did not come from the API (a proxy's page): either may have been accepted.
        (408, _) | (400..=499, None) => Disposition::Unknown,
        // Every other documented code is a refusal of this request: bad parameters (-11xx),
        // order refused (-2010, -2018, -2019, -2020, -2021, -2022, -2027, -2028), filters and
        // order rules (-40xx, -41xx, -4164), FOK/GTX expiry (-5021, -5022).
        (400..=499, _) => Disposition::Rejected,
        // A 2xx with an error body, or a status the API does not document: cannot tell.
        _ => Disposition::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Disposition::*;

    #[test]
    fn documented_replies_map_to_their_disposition() {
        let rows: [(u16, Option<i64>, Disposition); 25] = [
            (400, Some(-2022), Rejected), // ReduceOnly Order is rejected.
            (400, Some(-2019), Rejected), // Margin is insufficient.
            (400, Some(-4164), Rejected), // Order's notional must be no smaller than 5.
            (400, Some(-1111), Rejected), // Precision is over the maximum defined.
            (400, Some(-1102), Rejected), // Mandatory parameter was not sent.
            (400, Some(-4003), Rejected), // Quantity less than or equal to zero.
            (400, Some(-5021), Rejected), // FOK order rejected.
            (400, Some(-1021), ClockSkew),
            (400, Some(-5028), ClockSkew),
            (408, None, Unknown),
            (400, None, Unknown), // a proxy's error page
            (400, Some(-4061), PositionModeMismatch),
            (400, Some(-4116), DuplicateClientId),
            (400, Some(-2013), NotFound),
            (400, Some(-1022), Fatal),
            (401, Some(-2015), Fatal),
            (429, Some(-1003), Throttled),
            (400, Some(-1015), Throttled),
            (418, Some(-1003), Banned),
            (403, None, NotAccepted),
            (503, Some(-1008), NotAccepted),
            (408, Some(-1007), Unknown),
            (500, Some(-1000), Unknown),
            (502, None, Unknown),
            (200, Some(-1006), Unknown),
        ];
        for (status, code, expected) in rows {
            assert_eq!(classify(status, code), expected, "{status} {code:?}");
        }
    }

    #[test]
    fn only_unknown_and_duplicate_may_have_created_an_order() {
        for d in [
            Rejected,
            NotAccepted,
            ClockSkew,
            Throttled,
            Banned,
            PositionModeMismatch,
            NotFound,
            Fatal,
        ] {
            assert!(d.not_accepted(), "{d:?}");
        }
        assert!(!Unknown.not_accepted());
        assert!(!DuplicateClientId.not_accepted());
    }
}
