//! The assay command and the assay-runner
