//! `assay crds [--output-dir DIR]`: the TestWorkflow and TestTrigger
//! CustomResourceDefinitions, generated from the definition types (`assay_spec::crd`).

use anyhow::{Context, Result};

use crate::args::CrdsArgs;
use crate::{flush_stdout, write_stdout};

/// Prints both CRDs as one multi-document YAML stream, or writes them (and a
/// `kustomization.yaml`) into `--output-dir`, creating it when missing.
pub fn run(args: CrdsArgs) -> Result<u8> {
    let Some(dir) = args.output_dir else {
        write_stdout(format_args!("{}", assay_spec::crd::crds_yaml()));
        flush_stdout();
        return Ok(0);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in assay_spec::crd::crd_files() {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}
