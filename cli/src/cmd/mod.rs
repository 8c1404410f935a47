//! One module per subcommand.

pub mod cancel;
pub mod crds;
pub mod events;
pub mod get;
pub mod history;
pub mod logs;
pub mod rerun;
pub mod run;
pub mod trigger;
pub mod up;
pub mod validate;
