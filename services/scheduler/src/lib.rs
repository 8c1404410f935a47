//! Matches events to triggers and workflows, plans executions and shards
