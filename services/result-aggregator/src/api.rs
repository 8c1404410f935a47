//! The gRPC query API (`assay.v1.Results`).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use assay_bus::{Bus, BusMessage, streams, subjects};
use assay_proto::results_server::Results;
use assay_proto::{
    ExecutionDetail, ExecutionUpdate, GetExecutionRequest, GetHistoryRequest, GetHistoryResponse,
    ListEventsRequest, ListEventsResponse, ListExecutionsRequest, ListExecutionsResponse, LogChunk,
    StreamLogsRequest, WatchExecutionRequest,
};
use assay_store::{EventFilter, ExecutionFilter, Page, Store};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::Error;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves the query API from the store (executions, test cases) and JetStream (logs, live
/// updates).
#[derive(Clone)]
pub struct ResultsApi {
    bus: Bus,
    store: Store,
    shutdown: CancellationToken,
}

impl ResultsApi {
    pub fn new(bus: Bus, store: Store, shutdown: CancellationToken) -> ResultsApi {
        ResultsApi {
            bus,
            store,
            shutdown,
        }
    }

    /// The place in line of every execution waiting for a concurrency slot, read from the
    /// scheduler's `assay_waiting` keys (sorted keys are its start order: priority, then
    /// arrival, per workflow or group). Empty when the bucket cannot be read.
    async fn queue_positions(&self) -> HashMap<String, u32> {
        use futures::TryStreamExt;
        let keys: Vec<String> = match self.bus.kv(streams::KV_WAITING).await {
            Ok(kv) => match kv.keys().await {
                Ok(keys) => keys.try_collect().await.unwrap_or_default(),
                Err(e) => {
                    debug!(error = %e, "waiting keys unreadable");
                    Vec::new()
                }
            },
            Err(e) => {
                debug!(error = %e, "waiting bucket unavailable");
                Vec::new()
            }
        };
        let mut parsed: Vec<(&str, &str, &str)> = keys
            .iter()
            .filter_map(|k| {
                streams::parse_waiting_key(k).map(|(scope, id)| (scope, k.as_str(), id))
            })
            .collect();
        parsed.sort();
        let mut out = HashMap::new();
        let (mut scope, mut n) = ("", 0u32);
        for (s, _, id) in parsed {
            if s != scope {
                (scope, n) = (s, 0);
            }
            n += 1;
            out.insert(id.to_string(), n);
        }
        out
    }

    async fn with_positions(&self, updates: &mut [ExecutionUpdate]) {
        if !updates
            .iter()
            .any(|u| u.status() == assay_proto::ExecutionStatus::Queued)
        {
            return;
        }
        let positions = self.queue_positions().await;
        for u in updates {
            if u.status() == assay_proto::ExecutionStatus::Queued {
                u.queue_position = positions.get(&u.execution_id).copied().unwrap_or(0);
            }
        }
    }

    async fn is_terminal(&self, id: &str) -> bool {
        match self.store.execution_update(id).await {
            Ok(Some(u)) => u.status().is_terminal(),
            _ => false,
        }
    }

    /// Streams the messages of `filter` in `stream` from the start into a channel.
    /// `done(msg)` ends the stream after a message; `idle_end` is asked after each quiet
    /// second (and right away when nothing is pending) whether to end.
    fn relay<M, D, I, IF>(
        &self,
        stream: &'static str,
        filter: String,
        done: D,
        idle_end: I,
    ) -> Streamed<M>
    where
        M: BusMessage,
        D: Fn(&M) -> bool + Send + 'static,
        I: Fn(ResultsApi) -> IF + Send + 'static,
        IF: std::future::Future<Output = bool> + Send,
    {
        let (tx, rx) = mpsc::channel::<Result<M, Status>>(256);
        let api = self.clone();
        tokio::spawn(async move {
            let messages = async {
                let stream = api.bus.jetstream().get_stream(stream).await?;
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: filter.clone(),
                        deliver_policy: DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await?;
                consumer.messages().await.map_err(anyhow_like)
            }
            .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "cannot read {filter}: {e}"
                        ))))
                        .await;
                    return;
                }
            };
            let mut caught_up = false;
            loop {
                let next = tokio::select! {
                    n = tokio::time::timeout(Duration::from_millis(if caught_up { 1000 } else { 300 }), messages.next()) => n,
                    _ = api.shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                };
                match next {
                    Ok(Some(Ok(msg))) => {
                        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
                        caught_up = pending == 0;
                        let decoded =
                            assay_bus::decode::<M>(&msg.subject, &msg.payload, 4 * 1024 * 1024);
                        match decoded {
                            Ok(m) => {
                                let end = done(&m);
                                if tx.send(Ok(m)).await.is_err() || end {
                                    return;
                                }
                            }
                            Err(e) => debug!(error = %e, "skipping undecodable message"),
                        }
                        if caught_up && idle_end(api.clone()).await {
                            return;
                        }
                    }
                    Ok(Some(Err(e))) => debug!(error = %e, "relay stream error"),
                    Ok(None) => return,
                    Err(_) => {
                        caught_up = true;
                        if idle_end(api.clone()).await {
                            return;
                        }
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn anyhow_like<E: std::fmt::Display>(e: E) -> Box<dyn std::error::Error + Send + Sync> {
    e.to_string().into()
}

#[tonic::async_trait]
impl Results for ResultsApi {
    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let req = request.into_inner();
        let filter = EventFilter {
            since_ms: req.since_ms.max(0),
            source: (!req.source.is_empty()).then_some(req.source),
        };
        let events = self
            .store
            .list_events(&filter, req.limit)
            .await
            .map_err(|e| Error::from(e).to_status())?;
        Ok(Response::new(ListEventsResponse { events }))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let req = request.into_inner();
        let filter = ExecutionFilter {
            workflow: (!req.workflow.is_empty()).then_some(req.workflow),
            source: (!req.source.is_empty()).then_some(req.source),
            labels: req.labels.into_iter().collect(),
        };
        let mut executions = self
            .store
            .list_executions(&filter, req.limit)
            .await
            .map_err(|e| Error::from(e).to_status())?;
        self.with_positions(&mut executions).await;
        Ok(Response::new(ListExecutionsResponse { executions }))
    }

    async fn get_execution(
        &self,
        request: Request<GetExecutionRequest>,
    ) -> Result<Response<ExecutionDetail>, Status> {
        let req = request.into_inner();
        let id = req.id;
        let page = Page {
            size: req.page_size,
            token: req.page_token,
        };
        match self.store.execution_page(&id, &page).await {
            // Found once the plan record is in, whatever its workflow (a rejected request
            // may name none).
            Ok(Some(mut d)) => {
                if let Some(u) = d.execution.as_mut() {
                    self.with_positions(std::slice::from_mut(u)).await;
                }
                debug!(
                    execution = %id,
                    page_size = page.size,
                    cases = d.shards.iter().map(|s| s.tests.len()).sum::<usize>(),
                    more = !d.next_page_token.is_empty(),
                    "execution page served"
                );
                Ok(Response::new(d))
            }
            Ok(None) => Err(Status::not_found(format!(
                "execution {id} not found (list them with `assay get executions`)"
            ))),
            Err(e) => Err(Error::from(e).to_status()),
        }
    }

    type StreamLogsStream = Streamed<LogChunk>;

    async fn stream_logs(
        &self,
        request: Request<StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = request.into_inner();
        let follow = req.follow;
        let id = req.execution_id.clone();
        let stream = self.relay(
            streams::LOGS,
            subjects::logs_of(&req.execution_id),
            |_: &LogChunk| false,
            move |api| {
                let id = id.clone();
                async move { !follow || api.is_terminal(&id).await }
            },
        );
        Ok(Response::new(stream))
    }

    async fn get_history(
        &self,
        request: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let req = request.into_inner();
        if req.workflow.is_empty() {
            return Err(Status::invalid_argument(
                "name a workflow (assay history WORKFLOW [TEST])",
            ));
        }
        let test = (!req.test_id.is_empty()).then_some(req.test_id.as_str());
        let page = Page {
            size: req.page_size,
            token: req.page_token.clone(),
        };
        let (tests, next_page_token) = self
            .store
            .history_page(&req.workflow, test, &page)
            .await
            .map_err(|e| Error::from(e).to_status())?;
        if tests.is_empty() && test.is_some() {
            return Err(Status::not_found(format!(
                "no history for test \"{}\" of workflow \"{}\" (list its tests with `assay history {}`)",
                req.test_id, req.workflow, req.workflow
            )));
        }
        Ok(Response::new(GetHistoryResponse {
            tests,
            next_page_token,
        }))
    }

    type WatchExecutionStream = Streamed<ExecutionUpdate>;

    async fn watch_execution(
        &self,
        request: Request<WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let id = request.into_inner().execution_id;
        let stream = self.relay(
            streams::EXECUTIONS,
            subjects::execution_updates_of(&id),
            |u: &ExecutionUpdate| u.status().is_terminal(),
            |_| async { false },
        );
        Ok(Response::new(stream))
    }
}
