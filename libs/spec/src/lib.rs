//! TestWorkflow and TestTrigger definitions: parsing, validation, catalog.
//!
//! Local mode reads definitions from a directory ([`Catalog::load`]); Kubernetes mode feeds
//! custom resources through [`parse_str`] and [`Catalog::from_definitions`]. Both go through
//! the same parser and validator, which reports every problem it finds with file, line,
//! column and a hint ([`Diagnostic`]).

mod catalog;
mod config;
pub mod crd;
mod duration;
pub mod filter;
mod kube_trigger;
mod locate;
mod model;
mod parse;
pub mod shard;
mod trigger;
mod validate;
mod watch;

use std::fmt;
use std::path::PathBuf;

pub use catalog::{Catalog, Refusal, Refused};
pub use config::{
    DEFAULT_MATRIX_LIMIT, EVENT_FIELDS, EventContext, MASKED, TemplateVars, expand, expand_matrix,
    is_shell_word, matrix_limit, parse_overrides, variant_label,
};
pub use duration::{format_duration, parse_duration};
pub use kube_trigger::{
    BUILTIN_KINDS, BuiltinKind, FieldCondition, FieldPath, KUBERNETES_SOURCE, KubeEvent,
    KubernetesMatch, LabelRequirement, PathSeg, ResourceType, SelectorOperator, kube_labels,
};
pub use model::*;
pub use parse::parse_str;
pub use trigger::{EventView, Schedule, webhook_labels};
pub use watch::SharedCatalog;

/// The `apiVersion` every definition must carry.
pub const API_VERSION: &str = "assay.dev/v1alpha1";
/// `kind` of a workflow definition.
pub const KIND_WORKFLOW: &str = "TestWorkflow";
/// `kind` of a trigger definition.
pub const KIND_TRIGGER: &str = "TestTrigger";

/// Where in which file something is (1-based line and column). A custom resource has no
/// lines: its line and column are 0, and `file` names the resource (`TestWorkflow ns/name`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// One problem found in a definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub(crate) fn new(location: Location, message: impl Into<String>) -> Self {
        Diagnostic {
            location,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more definitions are invalid; every diagnostic found is listed.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("{}", io_message(.path, .source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workflow \"{name}\" not found in {}{}", .dir.display(), known_suffix(.name, .known))]
    WorkflowNotFound {
        name: String,
        dir: PathBuf,
        known: Vec<String>,
    },
    #[error("trigger \"{name}\" not found in {}{}", .dir.display(), known_suffix(.name, .known))]
    TriggerNotFound {
        name: String,
        dir: PathBuf,
        known: Vec<String>,
    },
    #[error(
        "unknown parameter \"{name}\" for workflow \"{workflow}\"{}; declare it under spec.config to make it settable",
        known_suffix(.name, .known)
    )]
    UnknownParameter {
        workflow: String,
        name: String,
        known: Vec<String>,
    },
    #[error(
        "parameter \"{name}\" of workflow \"{workflow}\" has no default; pass --set {name}=VALUE"
    )]
    MissingParameter { workflow: String, name: String },
    #[error(
        "parameter \"{name}\" of workflow \"{workflow}\" expects {expected}, got \"{value}\"; pass a valid value with --set {name}=VALUE"
    )]
    BadParameterValue {
        workflow: String,
        name: String,
        value: String,
        expected: String,
    },
    #[error("--set takes k=v, got \"{0}\"; write it as --set name=value")]
    BadOverride(String),
    #[error(
        "template refers to unknown parameter \"config.{name}\"{}",
        known_suffix(.name, .known)
    )]
    UnknownTemplateVariable { name: String, known: Vec<String> },
    #[error(
        "template refers to unknown matrix parameter \"matrix.{name}\"{}",
        known_suffix(.name, .known)
    )]
    UnknownMatrixKey { name: String, known: Vec<String> },
    /// `{{ event.labels.KEY }}` for a label the event does not carry.
    #[error("the event has no label \"{name}\" (labels: {})", names_or_none(.known))]
    MissingEventLabel {
        /// The placeholder as written (`{{ event.labels.sha }}`).
        placeholder: String,
        name: String,
        known: Vec<String>,
    },
    #[error(
        "template {placeholder} names no event field \"event.{name}\"; use {}",
        config::EVENT_FIELDS
    )]
    UnknownEventField { placeholder: String, name: String },
    #[error(
        "the event's value \"{value}\" for {placeholder} is not a plain word (it holds characters a shell interprets); put it in the step's `env` and quote the variable in the command"
    )]
    UnsafeEventValue { placeholder: String, value: String },
    #[error("{0}")]
    Matrix(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn join_lines(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn io_message(path: &std::path::Path, source: &std::io::Error) -> String {
    if source.kind() == std::io::ErrorKind::NotFound {
        format!(
            "definitions directory {} does not exist ({source}); create it or pass --workflows DIR",
            path.display()
        )
    } else {
        format!("cannot read {}: {source}", path.display())
    }
}

/// ` (known: a, b)` with a did-you-mean in front when one candidate is close.
fn known_suffix(name: &str, known: &[String]) -> String {
    let mut out = String::new();
    if let Some(best) = did_you_mean(name, known.iter().map(String::as_str)) {
        out.push_str(&format!("; did you mean \"{best}\"?"));
    }
    if known.is_empty() {
        out.push_str(" (none defined)");
    } else {
        out.push_str(&format!(" (known: {})", known.join(", ")));
    }
    out
}

/// The candidate closest to `input`, when it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = input.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&lower, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostic_display() {
        let d = Diagnostic::new(
            Location {
                file: "a/b.yaml".into(),
                line: 12,
                column: 5,
            },
            "unknown field `paralel` in spec",
        )
        .hint("did you mean `parallel`?");
        assert_eq!(
            d.to_string(),
            "a/b.yaml:12:5: unknown field `paralel` in spec; did you mean `parallel`?"
        );
    }

    #[test]
    fn not_found_message() {
        let e = Error::WorkflowNotFound {
            name: "e2e".into(),
            dir: "./.assay".into(),
            known: vec!["smoke".into(), "unit".into()],
        };
        assert_eq!(
            e.to_string(),
            "workflow \"e2e\" not found in ./.assay (known: smoke, unit)"
        );
    }

    #[test]
    fn did_you_mean_picks_close() {
        assert_eq!(
            did_you_mean("paralel", ["parallel", "steps", "env"]),
            Some("parallel")
        );
        assert_eq!(did_you_mean("zzz", ["parallel", "steps"]), None);
    }
}
