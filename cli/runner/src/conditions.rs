//! When a step runs, given how the shard went so far (`Step.condition`). Pure.
//!
//! Like GitHub Actions' `if: success()` / `failure()` / `always()`: a `success` step runs
//! only while nothing has failed, a `failure` step only once something has, an `always` step
//! regardless. For `setup` and `steps`, "failed" means an earlier setup step or step failed;
//! for `after` steps it means the shard is not passing at that point (failing tests count,
//! and so does an earlier `after` step that failed).

/// Which list of the workflow a step comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Steps,
    After,
}

impl Phase {
    /// `setup step`, `step`, `after step`: how messages name a step of this list.
    pub fn noun(self) -> &'static str {
        match self {
            Phase::Setup => "setup step",
            Phase::Steps => "step",
            Phase::After => "after step",
        }
    }
}

/// A step's `condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Success,
    Failure,
    Always,
}

impl Condition {
    /// Reads `Step.condition`. Empty means `success`, except for `after` steps, where it
    /// means `always`: a job that says nothing keeps the documented "after steps run whatever
    /// happened". An unknown value is an error naming the step and the value.
    pub fn parse(value: &str, phase: Phase, step: &str) -> Result<Condition, String> {
        match value {
            "" if phase == Phase::After => Ok(Condition::Always),
            "" | "success" => Ok(Condition::Success),
            "failure" => Ok(Condition::Failure),
            "always" => Ok(Condition::Always),
            other => Err(format!(
                "{} {step:?} has an unknown condition {other:?}; use success, failure or always",
                phase.noun()
            )),
        }
    }

    /// Whether the step runs when something has (`failed`) or has not failed so far.
    pub fn runs(self, failed: bool) -> bool {
        match self {
            Condition::Success => !failed,
            Condition::Failure => failed,
            Condition::Always => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Condition::Success => "success",
            Condition::Failure => "failure",
            Condition::Always => "always",
        }
    }
}

/// Checks every step's condition before anything runs, so a job with a misspelt condition
/// runs nothing rather than half of its steps.
pub fn check(job: &assay_proto::ShardJob) -> Result<(), String> {
    let lists = [
        (Phase::Setup, &job.setup),
        (Phase::Steps, &job.steps),
        (Phase::After, &job.after),
    ];
    for (phase, steps) in lists {
        for step in steps {
            Condition::parse(&step.condition, phase, &step.name)?;
        }
    }
    Ok(())
}

/// The log line for a step its condition skips.
pub fn skipped_line(phase: Phase, step: &str, condition: Condition, failed: bool) -> String {
    let why = match (phase, failed) {
        (Phase::After, true) => "the shard did not pass",
        (Phase::After, false) => "the shard is passing",
        (_, true) => "an earlier step failed",
        (_, false) => "nothing failed",
    };
    format!(
        "{} {step} skipped (condition {}, {why})",
        phase.noun(),
        condition.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_decide_like_github_actions() {
        let parse = |v, p| Condition::parse(v, p, "s").unwrap();
        assert_eq!(parse("", Phase::Setup), Condition::Success);
        assert_eq!(parse("", Phase::Steps), Condition::Success);
        assert_eq!(parse("", Phase::After), Condition::Always);
        assert_eq!(parse("success", Phase::After), Condition::Success);
        assert_eq!(parse("failure", Phase::Steps), Condition::Failure);
        assert_eq!(parse("always", Phase::Setup), Condition::Always);

        let table = [
            (Condition::Success, false, true),
            (Condition::Success, true, false),
            (Condition::Failure, false, false),
            (Condition::Failure, true, true),
            (Condition::Always, false, true),
            (Condition::Always, true, true),
        ];
        for (c, failed, runs) in table {
            assert_eq!(c.runs(failed), runs, "{c:?} failed={failed}");
        }
    }

    #[test]
    fn unknown_conditions_name_the_step_and_the_value() {
        let err = Condition::parse("sometimes", Phase::After, "cleanup").unwrap_err();
        assert_eq!(
            err,
            "after step \"cleanup\" has an unknown condition \"sometimes\"; use success, failure or always"
        );
        // Case matters, as in the validator.
        assert!(Condition::parse("Always", Phase::Steps, "x").is_err());

        let mut job = assay_proto::ShardJob::default();
        job.steps.push(assay_proto::Step {
            name: "build".into(),
            condition: "on-failure".into(),
            ..Default::default()
        });
        let err = check(&job).unwrap_err();
        assert!(err.starts_with("step \"build\" has an unknown condition \"on-failure\""));
    }

    #[test]
    fn skip_lines_say_why() {
        assert_eq!(
            skipped_line(Phase::Steps, "deploy", Condition::Success, true),
            "step deploy skipped (condition success, an earlier step failed)"
        );
        assert_eq!(
            skipped_line(Phase::After, "notify", Condition::Failure, false),
            "after step notify skipped (condition failure, the shard is passing)"
        );
    }
}
