//! The chaos run, bounded: normal and hostile tasks at random through a
//! started cluster while random workers are SIGKILLed. Every normal task's
//! result comes once and is right, every attack fails with its own error,
//! every delivered result's execute span is on disk, no worker is stuck,
//! no process is left, worker memory stays flat.

use std::time::Duration;

use wtrace_tests::chaos::{self, ChaosOptions};

#[test]
fn normal_and_hostile_tasks_under_random_worker_kills_all_come_out_right() {
    let report = chaos::run(&ChaosOptions {
        tasks: 2_000,
        workers: 2,
        kill_every: Duration::from_millis(400),
        slow_per_mille: 8,
        seed: 0x5eed_c4a0,
    });
    eprintln!("{report:?}");
    assert!(report.killed >= 3, "workers were killed: {report:?}");
    assert!(report.hostile > 100, "{report:?}");
    assert!(
        report.violations.is_empty(),
        "{} violations:\n{}",
        report.violations.len(),
        report.violations.join("\n")
    );
}
