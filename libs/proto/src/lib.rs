//! The `assay.v1` protobuf contract: bus messages and the result query API.
//!
//! Generated at build time from `proto/assay/v1/*.proto`. Field numbers are forever.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("assay.v1");
}

pub use v1::*;

impl ShardState {
    /// An attempt in this state has ended (passed, failed, errored, cancelled, timed out).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ShardState::Unspecified
                | ShardState::Queued
                | ShardState::WaitingForCapacity
                | ShardState::Running
        )
    }
}

impl ExecutionStatus {
    /// An execution with this status has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ExecutionStatus::Unspecified | ExecutionStatus::Queued | ExecutionStatus::Running
        )
    }
}
