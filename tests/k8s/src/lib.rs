//! No code: `tests/manifests.rs` renders `deploy/k8s` with the real `kubectl kustomize` and
//! parses every object into its k8s-openapi type.
