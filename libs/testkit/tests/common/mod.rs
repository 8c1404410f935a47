//! Helpers shared by the fake API server's kube-client tests.

#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::WatchEvent;
use serde_json::json;

/// Upper bound for waiting on something the fake must do; reaching it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A one-container Pod with these labels.
pub fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }))
    .unwrap()
}

/// The Status of an API error, failing the test on any other error.
pub fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other}"),
    }
}

/// The next event of a watch stream, failing the test if none comes.
pub async fn next<S, K>(stream: &mut S) -> WatchEvent<K>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a watch event")
        .expect("the stream is open")
        .expect("the event decodes")
}
