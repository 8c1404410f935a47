//! The set of workflows and triggers read from one directory (or from custom resources).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{Definition, Trigger, Workflow};
use crate::{Diagnostic, Error, Result, did_you_mean, parse_str};

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    dir: PathBuf,
    workflows: BTreeMap<String, Workflow>,
    triggers: BTreeMap<String, Trigger>,
}

/// Why [`Catalog::from_definitions_lenient`] left a definition out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An earlier definition of the same kind has its name.
    Duplicate,
    /// A trigger runs a workflow that is not defined or sets a parameter it does not declare.
    Reference,
}

/// A definition [`Catalog::from_definitions_lenient`] left out, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    pub definition: Definition,
    pub problem: Diagnostic,
    pub refusal: Refusal,
}

impl Catalog {
    /// Reads every `*.yaml` / `*.yml` below `dir` (recursively, in sorted order), validates
    /// them and checks names are unique and triggers name existing workflows and parameters.
    /// Every problem in every file is reported at once.
    pub fn load(dir: &Path) -> Result<Catalog> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::metadata(dir).map_err(io(dir))?;
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort();
        let mut sources = Vec::with_capacity(files.len());
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(io(&file))?;
            sources.push((file, text));
        }
        Catalog::from_sources(dir.to_path_buf(), &sources)
    }

    /// What [`Catalog::load`] does once the files are read: parses and validates every
    /// `(path, text)` in order, checks names are unique and triggers name existing workflows
    /// and parameters, and reports every problem at once. Pure: no I/O.
    pub fn from_sources(dir: PathBuf, sources: &[(PathBuf, String)]) -> Result<Catalog> {
        let mut defs = Vec::new();
        let mut diags = Vec::new();
        for (file, text) in sources {
            match parse_str(file, text) {
                Ok(mut d) => defs.append(&mut d),
                Err(Error::Invalid(mut d)) => diags.append(&mut d),
                Err(e) => return Err(e),
            }
        }
        let catalog = match Catalog::from_definitions(dir, defs) {
            Ok(c) => Some(c),
            Err(Error::Invalid(mut d)) => {
                diags.append(&mut d);
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(c) = &catalog {
            diags.extend(c.check_references().into_iter().map(|(_, d)| d));
        }
        match catalog {
            Some(c) if diags.is_empty() => Ok(c),
            _ => Err(Error::Invalid(diags)),
        }
    }

    /// Builds a catalog from already parsed definitions; duplicate names are an error that
    /// names both places.
    pub fn from_definitions(dir: PathBuf, defs: Vec<Definition>) -> Result<Catalog> {
        let (catalog, refused) = Catalog::insert_all(dir, defs);
        if refused.is_empty() {
            Ok(catalog)
        } else {
            Err(Error::Invalid(
                refused.into_iter().map(|r| r.problem).collect(),
            ))
        }
    }

    /// Builds a catalog from definitions that come and go independently (custom resources):
    /// each is checked as [`Catalog::from_sources`] checks files, but a problem leaves out
    /// only the definition it is about. A definition whose name an earlier one already took
    /// is refused ([`Refusal::Duplicate`]), then a trigger that runs an undefined workflow or
    /// sets an undeclared parameter ([`Refusal::Reference`]); the rest make the catalog.
    /// The diagnostics are the ones `from_sources` reports for the same problems.
    pub fn from_definitions_lenient(
        dir: PathBuf,
        defs: Vec<Definition>,
    ) -> (Catalog, Vec<Refused>) {
        let (mut catalog, mut refused) = Catalog::insert_all(dir, defs);
        for (name, problem) in catalog.check_references() {
            if let Some(t) = catalog.triggers.remove(&name) {
                refused.push(Refused {
                    definition: Definition::Trigger(t),
                    problem,
                    refusal: Refusal::Reference,
                });
            }
        }
        (catalog, refused)
    }

    /// Inserts every definition in order; one whose name is taken is refused with a
    /// diagnostic that names both places.
    fn insert_all(dir: PathBuf, defs: Vec<Definition>) -> (Catalog, Vec<Refused>) {
        let mut catalog = Catalog {
            dir,
            ..Catalog::default()
        };
        let mut refused = Vec::new();
        for def in defs {
            let first = match &def {
                Definition::Workflow(w) => catalog
                    .workflows
                    .get(&w.name)
                    .map(|f| ("workflow", f.source.clone())),
                Definition::Trigger(t) => catalog
                    .triggers
                    .get(&t.name)
                    .map(|f| ("trigger", f.source.clone())),
            };
            match (first, def) {
                (None, Definition::Workflow(w)) => {
                    catalog.workflows.insert(w.name.clone(), w);
                }
                (None, Definition::Trigger(t)) => {
                    catalog.triggers.insert(t.name.clone(), t);
                }
                (Some((kind, first)), def) => {
                    let name = def.name();
                    let second = def.source();
                    let problem = Diagnostic::new(
                        second.clone(),
                        format!(
                            "duplicate {kind} name \"{name}\": defined in {first} and {second}"
                        ),
                    )
                    .hint(format!("rename one of them; {kind} names must be unique"));
                    refused.push(Refused {
                        definition: def,
                        problem,
                        refusal: Refusal::Duplicate,
                    });
                }
            }
        }
        (catalog, refused)
    }

    /// Triggers that run a workflow that does not exist or set parameters it does not
    /// declare: the trigger's name and the problem.
    fn check_references(&self) -> Vec<(String, Diagnostic)> {
        let mut out = Vec::new();
        let known: Vec<&str> = self.workflows.keys().map(String::as_str).collect();
        for t in self.triggers.values() {
            let run = &t.spec.run;
            let targets: Vec<&Workflow> = match (&run.workflow, &run.selector) {
                (Some(name), _) => match self.workflows.get(name) {
                    Some(w) => vec![w],
                    None => {
                        let mut hint = format!("known workflows: {}", or_none(&known));
                        if let Some(best) = did_you_mean(name, known.iter().copied()) {
                            hint = format!("did you mean \"{best}\"? ({hint})");
                        }
                        out.push((
                            t.name.clone(),
                            Diagnostic::new(
                                t.source.clone(),
                                format!(
                                    "trigger \"{}\" runs workflow \"{name}\", which is not defined",
                                    t.name
                                ),
                            )
                            .hint(hint),
                        ));
                        continue;
                    }
                },
                (None, Some(sel)) => self.select(sel),
                (None, None) => continue,
            };
            for w in targets {
                for key in run.config.keys() {
                    if !w.spec.config.contains_key(key) {
                        let declared: Vec<&str> =
                            w.spec.config.keys().map(String::as_str).collect();
                        let mut hint = format!("declared: {}", or_none(&declared));
                        if let Some(best) = did_you_mean(key, declared.iter().copied()) {
                            hint = format!("did you mean \"{best}\"? ({hint})");
                        }
                        out.push((
                            t.name.clone(),
                            Diagnostic::new(
                                t.source.clone(),
                                format!(
                                    "trigger \"{}\" sets parameter \"{key}\" that workflow \"{}\" does not declare",
                                    t.name, w.name
                                ),
                            )
                            .hint(hint),
                        ));
                    }
                }
            }
        }
        out
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn workflow(&self, name: &str) -> Result<&Workflow> {
        self.workflows
            .get(name)
            .ok_or_else(|| Error::WorkflowNotFound {
                name: name.to_string(),
                dir: self.dir.clone(),
                known: self.workflows.keys().cloned().collect(),
            })
    }

    pub fn trigger(&self, name: &str) -> Result<&Trigger> {
        self.triggers
            .get(name)
            .ok_or_else(|| Error::TriggerNotFound {
                name: name.to_string(),
                dir: self.dir.clone(),
                known: self.triggers.keys().cloned().collect(),
            })
    }

    /// All workflows, sorted by name.
    pub fn workflows(&self) -> impl Iterator<Item = &Workflow> {
        self.workflows.values()
    }

    /// All triggers, sorted by name.
    pub fn triggers(&self) -> impl Iterator<Item = &Trigger> {
        self.triggers.values()
    }

    /// Workflows whose labels contain every pair of `selector`, sorted by name.
    pub fn select(&self, selector: &BTreeMap<String, String>) -> Vec<&Workflow> {
        self.workflows
            .values()
            .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .collect()
    }
}

fn or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Whether a directory entry is one Kubernetes keeps for itself in a ConfigMap or Secret
/// mount: the timestamped directory holding the real files (`..2026_12_04_13_00_00.1`) and
/// the `..data` symlink to it. The files are also reachable through the top-level symlinks
/// (`a.yaml -> ..data/a.yaml`); walking these entries as well would read each one three times.
pub(crate) fn is_mount_internal(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"..")
}

/// Every `*.yaml` / `*.yml` below `dir`, following symlinks and skipping the entries
/// Kubernetes keeps for itself in a mounted volume ([`is_mount_internal`]).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if is_mount_internal(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}
