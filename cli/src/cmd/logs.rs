//! `assay logs ID [--follow]`.

use anyhow::Result;
use assay_proto::StreamLogsRequest;
use futures::StreamExt;

use crate::args::{Global, LogsArgs};
use crate::style::Palette;
use crate::{api, logline};

pub async fn run(global: &Global, args: LogsArgs, palette: Palette) -> Result<u8> {
    let mut client = api::connect(global).await?;
    let what = format!("logs of execution {}", args.id);
    let mut stream = client
        .stream_logs(StreamLogsRequest {
            execution_id: args.id.clone(),
            follow: args.follow,
        })
        .await
        .map_err(|s| api::call_error(&global.api, &what, &s))?
        .into_inner();
    loop {
        tokio::select! {
            chunk = stream.next() => match chunk {
                Some(Ok(chunk)) => {
                    for line in logline::chunk_lines(&chunk, &palette) {
                        crate::outln!("{line}");
                    }
                }
                Some(Err(s)) => return Err(api::call_error(&global.api, &what, &s)),
                None => return Ok(0),
            },
            _ = tokio::signal::ctrl_c() => return Ok(130),
        }
    }
}
