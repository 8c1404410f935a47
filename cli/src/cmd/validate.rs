//! `assay validate [PATH]`: every diagnostic, or a table of what was found.

use std::path::Path;

use anyhow::Result;
use assay_spec::{Catalog, Diagnostic, Trigger};

use crate::format::{Table, cell};
use crate::style::{Color, Palette};
use crate::view::{WorkflowView, labels_summary};

/// Loads a directory (recursively) or a single file.
pub fn load(path: &Path) -> assay_spec::Result<Catalog> {
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|source| assay_spec::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let defs = assay_spec::parse_str(path, &text)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Catalog::from_definitions(dir, defs)
    } else {
        Catalog::load(path)
    }
}

/// `file:line:col: error: message` and an indented hint.
pub fn render_diagnostic(d: &Diagnostic, palette: &Palette) -> String {
    let mut out = format!(
        "{}: {}: {}",
        palette.paint(Color::Bold, &d.location.to_string()),
        palette.paint(Color::Red, "error"),
        d.message
    );
    if let Some(hint) = &d.hint {
        out.push_str(&format!(
            "\n    {} {hint}",
            palette.paint(Color::Cyan, "hint:")
        ));
    }
    out
}

/// Prints the problems of a failed load; returns how many there were.
pub fn print_errors(err: &assay_spec::Error, palette: &Palette) -> usize {
    match err {
        assay_spec::Error::Invalid(diags) => {
            for d in diags {
                crate::outln!("{}", render_diagnostic(d, palette));
            }
            diags.len()
        }
        other => {
            crate::outln!("{}: {other}", palette.paint(Color::Red, "error"));
            1
        }
    }
}

pub fn run(path: &Path, palette: &Palette) -> Result<u8> {
    match load(path) {
        Ok(catalog) => {
            crate::out!("{}", render_catalog(&catalog, palette));
            let (w, t) = (catalog.workflows().count(), catalog.triggers().count());
            crate::outln!(
                "{} {} valid: {w} workflow{}, {t} trigger{}",
                palette.paint(Color::Green, "✓"),
                path.display(),
                plural(w),
                plural(t)
            );
            Ok(0)
        }
        Err(e) => {
            let n = print_errors(&e, palette);
            crate::outln!(
                "{} {} is invalid: {n} problem{}",
                palette.paint(Color::Red, "✗"),
                path.display(),
                plural(n)
            );
            Ok(1)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Workflow and trigger tables.
pub fn render_catalog(catalog: &Catalog, palette: &Palette) -> String {
    let mut out = String::new();
    let mut workflows = Table::new(["WORKFLOW", "LABELS", "SHARDS", "PARAMETERS", "FILE"]);
    for w in catalog.workflows() {
        let v = WorkflowView::from_workflow(w);
        workflows.row(vec![
            (v.name.clone(), Color::Bold),
            cell(labels_summary(&v.labels)),
            cell(v.shards.to_string()),
            cell(v.parameters_summary()),
            (v.file.clone(), Color::Dim),
        ]);
    }
    if !workflows.is_empty() {
        out.push_str(&workflows.render(palette));
    }
    let mut triggers = Table::new(["TRIGGER", "ON", "RUNS", "FILE"]);
    for t in catalog.triggers() {
        triggers.row(vec![
            (t.name.clone(), Color::Bold),
            cell(trigger_on(t)),
            cell(trigger_runs(t)),
            (t.source.to_string(), Color::Dim),
        ]);
    }
    if !triggers.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&triggers.render(palette));
    }
    out
}

/// What a trigger reacts to, in a few words.
pub fn trigger_on(t: &Trigger) -> String {
    let on = &t.spec.on;
    if let Some(e) = &on.event {
        let mut parts = vec![format!(
            "event {}",
            e.source.as_deref().filter(|s| !s.is_empty()).unwrap_or("*")
        )];
        if let Some(ty) = e.r#type.as_deref().filter(|s| !s.is_empty()) {
            parts.push(format!("type={ty}"));
        }
        if !e.labels.is_empty() {
            parts.push(labels_summary(&e.labels));
        }
        parts.join(" ")
    } else if let Some(c) = &on.cron {
        match &c.timezone {
            Some(tz) => format!("cron \"{}\" {tz}", c.schedule),
            None => format!("cron \"{}\"", c.schedule),
        }
    } else if on.kubernetes.is_some() {
        "kubernetes".to_string()
    } else if let Some(w) = &on.webhook {
        let mut parts = vec![format!("webhook {}", w.provider.as_deref().unwrap_or("*"))];
        for (key, values) in [
            ("events", &w.events),
            ("repositories", &w.repositories),
            ("branches", &w.branches),
            ("tags", &w.tags),
            ("paths", &w.paths),
        ] {
            if !values.is_empty() {
                parts.push(format!("{key}={}", values.join(",")));
            }
        }
        parts.join(" ")
    } else {
        "-".to_string()
    }
}

/// What a trigger runs: a workflow name or a label selector.
pub fn trigger_runs(t: &Trigger) -> String {
    let run = &t.spec.run;
    match (&run.workflow, &run.selector) {
        (Some(w), _) => w.clone(),
        (None, Some(sel)) => format!("selector {}", labels_summary(sel)),
        (None, None) => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn diagnostic_has_location_and_hint() {
        let d = Diagnostic {
            location: assay_spec::Location {
                file: PathBuf::from("a.yaml"),
                line: 3,
                column: 7,
            },
            message: "unknown field `paralel`".into(),
            hint: Some("did you mean `parallel`?".into()),
        };
        assert_eq!(
            render_diagnostic(&d, &Palette::plain()),
            "a.yaml:3:7: error: unknown field `paralel`\n    hint: did you mean `parallel`?"
        );
    }
}
