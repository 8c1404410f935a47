//! A catalog shared by a running service and reloaded when its directory changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Catalog, Result};

/// The current [`Catalog`], swapped atomically on reload. Cheap to clone.
#[derive(Clone)]
pub struct SharedCatalog {
    current: Arc<RwLock<Arc<Catalog>>>,
    dir: PathBuf,
}

impl SharedCatalog {
    /// Loads `dir`; fails (with every diagnostic) when it is invalid.
    pub fn load(dir: &Path) -> Result<SharedCatalog> {
        let catalog = Catalog::load(dir)?;
        Ok(SharedCatalog {
            current: Arc::new(RwLock::new(Arc::new(catalog))),
            dir: dir.to_path_buf(),
        })
    }

    /// The catalog as it is now.
    pub fn get(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, catalog: Catalog) {
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(catalog),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(catalog),
        }
    }

    /// Polls the directory every `every`; reloads when a definition file is added, removed
    /// or modified. An invalid new version is refused with a warning naming every problem,
    /// and the previous catalog stays in force. `changed` is called after each reload.
    pub async fn watch(
        self,
        every: Duration,
        shutdown: CancellationToken,
        changed: impl Fn(&Catalog),
    ) {
        // Walking and parsing the directory is blocking file I/O: off the async workers.
        let scan = |dir: PathBuf| async move {
            tokio::task::spawn_blocking(move || fingerprint(&dir))
                .await
                .unwrap_or_default()
        };
        let mut last = scan(self.dir.clone()).await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = scan(self.dir.clone()).await;
            if now == last {
                continue;
            }
            last = now;
            let dir = self.dir.clone();
            let loaded = match tokio::task::spawn_blocking(move || Catalog::load(&dir)).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    warn!(dir = %self.dir.display(), error = %e, "reloading the definitions failed; keeping the previous ones");
                    continue;
                }
            };
            match loaded {
                Ok(c) => {
                    info!(dir = %self.dir.display(), workflows = c.workflows().count(), triggers = c.triggers().count(), "definitions reloaded");
                    changed(&c);
                    self.set(c);
                }
                Err(e) => {
                    warn!(dir = %self.dir.display(), error = %e, "definitions changed but are invalid; keeping the previous ones")
                }
            }
        }
    }
}

/// Definition files below `dir` with their modification times, sorted.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push((p.clone(), e.metadata().and_then(|m| m.modified()).ok()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
