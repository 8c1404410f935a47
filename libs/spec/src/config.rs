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

/// One `{{ ... }}` found in a template: byte range and the config name it refers to, if any.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    name: Option<&'a str>,
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
        let name = inner
            .strip_prefix("config.")
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace));
        out.push(Placeholder { start, end, name });
        from = end;
    }
    out
}

/// The config names a template refers to (`{{ config.NAME }}`).
pub(crate) fn template_refs(template: &str) -> Vec<&str> {
    placeholders(template)
        .into_iter()
        .filter_map(|p| p.name)
        .collect()
}

/// Expands `{{ config.NAME }}` (whitespace inside the braces optional) from resolved config.
///
/// Other `{{ ... }}` text is left as it is, so shell scripts that use braces keep working.
pub fn expand(template: &str, config: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut last = 0;
    for p in placeholders(template) {
        let Some(name) = p.name else {
            continue;
        };
        let Some(value) = config.get(name) else {
            return Err(Error::UnknownTemplateVariable {
                name: name.to_string(),
                known: config.keys().cloned().collect(),
            });
        };
        out.push_str(&template[last..p.start]);
        out.push_str(value);
        last = p.end;
    }
    out.push_str(&template[last..]);
    Ok(out)
}

impl WorkflowSpec {
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
