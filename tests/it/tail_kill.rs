//! `kill -9` while the bridge reads: after a restart nothing is lost, and
//! no record comes out more often than once per kill (only what was not
//! yet checkpointed is read again).

use std::fs;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::tail_harness::{lines, uuids, Env};

#[test]
fn kill_9_while_reading_loses_nothing() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut env = Env::new("access.log*", "");
    env.start();
    let mut written = Vec::new();
    let mut kills = 0;
    for round in 0..12 {
        let ids = uuids(&format!("k{round}"), rng.random_range(500..4000));
        env.append("access.log", &lines(&ids));
        written.extend(ids);
        if round % 4 == 3 {
            fs::rename(env.path("access.log"), env.path(&format!("access.log.{round}"))).unwrap();
        }
        if round % 3 == 1 {
            // Kill at a random point of the reading: once some of this
            // round's records came out, or right away.
            if rng.random_bool(0.5) {
                env.wait_any();
            }
            env.kill9();
            kills += 1;
            env.start();
        }
    }
    let got = env.wait_for(&written);
    env.settle();
    let got_after = env.delivered();
    assert!(got_after.len() >= got.len());
    let dups: usize = got_after.values().map(|n| n - 1).sum();
    let max = got_after.values().copied().max().unwrap_or(0);
    assert!(max <= 1 + kills, "a record came out {max} times after {kills} kills");
    eprintln!("{} records written, {dups} duplicates after {kills} kill -9", written.len());
    env.stop();
    // A clean restart after that adds nothing.
    let before = env.delivered();
    env.start();
    let more = uuids("after", 10);
    env.append("access.log", &lines(&more));
    env.wait_for(&more);
    env.settle();
    let after = env.delivered();
    for (u, n) in &before {
        assert_eq!(after.get(u), Some(n), "{u} was read again after a clean restart");
    }
    env.stop();
}
