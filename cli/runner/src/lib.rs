//! assay-runner
