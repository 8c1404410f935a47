//! The `assay.v1` protobuf contract: bus messages and the result query API.
//!
//! Generated at build time from `proto/assay/v1/*.proto`. Field numbers are forever.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("assay.v1");
}

pub use v1::*;
