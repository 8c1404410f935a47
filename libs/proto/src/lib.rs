//! The `assay.v1` protobuf contract: bus messages and the result query API.
//!
//! Generated at build time from `proto/assay/v1/*.proto`. Field numbers are forever.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("assay.v1");
}

pub use v1::*;

/// Work-queue batch sequence numbers of matrix combination `g` start at
/// `g << QUEUE_GROUP_SHIFT` (about a million batches per combination): the runner numbers
/// them so, and the store finds a batch's queue from `TestCaseBatch.queue_batch - 1`.
pub const QUEUE_GROUP_SHIFT: u32 = 20;

/// The matrix combination (work queue) of a `TestCaseBatch.queue_batch` (1 + its sequence
/// number); `None` for 0, which is no queue batch.
pub fn queue_group(queue_batch: u32) -> Option<u32> {
    queue_batch
        .checked_sub(1)
        .map(|seq| seq >> QUEUE_GROUP_SHIFT)
}

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
