/// Planning errors. All of them are caused by the input (a definition or a call), so none is
/// retryable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error(
        "matrix expands to {count} combinations, over the limit of {limit}: drop parameter values or raise the limit"
    )]
    MatrixTooLarge { count: u128, limit: usize },
    #[error("matrix parameter \"{0}\" has no values: give it at least one value or remove it")]
    EmptyMatrixParameter(String),
    #[error("maxCount must be at least 1, got 0")]
    ZeroMaxCount,
    #[error("targetDuration must be a positive number of milliseconds, got {0}")]
    InvalidTarget(f64),
    #[error("batch {0} appears twice in the queue: give every batch a distinct seq")]
    DuplicateBatch(u32),
    #[error("lease must be longer than 0 ms")]
    ZeroLease,
    #[error("unknown sharding strategy \"{0}\" (known: count, duration, queue)")]
    UnknownStrategy(String),
}

impl Error {
    /// Whether trying again could succeed: never, the input has to change.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
