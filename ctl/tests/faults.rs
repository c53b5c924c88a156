//! The fault suite's short form (scripts/faults.sh runs the full one): two instances of every
//! service under a flow of intents, SIGKILLs at random, a bridge paused past the reclaim age, a
//! Redis restart and a poison entry per stream, then every exactly-once invariant.

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
    };
    let report = run(&plan, dir.path()).await.expect("the suite runs");
    let text = report.render();
    assert_eq!(report.kills, 16, "{text}");
    assert_eq!((report.pauses, report.redis_restarts), (1, 1), "{text}");
    // A chunk whose reply the Redis restart cut off may land twice: more intents, never fewer.
    assert!(report.checked.intents >= 500, "{text}");
    assert!(report.checked.fills > 0, "{text}");
    assert_eq!(report.checked.invariants.len(), 6, "{text}");
    assert!(report.passed(), "{text}");
}
