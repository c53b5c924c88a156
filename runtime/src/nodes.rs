//! Commands about one node's own state (SCAN, INFO, WAIT) on a Redis Cluster: such a command
//! answers for the node it reaches, so it is sent to every primary.
//!
//! Each primary is reached through the slot of its first range (`ClusterHash::Custom`), on the
//! same client and so the same connection as the keyed commands sent to it, which `WAIT` needs
//! (it counts the replicas holding this connection's writes). On one server there is one
//! target, reached as any command is.

use fred::prelude::*;
use fred::types::{ClusterHash, Value};

/// Where a per-node command goes: a name for log lines and how to route to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `host:port` of a cluster primary; empty on one server.
    pub name: String,
    pub route: ClusterHash,
}

impl Node {
    /// `" on <host:port>"` for a cluster's node, nothing on one server.
    pub fn suffix(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            format!(" on {}", self.name)
        }
    }
}

/// Every primary of the cluster `client` is connected to (from its routing table), or the one
/// server.
pub fn primaries(client: &Client) -> Vec<Node> {
    if !client.is_clustered() {
        return vec![Node {
            name: String::new(),
            route: ClusterHash::FirstKey,
        }];
    }
    let Some(routing) = client.cached_cluster_state() else {
        return Vec::new();
    };
    let mut nodes: Vec<Node> = Vec::new();
    for range in routing.slots() {
        let name = range.primary.to_string();
        if !nodes.iter().any(|n| n.name == name) {
            nodes.push(Node {
                name,
                route: ClusterHash::Custom(range.start),
            });
        }
    }
    nodes
}

/// Queues on `pipeline` the reads of `keys` (strings), one `MGET` per slot group (one on a
/// single server, one per slot on a cluster, which refuses a cross-slot `MGET`); read the
/// replies back with [`take_mget`] and the groups this returns.
///
/// # Errors
/// A command could not be queued.
pub async fn queue_mget<C: KeysInterface + Sync>(
    pipeline: &C,
    client: &Client,
    keys: &[String],
) -> Result<Vec<Vec<usize>>, Error> {
    let groups = slot_groups(client, keys);
    for group in &groups {
        let keys: Vec<&str> = group.iter().map(|&i| keys[i].as_str()).collect();
        pipeline.mget::<(), _>(keys).await?;
    }
    Ok(groups)
}

/// The values [`queue_mget`] read, in the order of its keys (`len` of them), from the next
/// replies of `replies`.
///
/// # Errors
/// A read's error.
pub fn take_mget(
    groups: &[Vec<usize>],
    len: usize,
    replies: &mut impl Iterator<Item = Result<Value, Error>>,
) -> Result<Vec<Option<String>>, Error> {
    Ok(take_grouped(groups, len, replies)?
        .iter()
        .map(crate::reply::opt_text)
        .collect())
}

/// The items of one script (or command) per slot group, each answering an array in its
/// group's order, put back in the order of the `len` keys the groups were made from, from the
/// next replies of `replies` (an item no reply covers is nil).
///
/// # Errors
/// A group's error.
pub fn take_grouped(
    groups: &[Vec<usize>],
    len: usize,
    replies: &mut impl Iterator<Item = Result<Value, Error>>,
) -> Result<Vec<Value>, Error> {
    let mut values = vec![Value::Null; len];
    for group in groups {
        let reply = replies.next().unwrap_or(Ok(Value::Null))?;
        for (&i, value) in group.iter().zip(reply.into_array()) {
            values[i] = value;
        }
    }
    Ok(values)
}

/// Reads `keys` (strings) as one `MGET` would, on one server or a cluster.
///
/// # Errors
/// Redis refused a read.
pub async fn mget(client: &Client, keys: &[String]) -> Result<Vec<Option<String>>, Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = client.pipeline();
    let groups = queue_mget(&pipeline, client, keys).await?;
    let mut replies = pipeline.try_all::<Value>().await.into_iter();
    take_mget(&groups, keys.len(), &mut replies)
}

/// `keys`' positions grouped so each group can go in one script: by hash slot on a cluster,
/// all together on one server (where a script may take any keys). Groups keep the keys' order.
pub fn slot_groups(client: &Client, keys: &[String]) -> Vec<Vec<usize>> {
    if keys.is_empty() {
        return Vec::new();
    }
    if !client.is_clustered() {
        return vec![(0..keys.len()).collect()];
    }
    // Keyed by slot, kept in first-seen order: a batch of replay markers is one slot per key.
    let mut position: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let at = *position.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(i);
    }
    groups
}
