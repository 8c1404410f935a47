//! `definitions_yaml`: the TestWorkflow / TestTrigger parser, validator and catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assay_spec::{
    Catalog, Definition, Diagnostic, Error, EventView, Trigger, Workflow, expand, format_duration,
    parse_duration, parse_str,
};
use chrono::{DateTime, Utc};

const FILE: &str = "defs/fuzz.yaml";

/// Parses the input as a definitions file and loads it as a catalog.
///
/// - Refusals are [`Error::Invalid`] with at least one diagnostic, each naming the file
///   and a line and column inside the input.
/// - The catalog refuses whatever the parser refuses, with the parser's diagnostics first.
/// - What is accepted holds up: defaults resolve and expand every template, durations
///   print and read back the same, a cron trigger has a schedule that can be evaluated,
///   an event trigger fires for the event it describes, and a catalog trigger names a
///   workflow in the catalog.
pub fn definitions_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let file = Path::new(FILE);
    let parsed = parse_str(file, &text);
    let defs = match &parsed {
        Ok(defs) => Some(defs),
        Err(Error::Invalid(diags)) => {
            assert!(!diags.is_empty(), "refused without a diagnostic");
            for d in diags {
                check_diagnostic(&text, d);
            }
            None
        }
        Err(e) => panic!("parse_str failed with something else than diagnostics: {e}"),
    };
    for def in defs.into_iter().flatten() {
        assert!(
            inside_at(&text, def.source()),
            "definition {} starts outside the input at {}",
            def.name(),
            def.source()
        );
        match def {
            Definition::Workflow(w) => workflow(w),
            Definition::Trigger(t) => trigger(t),
        }
    }

    let catalog = Catalog::from_sources(
        PathBuf::from("defs"),
        &[(file.to_path_buf(), text.to_string())],
    );
    match (&parsed, catalog) {
        (_, Err(Error::Invalid(diags))) => {
            assert!(!diags.is_empty(), "catalog refused without a diagnostic");
            for d in &diags {
                check_diagnostic(&text, d);
            }
            if let Err(Error::Invalid(first)) = &parsed {
                assert!(
                    diags.starts_with(first),
                    "the catalog lost the parser's diagnostics"
                );
            }
        }
        (_, Err(e)) => panic!("catalog failed with something else than diagnostics: {e}"),
        (Err(e), Ok(_)) => panic!("the catalog accepted what the parser refused: {e}"),
        (Ok(defs), Ok(catalog)) => {
            for def in defs {
                match def {
                    Definition::Workflow(w) => {
                        assert_eq!(catalog.workflow(&w.name).ok(), Some(w));
                    }
                    Definition::Trigger(t) => {
                        assert_eq!(catalog.trigger(&t.name).ok(), Some(t));
                    }
                }
            }
            for t in catalog.triggers() {
                if let Some(name) = &t.spec.run.workflow {
                    assert!(
                        catalog.workflow(name).is_ok(),
                        "trigger {} runs unknown workflow {name}",
                        t.name
                    );
                }
            }
        }
    }
}

fn check_diagnostic(text: &str, d: &Diagnostic) {
    assert_eq!(
        d.location.file,
        Path::new(FILE),
        "diagnostic names another file: {d}"
    );
    assert!(
        !d.message.trim().is_empty(),
        "diagnostic without a message: {d:?}"
    );
    assert!(
        inside_at(text, &d.location),
        "diagnostic points outside the input ({} lines): {d}",
        text.split('\n').count()
    );
}

fn inside_at(text: &str, at: &assay_spec::Location) -> bool {
    crate::inside(text, at.line, at.column)
}

fn workflow(w: &Workflow) {
    let spec = &w.spec;
    let required = spec.config.values().any(|p| p.default.is_none());
    let config = match w.resolve_config(&BTreeMap::new()) {
        Ok(config) => config,
        Err(Error::MissingParameter { .. }) if required => return,
        Err(e) => panic!(
            "validated workflow {}: defaults do not resolve: {e}",
            w.name
        ),
    };
    for (name, value) in &config {
        let ty = spec.config[name].r#type;
        assert_eq!(
            ty.check(value).as_deref(),
            Some(value.as_str()),
            "resolved {name}={value:?} is not canonical {ty}"
        );
    }
    let mut templates: Vec<&str> = spec.env.values().map(String::as_str).collect();
    if let Some(c) = &spec.container {
        templates.extend(c.env.values().map(String::as_str));
    }
    let steps = spec.setup.iter().chain(&spec.steps).chain(&spec.after);
    for step in steps.clone() {
        templates.push(&step.run);
        templates.extend(step.env.values().map(String::as_str));
    }
    if let Some(tests) = &spec.tests {
        templates.push(&tests.run);
        templates.extend(tests.list.as_deref());
    }
    for t in templates {
        if let Err(e) = expand(t, &config) {
            panic!(
                "validated workflow {}: template {t:?} does not expand: {e}",
                w.name
            );
        }
    }
    for d in steps.filter_map(|s| s.timeout).chain(spec.timeout) {
        roundtrip_duration(d);
    }
}

fn trigger(t: &Trigger) {
    if let Some(settle) = t.spec.settle {
        roundtrip_duration(settle);
    }
    if let Some(cron) = &t.spec.on.cron {
        let Some(schedule) = t.cron() else {
            panic!("validated trigger {}: cron {cron:?} does not parse", t.name);
        };
        let at = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).expect("a fixed instant");
        if let Some(next) = schedule.next_after(at) {
            assert!(next > at, "next fire {next} is not after {at}");
        }
    }
    if let Some(m) = &t.spec.on.event {
        let labels = m.labels.clone();
        let ev = EventView {
            source: m.source.as_deref().unwrap_or("any"),
            r#type: m.r#type.as_deref().unwrap_or("any"),
            labels: &labels,
            changed_paths: None,
        };
        assert!(
            t.matches(&ev),
            "trigger {} does not fire for its own event",
            t.name
        );
    }
}

fn roundtrip_duration(d: std::time::Duration) {
    let text = format_duration(d);
    assert_eq!(
        parse_duration(&text),
        Ok(d),
        "duration {d:?} prints as {text:?}, which reads back differently"
    );
}
