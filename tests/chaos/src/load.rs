//! The load: trigger events and run requests, submitted the four ways outside programs do
//! (HTTP event, HTTP run, `TriggerEvent` on the bus, `RunRequest` on the bus), each retried
//! with the same idempotency key until it is acknowledged (HTTP 202 or a JetStream publish
//! ack), as a careful client would. Only acknowledged submissions are recorded: those are
//! the ones invariant 3 holds the system to.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use assay_bus::{Bus, subjects};
use assay_proto::{RunRequest, TriggerEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The workflows of the suite and the trigger that fires each.
pub const WORKFLOWS: [&str; 3] = ["chaos-queue", "chaos-count", "chaos-duration"];

pub fn trigger_of(workflow: &str) -> String {
    format!("{workflow}-on-push")
}

/// How a submission reached the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    HttpEvent,
    HttpRun,
    BusEvent,
    BusRun,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::HttpEvent => "POST /v1/events",
            Via::HttpRun => "POST /v1/workflows/{name}/run",
            Via::BusEvent => "TriggerEvent on assay.v1.events.chaos",
            Via::BusRun => "RunRequest on assay.v1.runs.requested",
        }
    }
}

/// An acknowledged submission and the execution cause it must produce.
#[derive(Debug, Clone)]
pub struct Acked {
    pub via: Via,
    pub workflow: String,
    /// The `cause` the scheduler records on the execution it creates.
    pub cause: String,
    /// The execution id asked for (run requests), if any.
    pub execution: Option<String>,
    /// Times it was acknowledged (a duplicate submission after the ack is on purpose).
    pub acks: u32,
    pub at_ms: i64,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub acked: Vec<Acked>,
    /// Submissions given up on (never acknowledged within the retry budget).
    pub unacked: usize,
    /// Attempts that failed and were retried with the same key.
    pub retries: usize,
}

pub struct Load {
    rng: StdRng,
    bus: Bus,
    http: reqwest::Client,
    base: String,
    seed: u64,
    n: u64,
}

impl Load {
    pub fn new(seed: u64, bus: Bus, http: std::net::SocketAddr) -> Load {
        Load {
            rng: StdRng::seed_from_u64(seed ^ 0x10ad_0000_0000_0002),
            bus,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            base: format!("http://{http}"),
            seed,
            n: 0,
        }
    }

    /// The gap before the next submission (uniform in 0.5..1.5 times `mean`).
    pub fn gap(&mut self, mean: Duration) -> Duration {
        let ms = mean.as_millis().max(1) as u64;
        Duration::from_millis(self.rng.random_range(ms / 2..=ms * 3 / 2))
    }

    /// Submits one trigger, retrying up to `budget`; records it in the ledger if acked.
    pub async fn submit(&mut self, ledger: &mut Ledger, budget: Duration) {
        self.n += 1;
        let via = match self.rng.random_range(0..4) {
            0 => Via::HttpEvent,
            1 => Via::HttpRun,
            2 => Via::BusEvent,
            _ => Via::BusRun,
        };
        let workflow = WORKFLOWS[self.rng.random_range(0..WORKFLOWS.len())].to_string();
        let key = format!("chaos-{}-{}", self.seed, self.n);
        let execution = matches!(via, Via::HttpRun | Via::BusRun).then(|| {
            ulid::Ulid::from_parts(assay_bus::now_ms() as u64, self.rng.random()).to_string()
        });
        let cause = match via {
            Via::HttpEvent | Via::BusEvent => {
                format!("{key}/{}/{workflow}", trigger_of(&workflow))
            }
            Via::HttpRun => format!("http/{key}/{workflow}"),
            Via::BusRun => format!("{key}/{workflow}"),
        };
        let duplicate = self.rng.random_bool(0.2);
        let deadline = Instant::now() + budget;
        let mut acks = 0;
        let mut delay = Duration::from_millis(100);
        while acks == 0 || (duplicate && acks == 1) {
            match self.once(via, &workflow, &key, execution.as_deref()).await {
                Ok(()) => acks += 1,
                Err(_) if Instant::now() < deadline => {
                    ledger.retries += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(_) => break,
            }
        }
        if acks == 0 {
            ledger.unacked += 1;
            return;
        }
        ledger.acked.push(Acked {
            via,
            workflow,
            cause,
            execution,
            acks,
            at_ms: assay_bus::now_ms(),
        });
    }

    async fn once(
        &self,
        via: Via,
        workflow: &str,
        key: &str,
        execution: Option<&str>,
    ) -> Result<(), String> {
        let labels: HashMap<String, String> = [("suite".to_string(), workflow.to_string())].into();
        match via {
            Via::HttpEvent => {
                let body = serde_json::json!({"source": "chaos", "type": "push", "labels": labels});
                self.post("/v1/events", key, body).await
            }
            Via::HttpRun => {
                let body = serde_json::json!({"executionId": execution});
                self.post(&format!("/v1/workflows/{workflow}/run"), key, body)
                    .await
            }
            Via::BusEvent => {
                let ev = TriggerEvent {
                    header: Some(assay_bus::header("chaos", key, None)),
                    source: "chaos".into(),
                    r#type: "push".into(),
                    labels,
                    ..Default::default()
                };
                self.publish(subjects::event("chaos"), &ev).await
            }
            Via::BusRun => {
                let req = RunRequest {
                    header: Some(assay_bus::header("chaos", key, None)),
                    workflow: workflow.to_string(),
                    requested_by: "chaos".into(),
                    execution_id: execution.unwrap_or_default().to_string(),
                    ..Default::default()
                };
                self.publish(subjects::RUN_REQUESTED.to_string(), &req)
                    .await
            }
        }
    }

    async fn publish<M: assay_bus::BusMessage>(
        &self,
        subject: String,
        m: &M,
    ) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), self.bus.publish(subject, m)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("publish ack timed out".into()),
        }
    }

    async fn post(&self, path: &str, key: &str, body: serde_json::Value) -> Result<(), String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() == reqwest::StatusCode::ACCEPTED {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }
}
