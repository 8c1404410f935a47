//! `webhook_payload`: the GitHub and GitLab webhook parsers (`parse_github`, `parse_gitlab`)
//! and the HMAC signature check, on arbitrary bodies.
//!
//! The first byte picks the provider and event header; the rest is the body. Properties: no
//! input panics; a parsed event carries the delivery id it came with, a known type, a key of
//! `<provider>/<delivery>` and sorted, unique changed paths; the signature of the body made
//! with a secret verifies, and the same signature with one byte of the body changed does not.

use assay_auth::Secret;
use assay_trigger_watcher::webhook::{
    GITHUB_DELIVERY, GITHUB_EVENT, GITHUB_SIGNATURE, GITLAB_DELIVERY, GITLAB_EVENT, Parsed,
    parse_github, parse_gitlab, verify_hmac,
};
use axum::http::{HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const EVENTS: [(&str, &str); 8] = [
    ("github", "push"),
    ("github", "pull_request"),
    ("github", "ping"),
    ("github", "create"),
    ("gitlab", "Push Hook"),
    ("gitlab", "Tag Push Hook"),
    ("gitlab", "Merge Request Hook"),
    ("gitlab", "Note Hook"),
];

const DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

pub fn webhook_payload(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (provider, event) = EVENTS[usize::from(selector) % EVENTS.len()];
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let parsed = if provider == "github" {
        headers.insert(GITHUB_EVENT, HeaderValue::from_static(event));
        headers.insert(GITHUB_DELIVERY, HeaderValue::from_static(DELIVERY));
        parse_github(&headers, body)
    } else {
        headers.insert(GITLAB_EVENT, HeaderValue::from_static(event));
        headers.insert(GITLAB_DELIVERY, HeaderValue::from_static(DELIVERY));
        parse_gitlab(&headers, body)
    };
    match parsed {
        Ok(Parsed::Event(e)) => {
            assert_eq!(e.delivery, DELIVERY, "the delivery id is the header's");
            assert_eq!(e.key(), format!("{provider}/{DELIVERY}"));
            assert!(
                ["push", "tag", "pull_request"].contains(&e.r#type.as_str()),
                "unknown event type {:?}",
                e.r#type
            );
            if let Some(paths) = &e.changed_paths {
                assert!(
                    paths.windows(2).all(|w| w[0] < w[1]),
                    "changed paths not sorted and unique: {paths:?}"
                );
            }
            let labels = e.labels();
            assert!(labels.values().all(|v| !v.is_empty()), "{labels:?}");
        }
        Ok(Parsed::Ignored { reason, .. }) => {
            assert!(!reason.is_empty(), "ignored without a reason")
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    // Signatures: the body's own HMAC verifies; a one-byte change does not.
    let secret = Secret::new(b"fuzz-secret").expect("a non-empty secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"fuzz-secret").expect("any key length");
    mac.update(body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert!(
        verify_hmac(
            &secret,
            GITHUB_SIGNATURE,
            Some(signature.as_bytes()),
            body,
            false
        )
        .is_ok(),
        "a correct signature is refused"
    );
    if !body.is_empty() {
        let mut changed = body.to_vec();
        changed[0] ^= 1;
        assert!(
            verify_hmac(
                &secret,
                GITHUB_SIGNATURE,
                Some(signature.as_bytes()),
                &changed,
                false
            )
            .is_err(),
            "a signature verified a body it was not made for"
        );
    }
}
