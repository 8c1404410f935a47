//! Kubernetes triggers, the decisions: what a change of one object means for the
//! `TestTrigger`s with `on.kubernetes` (issue 12, part 3). The watch loop that feeds it
//! (resuming from `resourceVersion`, bookmarks, relist on 410 Gone, dedup keys in a
//! JetStream KV bucket) is not built yet; everything here is pure and takes time as an
//! argument.
//!
//! - [`object`]: facts read from an object: identity, revision, container images and
//!   digests, whether its rollout is complete;
//! - [`changes`]: the events one change yields (`created`, `modified`, `deleted`,
//!   `rollout-complete`, `image-changed`, `scaled`), each with the part of its dedup key
//!   that tells one occurrence from the next;
//! - [`path`]: field conditions' JSON paths evaluated on an object;
//! - [`fire`]: for one trigger, the `TriggerEvent`s a change fires, with their dedup keys;
//! - [`settle`]: the settle window, a debouncer with explicit time;
//! - [`supersede`]: which executions a new revision of an object cancels;
//! - [`watches`]: which resources to watch for which triggers, and the triggers that
//!   cannot be watched (each with its error, the others unaffected).

// Nothing outside the tests calls these until the watch loop lands.
#![allow(dead_code)]

pub mod changes;
pub mod fire;
pub mod object;
pub mod path;
pub mod settle;
pub mod supersede;
pub mod watches;
