//! Workflow parameters: `--set` overrides, resolution and `{{ config.NAME }}` expansion.

use crate::{Strategy, WorkflowSpec};
use std::collections::BTreeMap;

use crate::model::{ParameterInfo, Workflow};
use crate::{Error, Result};

/// Parses `--set` pairs (`k=v`; the value may contain '=').
pub fn parse_overrides(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            _ => return Err(Error::BadOverride(pair.clone())),
        }
    }
    Ok(out)
}

/// What a `{{ ... }}` placeholder refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ref<'a> {
    /// `{{ config.NAME }}`
    Config(&'a str),
    /// `{{ matrix.KEY }}`
    Matrix(&'a str),
}

/// One `{{ ... }}` found in a template: byte range and what it refers to, if anything we
/// expand.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    target: Option<Ref<'a>>,
}

fn placeholders(template: &str) -> Vec<Placeholder<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = template[from..].find("{{") {
        let start = from + open;
        let Some(close) = template[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + close + 2;
        let inner = template[start + 2..end - 2].trim();
        let name = |prefix: &str| {
            inner
                .strip_prefix(prefix)
                .map(str::trim)
                .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        };
        let target = name("config.")
            .map(Ref::Config)
            .or_else(|| name("matrix.").map(Ref::Matrix));
        out.push(Placeholder { start, end, target });
        from = end;
    }
    out
}

/// What a template refers to (`{{ config.NAME }}`, `{{ matrix.KEY }}`).
pub(crate) fn template_refs(template: &str) -> Vec<Ref<'_>> {
    placeholders(template)
        .into_iter()
        .filter_map(|p| p.target)
        .collect()
}

/// Expands `{{ config.NAME }}` (whitespace inside the braces optional) from resolved config.
///
/// Other `{{ ... }}` text, `{{ matrix.KEY }}` included, is left as it is, so shell scripts
/// that use braces keep working.
pub fn expand(template: &str, config: &BTreeMap<String, String>) -> Result<String> {
    expand_with(template, config, None)
}

/// Expands `{{ config.NAME }}` from resolved config and `{{ matrix.KEY }}` from one matrix
/// combination. Other `{{ ... }}` text is left as it is.
pub fn expand_matrix(
    template: &str,
    config: &BTreeMap<String, String>,
    combination: &BTreeMap<String, String>,
) -> Result<String> {
    expand_with(template, config, Some(combination))
}

fn expand_with(
    template: &str,
    config: &BTreeMap<String, String>,
    combination: Option<&BTreeMap<String, String>>,
) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut last = 0;
    for p in placeholders(template) {
        let value = match (p.target, combination) {
            (Some(Ref::Config(name)), _) => {
                config
                    .get(name)
                    .ok_or_else(|| Error::UnknownTemplateVariable {
                        name: name.to_string(),
                        known: config.keys().cloned().collect(),
                    })?
            }
            (Some(Ref::Matrix(key)), Some(combination)) => {
                combination
                    .get(key)
                    .ok_or_else(|| Error::UnknownMatrixKey {
                        name: key.to_string(),
                        known: combination.keys().cloned().collect(),
                    })?
            }
            _ => continue,
        };
        out.push_str(&template[last..p.start]);
        out.push_str(value);
        last = p.end;
    }
    out.push_str(&template[last..]);
    Ok(out)
}

/// The most combinations a matrix may expand to: `ASSAY_MATRIX_LIMIT` when set to a
/// positive number (at most 4,096), else 256. Validation and planning both hold to it.
pub fn matrix_limit() -> usize {
    std::env::var("ASSAY_MATRIX_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MATRIX_LIMIT)
        .min(MAX_MATRIX_LIMIT)
}

/// The most [`matrix_limit`] may be raised to (queue batches of a combination are
/// numbered in a range of their own, 4,096 ranges in all).
pub const MAX_MATRIX_LIMIT: usize = 4096;

/// What a `sensitive: true` parameter's value shows as wherever assay prints or records it
/// (logs, results, execution records).
pub const MASKED: &str = "***";

/// Default of [`matrix_limit`].
pub const DEFAULT_MATRIX_LIMIT: usize = 256;

/// A matrix combination's label, `key=value` pairs in key order joined by `,`
/// (`os=linux,python=3.12`); empty for the one combination of a workflow without matrix.
/// Test ids of a matrix shard carry it: `tests/a.py::t [os=linux,python=3.12]`.
pub fn variant_label(combination: &BTreeMap<String, String>) -> String {
    combination
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn scalar(v: &serde_norway::Value) -> String {
    match v {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => b.to_string(),
        serde_norway::Value::Null => String::new(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

impl WorkflowSpec {
    /// The matrix combinations, first parameter varying slowest: one empty combination when
    /// the workflow has no matrix. Fails over [`matrix_limit`] (the error says how many it
    /// would have been) or for a parameter without values.
    pub fn combinations(&self) -> Result<Vec<BTreeMap<String, String>>> {
        let Some(matrix) = &self.parallel.matrix else {
            return Ok(vec![BTreeMap::new()]);
        };
        let params: BTreeMap<String, Vec<String>> = matrix
            .iter()
            .map(|(k, vs)| (k.clone(), vs.iter().map(scalar).collect()))
            .collect();
        assay_plan::expand_matrix(&params, matrix_limit())
            .map_err(|e| Error::Matrix(format!("parallel.matrix: {e}")))
    }

    /// The sharding strategy in force: the declared one, else `queue` when the workflow lists
    /// its tests (workers pull batches, so shards finish together) and `count` when it does not.
    pub fn strategy(&self) -> Strategy {
        self.parallel
            .strategy
            .unwrap_or(if self.tests.as_ref().is_some_and(|t| t.list.is_some()) {
                Strategy::Queue
            } else {
                Strategy::Count
            })
    }
}

impl Workflow {
    /// Declared defaults overlaid with `overrides`.
    ///
    /// Fails for an undeclared key, a required parameter without value, or a value of the
    /// wrong type. Integer and boolean values come back in canonical form.
    pub fn resolve_config(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let config = &self.spec.config;
        if let Some(name) = overrides.keys().find(|k| !config.contains_key(*k)) {
            return Err(Error::UnknownParameter {
                workflow: self.name.clone(),
                name: name.clone(),
                known: config.keys().cloned().collect(),
            });
        }
        let mut out = BTreeMap::new();
        for (name, param) in config {
            let Some(value) = overrides.get(name).or(param.default.as_ref()) else {
                return Err(Error::MissingParameter {
                    workflow: self.name.clone(),
                    name: name.clone(),
                });
            };
            let Some(value) = param.r#type.check(value) else {
                return Err(Error::BadParameterValue {
                    workflow: self.name.clone(),
                    name: name.clone(),
                    value: value.clone(),
                    expected: param.r#type.expected().to_string(),
                });
            };
            out.insert(name.clone(), value);
        }
        Ok(out)
    }

    /// The declared parameters, sorted by name.
    pub fn parameters(&self) -> Vec<ParameterInfo<'_>> {
        self.spec
            .config
            .iter()
            .map(|(name, p)| ParameterInfo {
                name,
                r#type: p.r#type,
                default: p.default.as_deref(),
                description: p.description.as_deref(),
                sensitive: p.sensitive,
                required: p.default.is_none(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_with_and_without_spaces() {
        let c = cfg(&[("baseUrl", "http://x"), ("n", "3")]);
        assert_eq!(
            expand("{{ config.baseUrl }}/a?n={{config.n}}", &c).unwrap(),
            "http://x/a?n=3"
        );
        assert_eq!(
            expand("echo ${{ matrix.x }} {{", &c).unwrap(),
            "echo ${{ matrix.x }} {{"
        );
        let m = cfg(&[("py", "3.12"), ("os", "linux")]);
        assert_eq!(
            expand_matrix(
                "{{ matrix.os }}/{{matrix.py}} {{ config.n }} {{ other }}",
                &c,
                &m
            )
            .unwrap(),
            "linux/3.12 3 {{ other }}"
        );
        let err = expand_matrix("{{ matrix.pyy }}", &c, &m).unwrap_err();
        assert!(err.to_string().contains("matrix.pyy"), "{err}");
    }

    #[test]
    fn combinations_and_labels() {
        let yaml = "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {name: m}\nspec:\n  steps: [{name: a, run: 'echo {{ matrix.py }}'}]\n  parallel: {count: 2, matrix: {py: [\"3.11\", 3.12], os: [linux, mac], fast: [true]}}\n";
        let w = match crate::parse_str(std::path::Path::new("m.yaml"), yaml)
            .unwrap()
            .remove(0)
        {
            crate::Definition::Workflow(w) => w,
            other => panic!("{other:?}"),
        };
        let combos = w.spec.combinations().unwrap();
        let labels: Vec<String> = combos.iter().map(variant_label).collect();
        assert_eq!(
            labels,
            [
                "fast=true,os=linux,py=3.11",
                "fast=true,os=linux,py=3.12",
                "fast=true,os=mac,py=3.11",
                "fast=true,os=mac,py=3.12"
            ]
        );
    }

    #[test]
    fn expand_unknown_name_fails() {
        let err = expand("{{ config.baseUrll }}", &cfg(&[("baseUrl", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template refers to unknown parameter \"config.baseUrll\"; did you mean \"baseUrl\"? (known: baseUrl)"
        );
    }

    #[test]
    fn overrides() {
        let got = parse_overrides(&["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(got, cfg(&[("a", "1"), ("b", "x=y"), ("c", "")]));
        let err = parse_overrides(&["nope".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--set takes k=v, got \"nope\"; write it as --set name=value"
        );
        assert!(parse_overrides(&["=v".into()]).is_err());
    }
}
