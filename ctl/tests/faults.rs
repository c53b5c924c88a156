//! The fault suite's short form (scripts/faults.sh runs the full one): two instances of every
//! service under a flow of intents, SIGKILLs at random, a bridge paused past the reclaim age, a
//! Redis restart and a poison entry per stream, then every exactly-once invariant.

use quantum_model::shards::StreamShards;
use quantumctl::demo::DemoVenue;
use quantumctl::faults::{run, FaultPlan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariants_hold_under_kills_pauses_a_redis_restart_and_poison() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan {
        kills: 16,
        intents: 500,
        rate: 100,
        replicas: 2,
        seed: 11,
        venue: DemoVenue::Paper,
        cluster: false,
        shards: StreamShards::ONE,
    };
    let report = run(&plan, dir.path()).await.expect("the suite runs");
    let text = report.render();
    assert_eq!(report.kills, 16, "{text}");
    assert_eq!((report.pauses, report.redis_restarts), (1, 1), "{text}");
    // A chunk whose reply the Redis restart cut off may land twice: more intents, never fewer.
    assert!(report.checked.intents >= 500, "{text}");
    assert!(report.checked.fills > 0, "{text}");
    assert_eq!(report.checked.invariants.len(), 7, "{text}");
    assert!(report.passed(), "{text}");
}

/// The same on the live venue against a fake Binance that also fails between the kills: no
/// client order id twice at the venue, each venue trade one fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariants_hold_on_the_live_venue_under_kills_and_venue_faults() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan {
        kills: 16,
        intents: 400,
        rate: 100,
        replicas: 2,
        seed: 13,
        venue: DemoVenue::Live,
        cluster: false,
        shards: StreamShards::ONE,
    };
    let report = run(&plan, dir.path()).await.expect("the suite runs");
    let text = report.render();
    assert_eq!(report.kills, 16, "{text}");
    assert!(report.checked.fills > 0, "{text}");
    assert_eq!(report.checked.invariants.len(), 8, "{text}");
    assert!(
        text.contains("PASS  the venue holds each client order id once"),
        "{text}"
    );
    assert!(report.passed(), "{text}");
}
