//! The object store: every object as JSON, one global resourceVersion counter, a bounded
//! history of changes for watches, and the served kinds (built-in and from CRDs).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{self, ResourceType};
use super::status::{ApiError, ApiResult};

/// What happened to an object, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the history and broadcast to open watches.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Added, modified or deleted.
    pub kind: EventType,
    /// The kind's qualified name (`pods`, `testworkflows.assay.dev`).
    pub resource: String,
    /// The object after the change (before, for a deletion, with the new resourceVersion).
    pub object: Value,
    /// For a modification, the object before it: a watch with a selector reports an
    /// object that stops matching as DELETED and one that starts matching as ADDED.
    pub previous: Option<Value>,
}

/// How a write treats the object's `.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// An API write to the main resource: `.status` is kept as stored if the kind has a
    /// status subresource.
    Main,
    /// An API write to `/status`: only `.status` changes.
    Status,
    /// A test's direct write: the object is stored as given.
    Direct,
}

/// The retained events after a resourceVersion and a receiver for the live ones.
pub type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Objects of one kind, keyed by (namespace, name); cluster-scoped objects use "".
type Objects = BTreeMap<(String, String), Value>;

/// Retained history when a test does not compact: enough for any test, bounded anyway.
const MAX_HISTORY: usize = 100_000;

/// The fake's state, behind one mutex in [`super::FakeKube`].
pub struct Store {
    rv: u64,
    /// Watches and lists from a resourceVersion below this get 410 Gone.
    oldest: u64,
    history: VecDeque<Arc<Event>>,
    objects: HashMap<String, Objects>,
    kinds: Vec<ResourceType>,
    tx: broadcast::Sender<Arc<Event>>,
    /// `(verb, group, plural)` answered with 403.
    pub forbidden: HashSet<(String, String, String)>,
    /// `(group, plural)` whose creates are answered with 422 and this message.
    pub rejected: HashMap<(String, String), String>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store serving the built-in kinds, with the `default`, `kube-system` and
    /// `kube-public` namespaces.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut store = Self {
            rv: 0,
            oldest: 0,
            history: VecDeque::new(),
            objects: HashMap::new(),
            kinds: resources::builtins(),
            tx,
            forbidden: HashSet::new(),
            rejected: HashMap::new(),
        };
        if let Some(ns) = store.kind("", "namespaces") {
            for name in ["default", "kube-system", "kube-public"] {
                let obj = json!({"metadata": {"name": name}, "status": {"phase": "Active"}});
                // Cannot fail: the names are valid and the store is empty.
                let _ = store.create(&ns, "", obj, WriteMode::Direct);
            }
        }
        store
    }

    /// A copy for a dry run: same objects and kinds, its own (unwatched) event channel.
    pub fn dry_run_copy(&self) -> Self {
        Self {
            rv: self.rv,
            oldest: self.oldest,
            history: VecDeque::new(),
            objects: self.objects.clone(),
            kinds: self.kinds.clone(),
            tx: broadcast::channel(1).0,
            forbidden: self.forbidden.clone(),
            rejected: self.rejected.clone(),
        }
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// All served kinds.
    pub fn kinds(&self) -> &[ResourceType] {
        &self.kinds
    }

    /// The served kind at `group`/`version` named `plural`.
    pub fn kind_at(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }

    /// The first served version of `group`'s `plural`.
    pub fn kind(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.plural == plural)
            .cloned()
    }

    /// A kind by qualified name: `pods`, `deployments.apps`, `testworkflows.assay.dev`.
    pub fn kind_by_name(&self, qualified: &str) -> Option<ResourceType> {
        self.kinds
            .iter()
            .find(|k| k.qualified() == qualified)
            .cloned()
    }

    /// Drops the whole history: watches and exact lists from any older resourceVersion
    /// now get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }

    /// Fails with 410 if `rv` is older than the retained history.
    pub fn check_not_expired(&self, rv: u64) -> ApiResult<()> {
        if rv < self.oldest {
            return Err(ApiError::expired(rv, self.oldest));
        }
        Ok(())
    }

    /// The history after `rv` and a receiver for what follows, taken atomically so that
    /// no change falls between them. 410 if `rv` is older than the retained history.
    pub fn watch_from(&self, rv: u64) -> ApiResult<Subscription> {
        self.check_not_expired(rv)?;
        let past = self.history.iter().filter(|e| e.rv > rv).cloned().collect();
        Ok((past, self.tx.subscribe()))
    }

    /// One object, if stored.
    pub fn get(&self, kind: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&kind.qualified())
            .and_then(|o| o.get(&(scope(kind, ns), name.to_string())))
            .cloned()
    }

    /// Objects of a kind, in one namespace or (`None`) all, ordered by namespace and name.
    pub fn list(&self, kind: &ResourceType, ns: Option<&str>) -> Vec<Value> {
        let Some(objects) = self.objects.get(&kind.qualified()) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| !kind.namespaced || n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates an object: fills name (from generateName), namespace, uid, resourceVersion,
    /// creationTimestamp and generation. 409 if it exists, 422 if it has no name.
    pub fn create(
        &mut self,
        kind: &ResourceType,
        ns: &str,
        mut obj: Value,
        mode: WriteMode,
    ) -> ApiResult<Value> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let meta = obj
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        kind.kind
                    )));
                }
            },
        };
        let ns = scope(kind, ns);
        if self.get(kind, &ns, &name).is_some() {
            return Err(ApiError::already_exists(&kind.qualified(), &name));
        }
        self.rv += 1;
        meta.insert("name".into(), json!(name));
        if kind.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        set_type(&mut obj, kind);
        if mode != WriteMode::Direct && kind.status {
            strip_status(&mut obj, kind);
        }
        if is_crd(kind) {
            let served = resources::from_crd(&obj).map_err(ApiError::invalid)?;
            obj["status"] = resources::crd_status(&obj);
            self.serve(served);
        }
        self.objects
            .entry(kind.qualified())
            .or_default()
            .insert((ns, name), obj.clone());
        self.record(EventType::Added, kind, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an object. `expected_rv` (the body's resourceVersion, if any) must match
    /// the stored one (409 otherwise). A write that changes nothing keeps the
    /// resourceVersion and sends no event, as the real server does.
    pub fn replace(
        &mut self,
        kind: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        mode: WriteMode,
    ) -> ApiResult<Value> {
        let ns = scope(kind, ns);
        let old = self
            .get(kind, &ns, name)
            .ok_or_else(|| ApiError::not_found(&kind.qualified(), name))?;
        if !obj.is_object() || !obj.get("metadata").is_none_or(Value::is_object) {
            return Err(ApiError::bad_request(
                "the body must be a JSON object with an object metadata",
            ));
        }
        let expected = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if mode != WriteMode::Direct && expected.is_some_and(|rv| Some(rv) != old_rv(&old)) {
            return Err(ApiError::conflict(&kind.qualified(), name));
        }
        match mode {
            WriteMode::Status => {
                let status = obj.get("status").cloned();
                obj = old.clone();
                match status {
                    Some(s) => obj["status"] = s,
                    None => strip_status(&mut obj, kind),
                }
            }
            WriteMode::Main if kind.status => match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => strip_status(&mut obj, kind),
            },
            _ => {}
        }
        for key in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
            if let Some(v) = old.pointer(&format!("/metadata/{key}")) {
                obj["metadata"][key] = v.clone();
            }
        }
        obj["metadata"]["name"] = json!(name);
        if kind.namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        set_type(&mut obj, kind);
        if obj == old {
            return Ok(old);
        }
        if without(&obj, &["metadata", "status"]) != without(&old, &["metadata", "status"]) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            obj["metadata"]["generation"] = json!(generation + 1);
        }
        if is_crd(kind) {
            let served = resources::from_crd(&obj).map_err(ApiError::invalid)?;
            self.unserve(&old);
            self.serve(served);
            obj["status"] = resources::crd_status(&obj);
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects
            .entry(kind.qualified())
            .or_default()
            .insert((ns, name.to_string()), obj.clone());
        self.record(EventType::Modified, kind, obj.clone(), Some(old));
        Ok(obj)
    }

    /// Removes an object and sends DELETED. Deleting a CRD stops serving its kinds and
    /// drops their objects.
    pub fn delete(&mut self, kind: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        let ns = scope(kind, ns);
        let mut obj = self
            .objects
            .get_mut(&kind.qualified())
            .and_then(|o| o.remove(&(ns, name.to_string())))
            .ok_or_else(|| ApiError::not_found(&kind.qualified(), name))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(EventType::Deleted, kind, obj.clone(), None);
        if is_crd(kind) {
            self.unserve(&obj);
        }
        if kind.group.is_empty() && kind.plural == "namespaces" {
            self.delete_namespace_contents(name);
        }
        Ok(obj)
    }

    /// Deletes every object in a namespace that is being deleted (at once: the fake has
    /// no Terminating phase or finalizers).
    fn delete_namespace_contents(&mut self, ns: &str) {
        let mut seen = HashSet::new();
        let kinds: Vec<ResourceType> = self
            .kinds
            .iter()
            .filter(|k| k.namespaced && seen.insert(k.qualified()))
            .cloned()
            .collect();
        for kind in kinds {
            for obj in self.list(&kind, Some(ns)) {
                if let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str) {
                    // It was just listed, so it exists.
                    let _ = self.delete(&kind, ns, name);
                }
            }
        }
    }

    fn record(
        &mut self,
        kind: EventType,
        resource: &ResourceType,
        object: Value,
        previous: Option<Value>,
    ) {
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            resource: resource.qualified(),
            object,
            previous,
        });
        self.history.push_back(event.clone());
        while self.history.len() > MAX_HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.oldest = e.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    fn serve(&mut self, kinds: Vec<ResourceType>) {
        for k in kinds {
            self.kinds.retain(|o| {
                !(o.group == k.group && o.version == k.version && o.plural == k.plural)
            });
            self.kinds.push(k);
        }
    }

    fn unserve(&mut self, crd: &Value) {
        let Ok(kinds) = resources::from_crd(crd) else {
            return;
        };
        for k in kinds {
            self.kinds
                .retain(|o| !(o.group == k.group && o.plural == k.plural));
            self.objects.remove(&k.qualified());
        }
    }
}

fn is_crd(kind: &ResourceType) -> bool {
    kind.group == "apiextensions.k8s.io" && kind.plural == "customresourcedefinitions"
}

/// The namespace key: "" for cluster-scoped kinds.
fn scope(kind: &ResourceType, ns: &str) -> String {
    if kind.namespaced {
        ns.to_string()
    } else {
        String::new()
    }
}

fn old_rv(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

fn set_type(obj: &mut Value, kind: &ResourceType) {
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind);
}

/// Drops a status an API client sent where the server owns it; a new Pod is Pending.
fn strip_status(obj: &mut Value, kind: &ResourceType) {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if kind.group.is_empty() && kind.plural == "pods" {
        obj["status"] = json!({"phase": "Pending"});
    }
}

fn without(obj: &Value, keys: &[&str]) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

/// RFC 3339 UTC, seconds, as Kubernetes writes timestamps.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A UUID-shaped uid from a fresh ULID.
fn new_uid() -> String {
    let hex = format!("{:032x}", u128::from(ulid::Ulid::new()));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Five lower-case alphanumerics, as the server appends to a generateName.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = u128::from(ulid::Ulid::new()) & u128::from(u64::MAX);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u128) as usize] as char;
            bits /= ALPHABET.len() as u128;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(s: &Store) -> ResourceType {
        s.kind("", "pods").unwrap()
    }

    #[test]
    fn create_fills_metadata_and_conflicts() {
        let mut s = Store::new();
        let k = pods(&s);
        let p = s
            .create(&k, "ns", json!({"metadata": {"generateName": "p-"}, "spec": {}, "status": {"phase": "Running"}}), WriteMode::Main)
            .unwrap();
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("p-") && name.len() == 7);
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["metadata"]["generation"], 1);
        let again = json!({"metadata": {"name": name}});
        assert_eq!(
            s.create(&k, "ns", again, WriteMode::Main).unwrap_err().code,
            409
        );
    }

    #[test]
    fn replace_checks_rv_bumps_generation_and_keeps_status() {
        let mut s = Store::new();
        let k = pods(&s);
        let p = s
            .create(
                &k,
                "ns",
                json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
                WriteMode::Main,
            )
            .unwrap();
        let mut stale = p.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(
            s.replace(&k, "ns", "a", stale, WriteMode::Main)
                .unwrap_err()
                .code,
            409
        );
        let mut next = p.clone();
        next["spec"]["x"] = json!(2);
        next["status"] = json!({"phase": "Running"});
        let q = s.replace(&k, "ns", "a", next, WriteMode::Main).unwrap();
        assert_eq!(q["metadata"]["generation"], 2);
        assert_eq!(q["status"]["phase"], "Pending");
        let same = s
            .replace(&k, "ns", "a", q.clone(), WriteMode::Main)
            .unwrap();
        assert_eq!(
            same["metadata"]["resourceVersion"],
            q["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn compact_expires_old_versions() {
        let mut s = Store::new();
        let k = pods(&s);
        let before = s.resource_version();
        s.create(
            &k,
            "ns",
            json!({"metadata": {"name": "a"}}),
            WriteMode::Main,
        )
        .unwrap();
        assert_eq!(s.watch_from(before).unwrap().0.len(), 1);
        s.compact();
        assert_eq!(s.watch_from(before).unwrap_err().code, 410);
        assert!(s.watch_from(s.resource_version()).is_ok());
    }
}
