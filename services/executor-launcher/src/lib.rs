//! Launches assay-runner processes for shard jobs
