//! The result store: executions, shards and test cases
