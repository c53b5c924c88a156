//! Redis settings the exactly-once records depend on, checked at each service's start.
//!
//! The dedup records (replay markers, answered markers, order records, applied-fill sets,
//! reservations) are ordinary keys. Under an eviction policy Redis may drop them when memory is
//! short, and a replay would then be applied again; without the AOF a Redis crash forgets the
//! writes since the last snapshot while the services have moved on. Neither can be fixed from
//! here, so the services say so loudly at start. `INFO` is readable by every service's ACL
//! user (CONFIG is not), so the check needs no extra right.

use fred::prelude::*;

/// What is unsafe in an `INFO memory` + `INFO persistence` reply, one sentence each.
pub fn durability_warnings(info: &str) -> Vec<String> {
    let field = |name: &str| {
        info.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim())
    };
    let mut warnings = Vec::new();
    match field("maxmemory_policy") {
        Some("noeviction") | None => {}
        Some(policy) => warnings.push(format!(
            "Redis maxmemory-policy is {policy}: when memory runs short Redis may evict the \
             dedup records (replay markers, order records, applied-fill sets) and a replay could \
             then be applied twice; set maxmemory-policy noeviction"
        )),
    }
    if field("aof_enabled") == Some("0") {
        warnings.push(
            "Redis AOF is off (appendonly no): a Redis crash loses every write since the last \
             snapshot while the services have moved on; set appendonly yes (appendfsync always \
             or everysec)"
                .to_string(),
        );
    }
    warnings
}

/// Logs [`durability_warnings`] for the server `client` talks to (each primary of a cluster);
/// a server that refuses `INFO` is noted, not fatal.
pub async fn check(client: &Client) {
    for node in crate::nodes::primaries(client) {
        match info(client, &node, "memory").await {
            Ok(memory) => match info(client, &node, "persistence").await {
                Ok(persistence) => {
                    for warning in durability_warnings(&format!("{memory}\n{persistence}")) {
                        tracing::warn!("REDIS_SETTINGS {warning}{}", node.suffix());
                    }
                }
                Err(e) => not_checked(&node, &e),
            },
            Err(e) => not_checked(&node, &e),
        }
    }
}

fn not_checked(node: &crate::nodes::Node, e: &Error) {
    tracing::info!(
        "Cannot read Redis' memory and persistence settings{} ({e}); not checked",
        node.suffix()
    );
}

/// `INFO <section>` of one node.
///
/// # Errors
/// Redis refused or did not answer.
pub async fn info(client: &Client, node: &crate::nodes::Node, section: &str) -> Result<String, Error> {
    let command = fred::types::CustomCommand::new("INFO", node.route.clone(), false);
    let reply: fred::types::Value = client.custom(command, vec![section.to_string()]).await?;
    Ok(reply.as_string().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_and_a_missing_aof_are_reported() {
        let rows: [(&str, usize); 5] = [
            ("maxmemory_policy:noeviction\r\naof_enabled:1\r\n", 0),
            ("maxmemory_policy:allkeys-lru\r\naof_enabled:1\r\n", 1),
            ("maxmemory_policy:volatile-ttl\r\naof_enabled:0\r\n", 2),
            ("maxmemory_policy:noeviction\r\naof_enabled:0\r\n", 1),
            ("", 0),
        ];
        for (info, expected) in rows {
            assert_eq!(durability_warnings(info).len(), expected, "{info:?}");
        }
        assert!(durability_warnings("maxmemory_policy:allkeys-lru")[0].contains("allkeys-lru"));
    }
}
