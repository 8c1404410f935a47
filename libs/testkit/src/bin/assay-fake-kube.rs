//! `assay-fake-kube`: runs the fake Kubernetes API server until killed and prints a
//! kubeconfig for it on stdout, so that a person can point `kubectl` at it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use assay_testkit::kube::{DEFAULT_BOOKMARK_INTERVAL, FakeKube, FakeKubeOptions, KubeletSim};
use clap::Parser;

/// Fake Kubernetes API server (plain HTTP) for trying assay and kubectl without a cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = DEFAULT_BOOKMARK_INTERVAL.as_secs())]
    bookmark_seconds: u64,
    /// Also run the kubelet simulator as node NAME: Pods are bound to it and their
    /// containers run as local processes (the image is ignored; the commands must exist
    /// on this machine).
    #[arg(long, value_name = "NAME")]
    kubelet: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake = FakeKube::start_with(FakeKubeOptions {
        bind: SocketAddr::new(args.address, args.port),
        bookmark_interval: Duration::from_secs(args.bookmark_seconds.max(1)),
    })
    .await
    .context("could not start the fake API server; is the port free?")?;
    let _kubelet = args
        .kubelet
        .as_deref()
        .map(|node| KubeletSim::start(&fake, node));
    #[allow(clippy::print_stdout)]
    {
        print!("{}", fake.kubeconfig());
    }
    eprintln!(
        "fake Kubernetes API server on {}; save the kubeconfig above and run kubectl --kubeconfig=FILE; Ctrl-C stops it",
        fake.url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
