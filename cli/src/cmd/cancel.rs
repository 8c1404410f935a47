//! `assay cancel EXECUTION`: stop a running execution.

use anyhow::{Context, Result};
use assay_proto::GetExecutionRequest;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::args::{CancelArgs, Global};
use crate::format;

pub async fn run(global: &Global, args: CancelArgs) -> Result<u8> {
    // Refuse what cannot be cancelled, when the result API can tell; cancel regardless when
    // it cannot be reached (the launchers act on the bucket, not on the API).
    if let Ok(mut client) = api::connect(global).await {
        match client
            .get_execution(GetExecutionRequest {
                id: args.id.clone(),
                // Only the status is needed, not the test cases.
                page_size: 1,
                page_token: String::new(),
            })
            .await
        {
            Ok(detail) => {
                let status = detail
                    .into_inner()
                    .execution
                    .map(|e| e.status())
                    .unwrap_or_default();
                if format::is_terminal(status) {
                    eprintln!(
                        "execution {} already ended ({}); nothing to cancel",
                        args.id,
                        format::execution_status(status)
                    );
                    return Ok(0);
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(api::call_error(&global.api, "cancel", &s));
            }
            Err(_) => {}
        }
    }
    let shutdown = CancellationToken::new();
    let bus = crate::connect_bus(&global.nats, "assay-cli", &shutdown).await?;
    bus.ensure_topology()
        .await
        .context("cannot create the assay streams")?;
    bus.cancel(&args.id, &args.reason)
        .await
        .context("cannot cancel the execution")?;
    crate::outln!(
        "execution {} cancelled; its shards stop shortly (follow with `assay get execution {}`)",
        args.id,
        args.id
    );
    Ok(0)
}
