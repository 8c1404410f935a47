//! `cargo bench -p assay-bus --bench history` (`make bench-history`): what writing and reading
//! a workflow's duration history costs as the suite grows, on a real nats-server.
//!
//! Per size (20,000 and 100,000 tests with ~100-character pytest-style ids): one snapshot
//! written through `Bus::write_history` (pieces, manifest, purge of the older generation) and
//! read back whole through `Bus::history_snapshot`, three times; prints bytes, pieces, and the
//! best write and read time per test, then the 100,000 / 20,000 ratio of those (1.0: the cost
//! grows with the suite and no faster). Figures are printed, not asserted.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use assay_bus::{Bus, NatsOptions};
use assay_proto::{HistorySnapshot, TestEstimate};
use assay_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const SIZES: [usize; 2] = [20_000, 100_000];
const ROUNDS: usize = 3;

fn snapshot(n: usize) -> HistorySnapshot {
    HistorySnapshot {
        workflow: "big".into(),
        tests: (0..n)
            .map(|i| TestEstimate {
                id: format!(
                    "tests/integration/payments/test_big_checkout_flow.py::TestCheckout::test_case[region=eu-west-1/n={i:06}]"
                ),
                mean_ms: 42.0,
                p90_ms: 43,
            })
            .collect(),
        updated_at_ms: assay_bus::now_ms(),
        shard_start_ms: 321.0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = NatsServer::start();
    let opts = NatsOptions {
        url: server.url(),
        ..Default::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new())
        .await
        .expect("connect");
    bus.ensure_topology().await.expect("topology");
    let mut per_test = Vec::new();
    for n in SIZES {
        let wrote = snapshot(n);
        let (mut write, mut read) = (Duration::MAX, Duration::MAX);
        let mut written = None;
        for _ in 0..ROUNDS {
            let start = Instant::now();
            written = Some(bus.write_history(&wrote).await.expect("history written"));
            write = write.min(start.elapsed());
            let start = Instant::now();
            let back = bus
                .history_snapshot("big")
                .await
                .expect("history read")
                .expect("history present");
            read = read.min(start.elapsed());
            assert_eq!(back.tests.len(), n, "the whole history reads back");
        }
        let written = written.expect("at least one round");
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "{n:>7} tests: {:>9} bytes in {:>3} pieces; write {:>6.2} µs/test ({:?}), read {:>6.2} µs/test ({:?})",
            written.bytes,
            written.pieces,
            us(write),
            write,
            us(read),
            read
        );
        per_test.push((us(write), us(read)));
    }
    let (small, large) = (per_test[0], per_test[per_test.len() - 1]);
    println!(
        "per-test cost at {} / at {}: write {:.2}x, read {:.2}x (1.0: proportional to the suite)",
        SIZES[SIZES.len() - 1],
        SIZES[0],
        large.0 / small.0,
        large.1 / small.1
    );
}
