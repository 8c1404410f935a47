//! A catalog shared by a running service: reloaded when its directory changes, or replaced
//! by whoever feeds it from elsewhere (custom resources in a cluster).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::is_mount_internal;
use crate::{Catalog, Result};

/// The current [`Catalog`], swapped atomically on reload. Cheap to clone.
#[derive(Clone)]
pub struct SharedCatalog {
    current: Arc<RwLock<Arc<Catalog>>>,
    /// The directory it is loaded from; `None` when its owner feeds it ([`SharedCatalog::new`]).
    dir: Option<PathBuf>,
    /// The files as they were just before the first load: [`SharedCatalog::watch`] compares
    /// against this, so a change made between loading and watching is not missed.
    loaded: Arc<Vec<Seen>>,
}

impl SharedCatalog {
    /// Loads `dir`; fails (with every diagnostic) when it is invalid.
    pub fn load(dir: &Path) -> Result<SharedCatalog> {
        let loaded = fingerprint(dir);
        let catalog = Catalog::load(dir)?;
        Ok(SharedCatalog {
            current: Arc::new(RwLock::new(Arc::new(catalog))),
            dir: Some(dir.to_path_buf()),
            loaded: Arc::new(loaded),
        })
    }

    /// A catalog fed by its owner through [`SharedCatalog::replace`] (the cluster catalog)
    /// instead of a directory; [`SharedCatalog::watch`] on it only waits for shutdown.
    pub fn new(catalog: Catalog) -> SharedCatalog {
        SharedCatalog {
            current: Arc::new(RwLock::new(Arc::new(catalog))),
            dir: None,
            loaded: Arc::new(Vec::new()),
        }
    }

    /// Installs `catalog`: every [`SharedCatalog::get`] from now on returns it.
    pub fn replace(&self, catalog: Catalog) {
        self.set(Arc::new(catalog));
    }

    /// The catalog as it is now.
    pub fn get(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, catalog: Arc<Catalog>) {
        match self.current.write() {
            Ok(mut c) => *c = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
    }

    /// Polls the directory every `every`; reloads when a definition file is added, removed
    /// or modified (or, through a symlink, now points at another file). An invalid new version is refused with a warning naming every problem,
    /// and the previous catalog stays in force. `changed` is called after each reload, once
    /// [`SharedCatalog::get`] returns the new catalog. A catalog made by
    /// [`SharedCatalog::new`] has no directory: this only waits for `shutdown`.
    pub async fn watch(
        self,
        every: Duration,
        shutdown: CancellationToken,
        changed: impl Fn(&Catalog),
    ) {
        let Some(dir) = self.dir.clone() else {
            shutdown.cancelled().await;
            return;
        };
        // Walking and parsing the directory is blocking file I/O: off the async workers.
        let scan = |dir: PathBuf| async move {
            tokio::task::spawn_blocking(move || fingerprint(&dir))
                .await
                .unwrap_or_default()
        };
        let mut last = self.loaded.as_ref().clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = scan(dir.clone()).await;
            if now == last {
                continue;
            }
            last = now;
            let load = dir.clone();
            let loaded = match tokio::task::spawn_blocking(move || Catalog::load(&load)).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "reloading the definitions failed; keeping the previous ones");
                    continue;
                }
            };
            match loaded {
                Ok(c) => {
                    info!(dir = %dir.display(), workflows = c.workflows().count(), triggers = c.triggers().count(), "definitions reloaded");
                    // Installed first, so that `changed` and anyone it tells see the new one.
                    let c = Arc::new(c);
                    self.set(c.clone());
                    changed(&c);
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "definitions changed but are invalid; keeping the previous ones")
                }
            }
        }
    }
}

/// One definition file as the watcher last saw it: its path, the file it resolves to through
/// symlinks, and that file's modification time and size.
type Seen = (PathBuf, Option<PathBuf>, Option<SystemTime>, Option<u64>);

/// Definition files below `dir`, sorted, skipping the entries Kubernetes keeps for itself in
/// a mounted ConfigMap. Symlinks are followed: when kubelet swaps `..data` to a new
/// timestamped directory, every `a.yaml -> ..data/a.yaml` resolves to a new file, so the
/// fingerprint changes even if the content's modification time and size did not.
fn fingerprint(dir: &Path) -> Vec<Seen> {
    fn walk(dir: &Path, out: &mut Vec<Seen>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if is_mount_internal(&e.file_name()) {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let meta = std::fs::metadata(&p).ok();
                out.push((
                    p.clone(),
                    std::fs::canonicalize(&p).ok(),
                    meta.as_ref().and_then(|m| m.modified().ok()),
                    meta.map(|m| m.len()),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
