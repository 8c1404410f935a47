//! End-to-end tests against a real nats-server
