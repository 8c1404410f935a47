//! How a shard's state follows from its steps and tests. Pure.

use assay_proto::{ShardState, TestCaseResult, TestStatus};

use crate::steps::Exit;

/// State, reason and exit code of a shard attempt, built up as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: ShardState,
    pub reason: String,
    pub exit_code: i32,
}

impl Verdict {
    pub fn passed() -> Verdict {
        Verdict {
            state: ShardState::Passed,
            reason: String::new(),
            exit_code: 0,
        }
    }

    pub fn errored(reason: impl Into<String>) -> Verdict {
        Verdict {
            state: ShardState::Errored,
            reason: reason.into(),
            exit_code: 0,
        }
    }

    /// A failing `setup` step: the shard could not be prepared.
    pub fn setup_failed(step: &str, exit: &Exit) -> Verdict {
        Verdict {
            state: ShardState::Errored,
            reason: format!("setup step {step} failed: {}", exit.describe()),
            exit_code: exit.code(),
        }
    }

    /// A failing step of `steps`.
    pub fn step_failed(step: &str, exit: &Exit) -> Verdict {
        Verdict {
            state: ShardState::Failed,
            reason: format!("step {step} failed: {}", exit.describe()),
            exit_code: exit.code(),
        }
    }

    /// A failing `after` step turns a pass into a failure; other states keep their reason.
    pub fn after_failed(&mut self, step: &str, exit: &Exit) {
        if self.state == ShardState::Passed {
            *self = Verdict {
                state: ShardState::Failed,
                reason: format!("after step {step} failed: {}", exit.describe()),
                exit_code: exit.code(),
            };
        }
    }

    /// The verdict of the test command from its results and exit.
    pub fn of_tests(results: &[TestCaseResult], exit: &Exit) -> Verdict {
        let count = |s: TestStatus| results.iter().filter(|r| r.status() == s).count();
        let (failed, errored) = (count(TestStatus::Failed), count(TestStatus::Errored));
        if failed + errored > 0 {
            let mut parts = Vec::new();
            if failed > 0 {
                parts.push(format!("{failed} failed"));
            }
            if errored > 0 {
                parts.push(format!("{errored} errored"));
            }
            return Verdict {
                state: ShardState::Failed,
                reason: format!("{} of {} tests", parts.join(", "), results.len()),
                exit_code: exit.code(),
            };
        }
        match exit {
            e if e.success() => Verdict::passed(),
            Exit::Code(c) => Verdict {
                state: ShardState::Failed,
                reason: format!("tests exited with code {c}"),
                exit_code: *c,
            },
            other => Verdict {
                state: ShardState::Failed,
                reason: format!("tests {}", other.describe()),
                exit_code: other.code(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(status: TestStatus) -> TestCaseResult {
        TestCaseResult {
            status: status as i32,
            ..Default::default()
        }
    }

    #[test]
    fn tests_decide_the_state() {
        let pass = [case(TestStatus::Passed), case(TestStatus::Skipped)];
        assert_eq!(Verdict::of_tests(&pass, &Exit::Code(0)), Verdict::passed());
        assert_eq!(Verdict::of_tests(&[], &Exit::Code(0)), Verdict::passed());

        let v = Verdict::of_tests(&pass, &Exit::Code(2));
        assert_eq!(v.state, ShardState::Failed);
        assert_eq!(v.reason, "tests exited with code 2");
        assert_eq!(v.exit_code, 2);

        let mixed = [
            case(TestStatus::Passed),
            case(TestStatus::Failed),
            case(TestStatus::Errored),
            case(TestStatus::Failed),
        ];
        let v = Verdict::of_tests(&mixed, &Exit::Code(1));
        assert_eq!(v.state, ShardState::Failed);
        assert_eq!(v.reason, "2 failed, 1 errored of 4 tests");
        // Failing cases fail the shard even when the command exits 0.
        let v = Verdict::of_tests(&[case(TestStatus::Errored)], &Exit::Code(0));
        assert_eq!(v.state, ShardState::Failed);

        let v = Verdict::of_tests(&pass, &Exit::Signal(9));
        assert_eq!(v.reason, "tests killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn steps_decide_the_state() {
        let v = Verdict::setup_failed("install", &Exit::Code(127));
        assert_eq!(v.state, ShardState::Errored);
        assert_eq!(
            v.reason,
            "setup step install failed: exit code 127 (command not found)"
        );
        assert_eq!(v.exit_code, 127);
        let v = Verdict::step_failed("build", &Exit::Code(2));
        assert_eq!(v.state, ShardState::Failed);

        let mut v = Verdict::passed();
        v.after_failed("cleanup", &Exit::Code(1));
        assert_eq!(v.state, ShardState::Failed);
        assert_eq!(v.reason, "after step cleanup failed: exit code 1");
        // An earlier failure keeps its reason; an error stays an error.
        let mut v = Verdict::step_failed("build", &Exit::Code(2));
        v.after_failed("cleanup", &Exit::Code(1));
        assert_eq!(v.reason, "step build failed: exit code 2");
        let mut v = Verdict::errored("no reports");
        v.after_failed("cleanup", &Exit::Code(1));
        assert_eq!(v.state, ShardState::Errored);
    }
}
