//! The short chaos run of `make test`: the four services as real processes (the debug
//! binaries `make test` builds first), 24 seeded faults in about two minutes, one round of
//! each targeted scenario (about a minute and a half), and every invariant checked. A
//! measured wall-clock bound (orphaned shards re-run within 5 s) is reported, not asserted:
//! `make chaos` holds the stack to it. A failure prints the fault and invariant tables, the
//! seed and the command that replays it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_keeps_every_invariant() {
    let seed = std::env::var("ASSAY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261127);
    let report = assay_chaos::run(assay_chaos::Config::short(seed))
        .await
        .expect("the harness could not run");
    let table = report.render();
    eprintln!("{table}");
    assert!(
        report.injected() >= 20,
        "only {} faults injected\n{table}",
        report.injected()
    );
    assert!(report.passed_untimed(), "{table}");
}
