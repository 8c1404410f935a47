//! A fake Kubernetes API server for tests: real HTTP, real `kube` client and `kubectl`.
//!
//! [`FakeKube::start`] binds 127.0.0.1 on a free port and serves discovery (legacy form,
//! plus just enough OpenAPI v3 for `kubectl apply`), CRUD with resourceVersions, label and
//! field selectors, merge/strategic (as merge)/JSON patches and server-side apply (as
//! create-or-merge; no managedFields or apply conflicts), the `status` subresource,
//! `dryRun=All`, deletecollection, watches (bookmarks, streaming lists, `timeoutSeconds`,
//! 410 Gone after [`FakeKube::compact`]), pod logs fed by [`FakeKube::append_log`], and any
//! kind a CustomResourceDefinition created through the API declares. Objects are stored as
//! JSON, so any kind works; there is no schema validation, admission, finalizer or garbage
//! collection.
//!
//! A test can act as a controller through [`FakeKube::put`] and friends, make a verb
//! return 403 ([`FakeKube::forbid`]), make creates return 422
//! ([`FakeKube::reject_create`]), and run Pods as local processes with [`KubeletSim`].

mod discovery;
mod kubelet;
mod logs;
mod openapi;
mod patch;
mod resources;
mod selector;
mod server;
mod status;
mod store;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

pub use kubelet::{Fault, KubeletSim};
pub use status::ApiError;

use logs::Logs;
use store::{Store, WriteMode};

/// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK by default.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// State shared by the server's handlers and the test API.
pub(crate) struct Shared {
    store: Mutex<Store>,
    logs: Mutex<Logs>,
    /// Bumped on every log change, so that followers wake up.
    log_changes: tokio::sync::watch::Sender<u64>,
    bookmark_interval: Duration,
    /// `host:port`, for `/api`'s serverAddressByClientCIDRs.
    address: String,
    /// Watches currently streaming, so that a test can wait until a client watches.
    open_watches: std::sync::atomic::AtomicUsize,
    /// Set when the [`FakeKube`] is dropped: open watches and log streams end.
    stopped: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn logs(&self) -> MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the fake is dropped; streaming responses end then, as they would
    /// when a real server goes away.
    async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    fn pod_exists(&self, ns: &str, name: &str) -> bool {
        let store = self.lock();
        store
            .kind("", "pods")
            .is_some_and(|k| store.get(&k, ns, name).is_some())
    }
}

/// Options for [`FakeKube::start_with`].
#[derive(Debug, Clone)]
pub struct FakeKubeOptions {
    /// Address to bind; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

impl Default for FakeKubeOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        }
    }
}

/// A running fake API server; it stops when dropped.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
    kubeconfig_dir: tempfile::TempDir,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        self.shared.stopped.send_replace(true);
    }
}

impl FakeKube {
    /// Starts a fake on 127.0.0.1 and a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(FakeKubeOptions::default()).await
    }

    /// Starts a fake with the given options.
    pub async fn start_with(options: FakeKubeOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(options.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            logs: Mutex::new(Logs::new()),
            log_changes: tokio::sync::watch::channel(0).0,
            bookmark_interval: options.bookmark_interval,
            address: addr.to_string(),
            open_watches: Default::default(),
            stopped: tokio::sync::watch::channel(false).0,
        });
        let app = server::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake kube server stopped");
            }
        });
        Ok(Self {
            shared,
            addr,
            server,
            kubeconfig_dir: tempfile::tempdir()?,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client talking to this fake, default namespace `default`.
    ///
    /// # Panics
    ///
    /// If kube cannot build a client for a plain-HTTP URL (its TLS stack failing to
    /// initialise); a test cannot go on without one.
    pub fn client(&self) -> ::kube::Client {
        let url = self
            .url()
            .parse()
            .unwrap_or_else(|_| unreachable!("an http URL with an IP and a port parses"));
        let config = ::kube::Config::new(url);
        ::kube::Client::try_from(config)
            .unwrap_or_else(|e| panic!("kube client for the fake API server: {e}"))
    }

    /// A kubeconfig (YAML) whose current context points at this fake.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    /// Writes [`Self::kubeconfig`] to a file that lives as long as the fake, returns its path.
    /// Written once, through a temporary file renamed into place: clients started at once
    /// each call this, and rewriting the file in place let one read it half written.
    pub fn kubeconfig_file(&self) -> std::io::Result<PathBuf> {
        let path = self.kubeconfig_dir.path().join("kubeconfig");
        if !path.exists() {
            let tmp = tempfile::NamedTempFile::new_in(self.kubeconfig_dir.path())?;
            std::fs::write(tmp.path(), self.kubeconfig())?;
            tmp.persist(&path).map_err(|e| e.error)?;
        }
        Ok(path)
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// How many watch requests are streaming now: a test waits for a client's watch to be
    /// open before making the change it must see.
    pub fn open_watches(&self) -> usize {
        self.shared
            .open_watches
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops the watch history: a watch or exact list from an older resourceVersion gets
    /// 410 Gone, so a test can force a relist.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Makes `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`) on
    /// `resource` (`pods`, `pods/log`, `testworkflows/status`, or `*`) in `group` ("" for
    /// core) answer 403 Forbidden.
    pub fn forbid(&self, verb: &str, group: &str, resource: &str) {
        self.shared
            .lock()
            .forbidden
            .insert((verb.into(), group.into(), resource.into()));
    }

    /// Undoes [`Self::forbid`].
    pub fn allow(&self, verb: &str, group: &str, resource: &str) {
        self.shared
            .lock()
            .forbidden
            .remove(&(verb.into(), group.into(), resource.into()));
    }

    /// Makes every create of `resource` in `group` answer 422 Invalid with `message`.
    pub fn reject_create(&self, group: &str, resource: &str, message: &str) {
        self.shared
            .lock()
            .rejected
            .insert((group.into(), resource.into()), message.into());
    }

    /// Undoes [`Self::reject_create`].
    pub fn accept_create(&self, group: &str, resource: &str) {
        self.shared
            .lock()
            .rejected
            .remove(&(group.into(), resource.into()));
    }

    /// One object by qualified resource name (`pods`, `deployments.apps`,
    /// `testworkflows.assay.dev`); `ns` is ignored for cluster-scoped kinds.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let store = self.shared.lock();
        let kind = store.kind_by_name(resource)?;
        store.get(&kind, ns, name)
    }

    /// Objects of a kind in `ns`, or in all namespaces for `None`.
    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Value> {
        let store = self.shared.lock();
        store
            .kind_by_name(resource)
            .map(|k| store.list(&k, ns))
            .unwrap_or_default()
    }

    /// Creates or replaces an object exactly as given, `.status` included, as a controller
    /// would; the namespace and name come from its metadata. Watches see ADDED or MODIFIED.
    pub fn put(&self, resource: &str, object: Value) -> Result<Value, ApiError> {
        let mut store = self.shared.lock();
        let kind = store
            .kind_by_name(resource)
            .ok_or_else(|| ApiError::not_found("resource", resource))?;
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !name.is_empty() && store.get(&kind, &ns, &name).is_some() {
            store.replace(&kind, &ns, &name, object, WriteMode::Direct)
        } else {
            store.create(&kind, &ns, object, WriteMode::Direct)
        }
    }

    /// Deletes an object; watches see DELETED. `None` if it did not exist.
    pub fn delete(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let mut store = self.shared.lock();
        let kind = store.kind_by_name(resource)?;
        store.delete(&kind, ns, name).ok()
    }

    /// Appends text to a container's log (`pods/<pod>/log?container=<container>`).
    pub fn append_log(&self, ns: &str, pod: &str, container: &str, text: &str) {
        logs::append(&self.shared, ns, pod, container, text);
    }

    /// Marks a container's log as ended: `follow` streams on it finish.
    pub fn close_log(&self, ns: &str, pod: &str, container: &str) {
        logs::close(&self.shared, ns, pod, container);
    }
}

/// A kubeconfig for a plain-HTTP server at `url`, context `fake`, namespace `default`.
pub fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
users:
- name: fake
  user:
    token: fake
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
preferences: {{}}
"
    )
}
