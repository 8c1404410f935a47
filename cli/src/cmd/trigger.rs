//! `assay trigger --source S`: publish a TriggerEvent.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use assay_bus::{header, subjects};
use assay_proto::TriggerEvent;
use tokio_util::sync::CancellationToken;

use crate::args::{Global, TriggerArgs};

/// `k=v` labels; the value may contain `=`.
pub fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            _ => bail!("--label takes k=v, got \"{pair}\"; write it as --label name=value"),
        }
    }
    Ok(out)
}

/// Checks that the payload is JSON and returns its bytes.
pub fn parse_payload(payload: Option<&str>) -> Result<Vec<u8>> {
    let Some(text) = payload else {
        return Ok(Vec::new());
    };
    serde_json::from_str::<serde_json::Value>(text).with_context(|| {
        format!(
            "--payload is not valid JSON: {text}; quote it, e.g. --payload '{{\"ref\": \"main\"}}'"
        )
    })?;
    Ok(text.as_bytes().to_vec())
}

pub fn event(args: &TriggerArgs) -> Result<TriggerEvent> {
    if args.source.trim().is_empty() {
        bail!("--source must not be empty; name where the event comes from, e.g. --source ci");
    }
    Ok(TriggerEvent {
        header: Some(header("assay-cli", ulid::Ulid::new().to_string(), None)),
        source: args.source.clone(),
        r#type: args.r#type.clone(),
        labels: parse_labels(&args.labels)?.into_iter().collect(),
        payload: parse_payload(args.payload.as_deref())?,
        ..Default::default()
    })
}

pub async fn run(global: &Global, args: TriggerArgs) -> Result<u8> {
    let event = event(&args)?;
    let shutdown = CancellationToken::new();
    let bus = crate::connect_bus(&global.nats, "assay-cli", &shutdown).await?;
    bus.ensure_topology()
        .await
        .context("cannot create the assay streams")?;
    bus.publish(subjects::event(&args.source), &event)
        .await
        .context("cannot publish the event")?;
    crate::outln!("{}", event.header.map(|h| h.event_id).unwrap_or_default());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = parse_labels(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(l.get("b").map(String::as_str), Some("x=y"));
        assert!(parse_labels(&["nokey".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
    }

    #[test]
    fn payload_must_be_json() {
        assert!(parse_payload(None).unwrap().is_empty());
        assert_eq!(parse_payload(Some("{\"a\":1}")).unwrap(), b"{\"a\":1}");
        let err = parse_payload(Some("{oops")).unwrap_err();
        assert!(format!("{err:#}").contains("not valid JSON"));
    }

    #[test]
    fn event_has_fresh_key() {
        let args = TriggerArgs {
            source: "ci".into(),
            r#type: "push".into(),
            labels: vec!["branch=main".into()],
            payload: None,
        };
        let a = event(&args).unwrap();
        let b = event(&args).unwrap();
        let (ha, hb) = (a.header.unwrap(), b.header.unwrap());
        assert_ne!(ha.idempotency_key, hb.idempotency_key);
        assert_eq!(a.labels.get("branch").map(String::as_str), Some("main"));
    }
}
