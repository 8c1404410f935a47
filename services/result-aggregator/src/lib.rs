//! Stores results, computes execution status, serves the query API
