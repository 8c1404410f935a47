//! [`KubeletSim`]: a kubelet for the fake. It watches Pods, binds each to its node, runs
//! each container's `command` + `args` as a local child process (env from the Pod spec),
//! writes its stdout and stderr to the Pod's log, and moves the Pod through
//! Pending → Running → Succeeded/Failed with container statuses. A test can inject
//! OOMKilled, Evicted, ErrImagePull or node loss for a named Pod.
//!
//! Volumes: each `emptyDir` volume is a temporary directory for the Pod's life, and each
//! `secret` volume one holding a file per key of the fake's Secret in the Pod's namespace
//! (`data` decoded, `stringData` as is; `items` pick keys and name their files;
//! `defaultMode`/`mode` set the files' modes; read-only is not enforced). A container's
//! `volumeMounts` are honoured by rewriting its mount paths wherever they start a string
//! of its `command`, `args`, `env` values and `workingDir` (so an init container that
//! copies a file into an emptyDir and a main container that runs it from there work as on
//! a node). A Secret volume whose Secret (or an item's key) is missing keeps the Pod
//! Pending with its containers waiting (`PodInitializing`/`ContainerCreating`) and records
//! a Warning Event `FailedMount` as a kubelet does. Env `valueFrom.secretKeyRef` reads the
//! fake's Secret; a missing one leaves the container waiting with
//! `CreateContainerConfigError`. Other volume kinds and `valueFrom` sources are not
//! simulated.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::store::{EventType, WriteMode, now};
use super::{FakeKube, Shared, logs};

/// A failure a test makes happen to one Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The containers are killed as out of memory: exit code 137, reason OOMKilled.
    OomKilled,
    /// The Pod is evicted: containers killed, phase Failed, reason Evicted.
    Evicted,
    /// The image cannot be pulled: the Pod stays Pending with ErrImagePull (inject it
    /// before the Pod is created).
    ErrImagePull,
    /// The node stops reporting: containers killed, phase Unknown, reason NodeLost.
    NodeLost,
}

/// What a running Pod's task is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Nothing,
    Fault(Fault),
    Deleted,
}

type PodKey = (String, String);

/// Shared between the sim's handle and its tasks.
struct Sim {
    shared: Arc<Shared>,
    node: String,
    /// Faults injected for Pods not started yet.
    pending: Mutex<HashMap<PodKey, Fault>>,
    /// Signals to Pods being run.
    running: Mutex<HashMap<PodKey, watch::Sender<Signal>>>,
    /// Numbers the Events it records.
    events: std::sync::atomic::AtomicU64,
}

/// A simulated kubelet on one node; it stops when dropped.
pub struct KubeletSim {
    sim: Arc<Sim>,
    task: JoinHandle<()>,
}

impl Drop for KubeletSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeletSim {
    /// Starts running the fake's Pods, existing and future, on `node`.
    pub fn start(fake: &FakeKube, node: &str) -> Self {
        let sim = Arc::new(Sim {
            shared: fake.shared.clone(),
            node: node.to_string(),
            pending: Mutex::default(),
            running: Mutex::default(),
            events: Default::default(),
        });
        let (existing, events) = {
            let store = sim.shared.lock();
            let pods = store.kind("", "pods");
            let existing = pods.map(|k| store.list(&k, None)).unwrap_or_default();
            // Cannot be expired: it is the newest resourceVersion.
            let events = store.watch_from(store.resource_version()).map(|(_, rx)| rx);
            (existing, events)
        };
        let task_sim = sim.clone();
        let task = tokio::spawn(async move {
            for pod in existing {
                task_sim.admit(&pod);
            }
            if let Ok(events) = events {
                task_sim.follow(events).await;
            }
        });
        Self { sim, task }
    }

    /// Makes `fault` happen to the Pod `ns/name`: at once if it is running, else when it
    /// starts.
    pub fn inject(&self, ns: &str, name: &str, fault: Fault) {
        let key = (ns.to_string(), name.to_string());
        let running = lock(&self.sim.running);
        match running.get(&key) {
            Some(tx) => {
                let _ = tx.send(Signal::Fault(fault));
            }
            None => {
                lock(&self.sim.pending).insert(key, fault);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    async fn follow(self: &Arc<Self>, mut events: broadcast::Receiver<Arc<super::store::Event>>) {
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if event.resource != "pods" {
                continue;
            }
            match event.kind {
                EventType::Added => self.admit(&event.object),
                EventType::Deleted => {
                    if let Some(tx) = lock(&self.running).remove(&key_of(&event.object)) {
                        let _ = tx.send(Signal::Deleted);
                    }
                }
                EventType::Modified => {}
            }
        }
    }

    /// Starts running a Pod that no kubelet has taken yet.
    fn admit(self: &Arc<Self>, pod: &Value) {
        let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str);
        if bound.is_some_and(|n| n != self.node) {
            return;
        }
        let key = key_of(pod);
        let mut running = lock(&self.running);
        if running.contains_key(&key) || phase(pod).is_some_and(|p| p != "Pending") {
            return;
        }
        let (tx, rx) = watch::channel(Signal::Nothing);
        if let Some(fault) = lock(&self.pending).remove(&key) {
            let _ = tx.send(Signal::Fault(fault));
        }
        running.insert(key.clone(), tx);
        let sim = self.clone();
        let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        tokio::spawn(async move {
            sim.run_pod(&key, &spec, rx).await;
            lock(&sim.running).remove(&key);
        });
    }

    /// Writes the Pod's status (and node) through the store, as a kubelet would.
    fn update(&self, key: &PodKey, f: impl FnOnce(&mut Value)) {
        let mut store = self.shared.lock();
        let Some(kind) = store.kind("", "pods") else {
            return;
        };
        let Some(mut pod) = store.get(&kind, &key.0, &key.1) else {
            return;
        };
        f(&mut pod);
        let _ = store.replace(&kind, &key.0, &key.1, pod, WriteMode::Direct);
    }

    async fn run_pod(&self, key: &PodKey, spec: &Value, mut signals: watch::Receiver<Signal>) {
        let containers: Vec<Value> = spec
            .get("containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let names: Vec<String> = containers.iter().map(container_name).collect();
        let node = self.node.clone();
        self.update(key, |pod| {
            pod["spec"]["nodeName"] = json!(node);
            pod["status"]["phase"] = json!("Pending");
            pod["status"]["conditions"] =
                json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
        });
        if *signals.borrow() == Signal::Fault(Fault::ErrImagePull) {
            self.update(key, |pod| {
                pod["status"]["containerStatuses"] = json!(names.iter().map(|n| json!({
                    "name": n, "ready": false, "restartCount": 0, "image": "",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "simulated image pull failure"}},
                })).collect::<Vec<_>>());
            });
            return;
        }
        let volumes = match Volumes::new(spec, |name| self.secret(&key.0, name)) {
            Ok(v) => v,
            Err(message) => {
                // As a kubelet: the Pod stays Pending, no container is created, and only an
                // event says why.
                self.record_event(key, "FailedMount", &message);
                let inits: Vec<String> = spec
                    .get("initContainers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(container_name).collect())
                    .unwrap_or_default();
                let reason = if inits.is_empty() {
                    "ContainerCreating"
                } else {
                    "PodInitializing"
                };
                let waiting = |n: &String| {
                    json!({"name": n, "ready": false, "restartCount": 0, "image": "",
                        "state": {"waiting": {"reason": reason}}})
                };
                self.update(key, |pod| {
                    if !inits.is_empty() {
                        pod["status"]["initContainerStatuses"] =
                            json!(inits.iter().map(waiting).collect::<Vec<_>>());
                    }
                    pod["status"]["containerStatuses"] =
                        json!(names.iter().map(waiting).collect::<Vec<_>>());
                });
                return;
            }
        };
        if !self
            .run_init_containers(key, spec, &signals, &volumes)
            .await
        {
            return;
        }
        let mut envs = Vec::new();
        for c in &containers {
            match self.env_of(&key.0, c, &volumes.mounts(c)) {
                Ok(env) => envs.push(env),
                Err(message) => {
                    self.config_error(key, "containerStatuses", &names, c, &message);
                    return;
                }
            }
        }
        let started = now();
        self.update(key, |pod| {
            pod["status"]["phase"] = json!("Running");
            pod["status"]["startTime"] = json!(started);
            pod["status"]["containerStatuses"] = json!(
                names
                    .iter()
                    .map(|n| json!({
                        "name": n, "ready": true, "restartCount": 0, "image": "",
                        "state": {"running": {"startedAt": started}},
                    }))
                    .collect::<Vec<_>>()
            );
        });
        let runs = containers
            .iter()
            .zip(envs)
            .map(|(c, env)| self.run_container(key, c, env, signals.clone(), &volumes));
        let exits = futures::future::join_all(runs).await;
        let signal = *signals.borrow_and_update();
        if signal == Signal::Deleted {
            return;
        }
        let finished = now();
        self.update(key, |pod| {
            let statuses: Vec<Value> = names
                .iter()
                .zip(&exits)
                .map(|(n, (code, reason))| {
                    json!({
                        "name": n, "ready": false, "restartCount": 0, "image": "",
                        "state": {"terminated": {"exitCode": code, "reason": reason,
                            "startedAt": started, "finishedAt": finished}},
                    })
                })
                .collect();
            pod["status"]["containerStatuses"] = json!(statuses);
            let (phase, reason) = match signal {
                Signal::Fault(Fault::Evicted) => ("Failed", Some("Evicted")),
                Signal::Fault(Fault::NodeLost) => ("Unknown", Some("NodeLost")),
                _ if exits.iter().all(|(code, _)| *code == 0) => ("Succeeded", None),
                _ => ("Failed", None),
            };
            pod["status"]["phase"] = json!(phase);
            if let Some(r) = reason {
                pod["status"]["reason"] = json!(r);
                pod["status"]["message"] = json!(format!("simulated: {r}"));
            }
        });
        for n in &names {
            logs::close(&self.shared, &key.0, &key.1, n);
        }
    }

    /// Runs the init containers one after another while the Pod is Pending; on the first
    /// that fails the Pod is Failed and the main containers never start. Returns whether
    /// the main containers may start.
    async fn run_init_containers(
        &self,
        key: &PodKey,
        spec: &Value,
        signals: &watch::Receiver<Signal>,
        volumes: &Volumes,
    ) -> bool {
        let inits: Vec<Value> = spec
            .get("initContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut statuses = Vec::new();
        let names: Vec<String> = inits.iter().map(container_name).collect();
        for init in &inits {
            let env = match self.env_of(&key.0, init, &volumes.mounts(init)) {
                Ok(env) => env,
                Err(message) => {
                    self.config_error(key, "initContainerStatuses", &names, init, &message);
                    return false;
                }
            };
            let (code, reason) = self
                .run_container(key, init, env, signals.clone(), volumes)
                .await;
            if *signals.borrow() == Signal::Deleted {
                return false;
            }
            statuses.push(json!({
                "name": container_name(init), "ready": code == 0, "restartCount": 0, "image": "",
                "state": {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now()}},
            }));
            let failed = code != 0;
            self.update(key, |pod| {
                pod["status"]["initContainerStatuses"] = json!(statuses);
                if failed {
                    pod["status"]["phase"] = json!("Failed");
                }
            });
            logs::close(&self.shared, &key.0, &key.1, &container_name(init));
            if failed {
                return false;
            }
        }
        true
    }

    /// Runs one container's command; returns its exit code and termination reason.
    async fn run_container(
        &self,
        key: &PodKey,
        container: &Value,
        env: Vec<(String, String)>,
        mut signals: watch::Receiver<Signal>,
        volumes: &Volumes,
    ) -> (i64, &'static str) {
        let name = container_name(container);
        let mounts = volumes.mounts(container);
        let strings = |field: &str| -> Vec<String> {
            container
                .get(field)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| rewrite(s, &mounts))
                        .collect()
                })
                .unwrap_or_default()
        };
        let argv: Vec<String> = strings("command")
            .into_iter()
            .chain(strings("args"))
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return (0, "Completed");
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = container.get("workingDir").and_then(Value::as_str) {
            cmd.current_dir(rewrite(dir, &mounts));
        }
        cmd.envs(env);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                logs::append(
                    &self.shared,
                    &key.0,
                    &key.1,
                    &name,
                    &format!("{program}: {e}\n"),
                );
                return (128, "StartError");
            }
        };
        let pipes = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ];
        let copies = pipes.into_iter().flatten().map(|pipe| {
            let (shared, key, name) = (self.shared.clone(), key.clone(), name.clone());
            async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    logs::append(&shared, &key.0, &key.1, &name, &format!("{line}\n"));
                }
            }
        });
        let copying = futures::future::join_all(copies);
        let waiting = async {
            loop {
                tokio::select! {
                    status = child.wait() => {
                        let code = status.ok().and_then(|s| s.code()).map_or(137, i64::from);
                        return (code, if code == 0 { "Completed" } else { "Error" });
                    }
                    changed = signals.changed() => {
                        let signal = *signals.borrow_and_update();
                        if changed.is_err() || signal != Signal::Nothing {
                            let _ = child.kill().await;
                            return match signal {
                                Signal::Fault(Fault::OomKilled) => (137, "OOMKilled"),
                                _ => (137, "Error"),
                            };
                        }
                    }
                }
            }
        };
        let (exit, _) = tokio::join!(waiting, copying);
        exit
    }
}

impl Sim {
    /// The keys of the fake's Secret `ns/name` with their bytes (`data` decoded, then
    /// `stringData`, which wins as the API server merges it); `None` when it does not exist.
    fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let store = self.shared.lock();
        let kind = store.kind("", "secrets")?;
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(store.get(&kind, ns, name)?).ok()?;
        let mut keys: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            keys.insert(k, v.into_bytes());
        }
        Some(keys)
    }

    /// The container's env: plain values (mount paths rewritten) and `secretKeyRef`s; the
    /// error is a kubelet's message for a missing Secret or key.
    fn env_of(
        &self,
        ns: &str,
        container: &Value,
        mounts: &[(String, PathBuf)],
    ) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for env in container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(k) = env.get("name").and_then(Value::as_str) else {
                continue;
            };
            if let Some(v) = env.get("value").and_then(Value::as_str) {
                out.push((k.to_string(), rewrite(v, mounts)));
            } else if let Some(r) = env.pointer("/valueFrom/secretKeyRef") {
                let text = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("");
                let (name, key) = (text("name"), text("key"));
                let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
                let Some(keys) = self.secret(ns, name) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("secret \"{name}\" not found"));
                };
                match keys.get(key) {
                    Some(v) => out.push((k.to_string(), String::from_utf8_lossy(v).into_owned())),
                    None if optional => {}
                    None => return Err(format!("couldn't find key {key} in Secret {ns}/{name}")),
                }
            }
        }
        Ok(out)
    }

    /// Leaves `container` waiting with `CreateContainerConfigError` (the Pod Pending, the
    /// others of its list waiting to be created), as a kubelet does when its env cannot be
    /// resolved.
    fn config_error(
        &self,
        key: &PodKey,
        list: &str,
        names: &[String],
        container: &Value,
        message: &str,
    ) {
        let failing = container_name(container);
        logs::append(
            &self.shared,
            &key.0,
            &key.1,
            &failing,
            &format!("{message}\n"),
        );
        let statuses: Vec<Value> = names
            .iter()
            .map(|n| {
                let waiting = if *n == failing {
                    json!({"reason": "CreateContainerConfigError", "message": message})
                } else {
                    json!({"reason": "ContainerCreating"})
                };
                json!({"name": n, "ready": false, "restartCount": 0, "image": "",
                    "state": {"waiting": waiting}})
            })
            .collect();
        self.update(key, |pod| {
            pod["status"]["phase"] = json!("Pending");
            pod["status"][list] = json!(statuses);
        });
    }

    /// Records a Warning Event about the Pod from this kubelet.
    fn record_event(&self, key: &PodKey, reason: &str, message: &str) {
        let n = self
            .events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut store = self.shared.lock();
        let uid = store
            .kind("", "pods")
            .and_then(|k| store.get(&k, &key.0, &key.1))
            .and_then(|p| p.pointer("/metadata/uid").cloned())
            .unwrap_or(Value::Null);
        let Some(kind) = store.kind("", "events") else {
            return;
        };
        let at = now();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{}.{n:x}", key.1), "namespace": key.0},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": key.0,
                "name": key.1, "uid": uid},
            "reason": reason, "message": message, "type": "Warning",
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node,
            "count": 1, "firstTimestamp": at, "lastTimestamp": at,
        });
        if let Err(e) = store.create(&kind, &key.0, event, WriteMode::Direct) {
            tracing::warn!(pod = %key.1, error = ?e, "kubelet sim: cannot record an event");
        }
    }
}

/// A Pod's `emptyDir` and `secret` volumes, each a temporary directory removed with the
/// Pod's run.
struct Volumes {
    dirs: HashMap<String, tempfile::TempDir>,
}

impl Volumes {
    /// Makes the volumes of `spec`, Secrets read through `secret`; the error is the message
    /// of a kubelet's `FailedMount` event.
    fn new(
        spec: &Value,
        secret: impl Fn(&str) -> Option<BTreeMap<String, Vec<u8>>>,
    ) -> Result<Self, String> {
        let mut dirs = HashMap::new();
        for v in spec
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = v.get("name").and_then(Value::as_str) else {
                continue;
            };
            let failed =
                |why: String| format!("MountVolume.SetUp failed for volume \"{name}\" : {why}");
            let temp = || tempfile::tempdir().map_err(|e| failed(e.to_string()));
            if v.get("emptyDir").is_some() {
                dirs.insert(name.to_string(), temp()?);
            } else if let Some(source) = v.get("secret") {
                let dir = temp()?;
                fill_secret_volume(dir.path(), source, &secret).map_err(failed)?;
                dirs.insert(name.to_string(), dir);
            }
        }
        Ok(Self { dirs })
    }

    /// A container's mounts of emptyDir volumes: (mount path, local directory), the longest
    /// mount path first.
    fn mounts(&self, container: &Value) -> Vec<(String, PathBuf)> {
        let mut mounts: Vec<(String, PathBuf)> = container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let path = m.get("mountPath")?.as_str()?.trim_end_matches('/');
                let dir = self.dirs.get(m.get("name")?.as_str()?)?;
                Some((path.to_string(), dir.path().to_path_buf()))
            })
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        mounts
    }
}

/// Writes a `secret` volume source's files into `dir`: every key of the Secret, or the
/// `items` (`key`, `path`, `mode`); the error is the kubelet's reason.
fn fill_secret_volume(
    dir: &Path,
    source: &Value,
    secret: impl Fn(&str) -> Option<BTreeMap<String, Vec<u8>>>,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = source
        .get("secretName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
    let mode_of = |v: Option<&Value>| v.and_then(Value::as_u64).map(|m| m as u32);
    let default_mode = mode_of(source.get("defaultMode")).unwrap_or(0o644);
    let keys = match secret(name) {
        Some(k) => k,
        None if optional => return Ok(()),
        None => return Err(format!("secret \"{name}\" not found")),
    };
    let files: Vec<(String, String, u32)> = match source.get("items").and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .map(|i| {
                let text = |f: &str| i.get(f).and_then(Value::as_str).unwrap_or("").to_string();
                (
                    text("key"),
                    text("path"),
                    mode_of(i.get("mode")).unwrap_or(default_mode),
                )
            })
            .collect(),
        None => keys
            .keys()
            .map(|k| (k.clone(), k.clone(), default_mode))
            .collect(),
    };
    for (key, path, mode) in files {
        let Some(bytes) = keys.get(&key) else {
            if optional {
                continue;
            }
            return Err(format!("references non-existent secret key: {key}"));
        };
        let relative = Path::new(&path);
        if path.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(format!("invalid path {path:?} for key {key}"));
        }
        let file = dir.join(relative);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, bytes)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o777))
        };
        write().map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

/// `s` with a leading mount path (the whole string, or followed by `/`) replaced by its
/// local directory; also inside `a=b`/`--flag=/path` forms after the first `=`.
fn rewrite(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let one = |s: &str| -> Option<String> {
        mounts.iter().find_map(|(path, dir)| {
            let rest = s.strip_prefix(path.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", dir.display()))
        })
    };
    if let Some(r) = one(s) {
        return r;
    }
    if let Some((head, tail)) = s.split_once('=')
        && let Some(r) = one(tail)
    {
        return format!("{head}={r}");
    }
    s.to_string()
}

fn container_name(c: &Value) -> String {
    c.get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn key_of(pod: &Value) -> PodKey {
    let text = |p: &str| {
        pod.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (text("/metadata/namespace"), text("/metadata/name"))
}

fn phase(pod: &Value) -> Option<&str> {
    pod.pointer("/status/phase").and_then(Value::as_str)
}
