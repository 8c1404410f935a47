//! `deploy/k8s` rendered by the real `kubectl kustomize` (the top, which is the production
//! overlay, and both overlays), every object parsed into its k8s-openapi type (an unknown
//! kind, a wrong apiVersion, a misspelt or misplaced field fails), then the invariants the
//! deployment promises: probes, the restricted securityContext, resource requests, existing
//! ServiceAccounts, RBAC verbs exactly as docs/kubernetes.md lists them, and the Pod
//! backend: the launcher runs shards as Pods in namespace assay-tests with the runner image
//! kustomize set, its Role there, the runners' NATS Secret, and NATS reachable from there.
//!
//! The CRDs come from `deploy/k8s/crds` (generated from the Rust definitions); when it is
//! absent, a copy of `deploy/k8s` gets minimal stand-ins so the rest can still be checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

/// Every kind the manifests may contain, parsed.
enum Object {
    Namespace(Namespace),
    Crd(Box<CustomResourceDefinition>),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    ServiceAccount(ServiceAccount),
    Pvc(PersistentVolumeClaim),
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    Role(Role),
    RoleBinding(RoleBinding),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    NetworkPolicy(NetworkPolicy),
    Hpa(HorizontalPodAutoscaler),
    Pdb(PodDisruptionBudget),
}

impl Object {
    /// The variant's name and the object's metadata.
    fn meta(&self) -> (&'static str, &ObjectMeta) {
        match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::Crd(o) => ("Crd", &o.metadata),
            Object::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Object::Secret(o) => ("Secret", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Object::Pvc(o) => ("Pvc", &o.metadata),
            Object::Deployment(o) => ("Deployment", &o.metadata),
            Object::StatefulSet(o) => ("StatefulSet", &o.metadata),
            Object::Role(o) => ("Role", &o.metadata),
            Object::RoleBinding(o) => ("RoleBinding", &o.metadata),
            Object::ClusterRole(o) => ("ClusterRole", &o.metadata),
            Object::ClusterRoleBinding(o) => ("ClusterRoleBinding", &o.metadata),
            Object::NetworkPolicy(o) => ("NetworkPolicy", &o.metadata),
            Object::Hpa(o) => ("Hpa", &o.metadata),
            Object::Pdb(o) => ("Pdb", &o.metadata),
        }
    }
}

/// Kinds that have no namespace.
const CLUSTER_SCOPED: [&str; 4] = ["Namespace", "Crd", "ClusterRole", "ClusterRoleBinding"];

/// The namespace of the shard Pods (the launcher's `--namespace`).
const SHARDS: &str = "assay-tests";

/// Objects that live in [`SHARDS`] (kind, name); everything else namespaced is in `assay`.
const SHARD_OBJECTS: [(&str, &str); 4] = [
    ("Role", "assay-executor-launcher"),
    ("RoleBinding", "assay-executor-launcher"),
    ("NetworkPolicy", "shards-deny-ingress"),
    ("Secret", "assay-runner-nats"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of `deploy/k8s`, with stand-in CRDs when `deploy/k8s/crds` is not there yet.
fn manifests() -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("temp dir");
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo().join("deploy/k8s"))
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(status.success(), "copy deploy/k8s");
    let crds = copy.path().join("k8s/crds");
    if !crds.join("kustomization.yaml").exists() {
        eprintln!("deploy/k8s/crds is missing (it is generated): using stand-in CRDs");
        std::fs::create_dir_all(&crds).expect("mkdir crds");
        let mut names = Vec::new();
        for (plural, kind) in [
            ("testworkflows", "TestWorkflow"),
            ("testtriggers", "TestTrigger"),
        ] {
            let file = format!("{plural}.assay.dev.yaml");
            let crd = format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                 metadata: {{name: {plural}.assay.dev}}\nspec:\n  group: assay.dev\n  \
                 names: {{kind: {kind}, plural: {plural}}}\n  scope: Namespaced\n  versions:\n  \
                 - name: v1alpha1\n    served: true\n    storage: true\n    schema:\n      \
                 openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n"
            );
            std::fs::write(crds.join(&file), crd).expect("write crd");
            names.push(file);
        }
        std::fs::write(
            crds.join("kustomization.yaml"),
            format!("resources: [{}]\n", names.join(", ")),
        )
        .expect("write crds/kustomization.yaml");
    }
    copy
}

/// `kubectl kustomize <dir>`; fails with an install hint when kubectl is missing.
fn render(root: &Path, dir: &str) -> String {
    let output = match Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join(dir))
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "kubectl not found: install it to check deploy/k8s (Debian: apt-get install \
             kubernetes-client; .ci/run installs it)"
        ),
        Err(e) => panic!("run kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Parses `doc` as `T` and checks nothing was dropped: the object written back equals the
/// input, so a field k8s-openapi does not know (misspelt, misplaced) fails here.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &serde_json::Value) -> T {
    let what = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as its type: {e}"));
    let back = serde_json::to_value(&object).expect("serialize");
    if let Some(path) = first_difference(doc, &back, String::new()) {
        panic!("{what}: {path} is not a field of its type (or has another shape)");
    }
    object
}

/// The path of the first place where `input` has something `parsed` lacks or differs on.
fn first_difference(
    input: &serde_json::Value,
    parsed: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value;
    match (input, parsed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => first_difference(v, w, format!("{path}.{k}")),
            None if v.is_null() => None,
            None => Some(format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        // YAML's `0` and a float field's `0.0` are the same number (a CRD schema's
        // `minimum`, rendered by kustomize without the fraction).
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        _ => Some(path),
    }
}

fn parse(yaml: &str) -> Vec<Object> {
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(document).expect("rendered YAML parses");
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        objects.push(match kind.as_str() {
            "Namespace" => Object::Namespace(typed(&value)),
            "CustomResourceDefinition" => Object::Crd(Box::new(typed(&value))),
            "ConfigMap" => Object::ConfigMap(typed(&value)),
            "Secret" => Object::Secret(typed(&value)),
            "Service" => Object::Service(typed(&value)),
            "ServiceAccount" => Object::ServiceAccount(typed(&value)),
            "PersistentVolumeClaim" => Object::Pvc(typed(&value)),
            "Deployment" => Object::Deployment(Box::new(typed(&value))),
            "StatefulSet" => Object::StatefulSet(Box::new(typed(&value))),
            "Role" => Object::Role(typed(&value)),
            "RoleBinding" => Object::RoleBinding(typed(&value)),
            "ClusterRole" => Object::ClusterRole(typed(&value)),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(&value)),
            "NetworkPolicy" => Object::NetworkPolicy(typed(&value)),
            "HorizontalPodAutoscaler" => Object::Hpa(typed(&value)),
            "PodDisruptionBudget" => Object::Pdb(typed(&value)),
            other => panic!(
                "unknown kind {other:?} ({}): add it to this test with its k8s-openapi type",
                value["metadata"]["name"]
            ),
        });
    }
    objects
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// (apiGroup, resource) → verbs, one entry per pair a rule names.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

fn grants(rules: &[PolicyRule]) -> Grants {
    let mut out = Grants::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                out.entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    out
}

fn expect(list: &[(&str, &[&str], &[&str])]) -> Grants {
    let mut out = Grants::new();
    for (group, resources, verbs) in list {
        for resource in *resources {
            out.entry((group.to_string(), resource.to_string()))
                .or_default()
                .extend(verbs.iter().map(|v| v.to_string()));
        }
    }
    out
}

const READ: &[&str] = &["get", "list", "watch"];

/// The checks every rendering must pass; `replicas` is what each stateless Deployment runs.
fn check(objects: &[Object], replicas: i32) {
    let mut accounts = BTreeSet::new();
    let mut pods: Vec<(String, &PodSpec)> = Vec::new();
    let mut roles: BTreeMap<String, Grants> = BTreeMap::new();
    let mut bindings: Vec<(String, Vec<String>)> = Vec::new();
    let mut kinds = BTreeSet::new();
    for object in objects {
        let (kind, meta) = object.meta();
        kinds.insert(kind);
        let expected_namespace = if CLUSTER_SCOPED.contains(&kind) {
            None
        } else if SHARD_OBJECTS.contains(&(kind, name(meta))) {
            Some(SHARDS)
        } else {
            Some("assay")
        };
        assert_eq!(
            meta.namespace.as_deref(),
            expected_namespace,
            "namespace of {kind} {}",
            name(meta)
        );
        match object {
            Object::ServiceAccount(sa) => {
                accounts.insert(name(&sa.metadata).to_string());
            }
            Object::Deployment(d) => {
                let spec = d.spec.as_ref().expect("deployment spec");
                let pod = spec.template.spec.as_ref().expect("pod spec");
                let n = name(&d.metadata).to_string();
                if n != "assay-result-aggregator" {
                    assert_eq!(spec.replicas, Some(replicas), "{n} replicas");
                }
                check_restricted(&n, pod);
                for c in &pod.containers {
                    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
                        p.as_ref()
                            .and_then(|p| p.http_get.as_ref())
                            .and_then(|h| h.path.clone())
                    };
                    assert_eq!(
                        path(&c.readiness_probe).as_deref(),
                        Some("/readyz"),
                        "{n} readiness"
                    );
                    assert_eq!(
                        path(&c.liveness_probe).as_deref(),
                        Some("/healthz"),
                        "{n} liveness"
                    );
                    let requests = c
                        .resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .unwrap_or_else(|| panic!("{n}/{} has no resource requests", c.name));
                    assert!(
                        requests.contains_key("cpu") && requests.contains_key("memory"),
                        "{n}/{} requests cpu and memory",
                        c.name
                    );
                }
                pods.push((n, pod));
            }
            Object::StatefulSet(s) => {
                let pod = s.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                let pod = pod.expect("statefulset pod spec");
                check_restricted(name(&s.metadata), pod);
                pods.push((name(&s.metadata).to_string(), pod));
            }
            Object::Role(r) => {
                roles.insert(
                    name(&r.metadata).to_string(),
                    grants(r.rules.as_deref().unwrap_or_default()),
                );
            }
            Object::ClusterRole(r) => {
                roles.insert(
                    name(&r.metadata).to_string(),
                    grants(r.rules.as_deref().unwrap_or_default()),
                );
            }
            Object::RoleBinding(b) => bindings.push((
                b.role_ref.name.clone(),
                b.subjects
                    .iter()
                    .flatten()
                    .map(|s| s.name.clone())
                    .collect(),
            )),
            Object::ClusterRoleBinding(b) => bindings.push((
                b.role_ref.name.clone(),
                b.subjects
                    .iter()
                    .flatten()
                    .map(|s| s.name.clone())
                    .collect(),
            )),
            _ => {}
        }
    }
    for (n, pod) in &pods {
        let sa = pod.service_account_name.as_deref().unwrap_or("default");
        assert!(
            accounts.contains(sa),
            "{n} runs as ServiceAccount {sa}, which is not rendered"
        );
    }
    for kind in [
        "Namespace",
        "Crd",
        "Deployment",
        "StatefulSet",
        "NetworkPolicy",
        "Service",
    ] {
        assert!(kinds.contains(kind), "no {kind} rendered");
    }

    // RBAC: exactly these grants, and nothing for the aggregator.
    let expected: BTreeMap<String, Grants> = [
        (
            "assay-trigger-watcher",
            expect(&[
                ("apps", &["deployments", "statefulsets", "daemonsets"], READ),
                ("", &["services", "configmaps", "secrets", "pods"], READ),
                ("batch", &["jobs"], READ),
                ("assay.dev", &["testworkflows", "testtriggers"], READ),
                ("assay.dev", &["testtriggers/status"], &["patch"]),
                ("", &["events"], &["create"]),
            ]),
        ),
        (
            "assay-executor-launcher",
            expect(&[
                ("", &["pods"], &["create", "delete", "get", "list", "watch"]),
                ("", &["pods/log"], &["get"]),
                ("", &["events"], &["list"]),
                ("", &["secrets"], &["create", "patch", "delete"]),
            ]),
        ),
        (
            "assay-scheduler",
            expect(&[
                ("assay.dev", &["testworkflows", "testtriggers"], READ),
                (
                    "assay.dev",
                    &["testworkflows/status", "testtriggers/status"],
                    &["update", "patch"],
                ),
                ("", &["events"], &["create"]),
            ]),
        ),
    ]
    .into_iter()
    .map(|(n, g)| (n.to_string(), g))
    .collect();
    assert_eq!(roles, expected, "RBAC grants");
    for (role, subjects) in &bindings {
        assert!(
            !role.contains("result-aggregator")
                && !subjects.iter().any(|s| s.contains("result-aggregator")),
            "the aggregator needs no Kubernetes API access, yet {role} binds it"
        );
        assert_eq!(
            subjects,
            &vec![role.clone()],
            "{role} binds only its own ServiceAccount"
        );
    }
}

fn launcher(objects: &[Object]) -> &PodSpec {
    objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) if name(&d.metadata) == "assay-executor-launcher" => {
                d.spec.as_ref()?.template.spec.as_ref()
            }
            _ => None,
        })
        .expect("Deployment assay-executor-launcher")
}

/// The Pod backend as deployed: the launcher's flags (`--runner-image` is `runner_image`,
/// the image kustomize set on its runner-image init container), its namespace, the
/// runners' NATS URL, and NetworkPolicies letting shard Pods reach NATS and nothing else
/// of namespace assay that is not open to everyone.
fn check_pod_backend(objects: &[Object], runner_image: &str) {
    let pod = launcher(objects);
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "runner-image")
        .expect("the launcher's runner-image init container");
    assert_eq!(init.image.as_deref(), Some(runner_image), "runner image");
    let main = &pod.containers[0];
    let args = main.args.clone().unwrap_or_default();
    for flag in [
        "--backend=kubernetes".to_string(),
        format!("--namespace={SHARDS}"),
        format!("--runner-image={runner_image}"),
        "--runner-nats-secret=assay-runner-nats".to_string(),
    ] {
        assert!(args.contains(&flag), "launcher args lack {flag}: {args:?}");
    }
    assert!(
        objects
            .iter()
            .any(|o| matches!(o, Object::Namespace(n) if name(&n.metadata) == SHARDS)),
        "no Namespace {SHARDS}"
    );
    let url = objects.iter().find_map(|o| match o {
        Object::ConfigMap(c) if name(&c.metadata) == "assay-env" => {
            c.data.as_ref()?.get("ASSAY_NATS_URL").cloned()
        }
        _ => None,
    });
    assert_eq!(
        url.as_deref(),
        Some("nats://nats.assay.svc:4222"),
        "runners in {SHARDS} get the launcher's NATS URL: it must name the namespace"
    );

    // Who in SHARDS each policy of namespace assay admits, by port.
    let mut admitted = Vec::new();
    for o in objects {
        let Object::NetworkPolicy(np) = o else {
            continue;
        };
        if np.metadata.namespace.as_deref() != Some("assay") {
            continue;
        }
        let spec = np.spec.as_ref().expect("policy spec");
        for rule in spec.ingress.iter().flatten() {
            let ports: Vec<String> = rule
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.port.as_ref().map(|p| format!("{p:?}")))
                .collect();
            for peer in rule.from.iter().flatten() {
                let ns = peer
                    .namespace_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .and_then(|l| l.get("kubernetes.io/metadata.name"));
                if ns.map(String::as_str) == Some(SHARDS) {
                    let pods = peer
                        .pod_selector
                        .as_ref()
                        .and_then(|s| s.match_labels.clone())
                        .unwrap_or_default();
                    admitted.push((name(&np.metadata).to_string(), ports.clone(), pods));
                }
                assert!(
                    peer.namespace_selector.is_none() || ns.is_some(),
                    "{}: a namespaceSelector that may match {SHARDS}",
                    name(&np.metadata)
                );
            }
        }
    }
    let shard_pods: BTreeMap<String, String> = [(
        "app.kubernetes.io/managed-by".to_string(),
        "assay-executor-launcher".to_string(),
    )]
    .into();
    assert_eq!(
        admitted,
        vec![(
            "nats".to_string(),
            vec!["Int(4222)".to_string()],
            shard_pods
        )],
        "shard Pods reach NATS on 4222 and nothing else of namespace assay"
    );
}

/// The Secret the runners' NATS user comes from, if rendered: (user, password).
fn runner_secret(objects: &[Object]) -> Option<(String, String)> {
    objects.iter().find_map(|o| match o {
        Object::Secret(s) if name(&s.metadata) == "assay-runner-nats" => {
            let data = s.data.as_ref()?;
            let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
            Some((text("user")?, text("password")?))
        }
        _ => None,
    })
}

/// runAsNonRoot, RuntimeDefault seccomp, and per container: read-only root file system, no
/// privilege escalation, every capability dropped.
fn check_restricted(n: &str, pod: &PodSpec) {
    let ctx = pod
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{n}: no pod securityContext"));
    assert_eq!(ctx.run_as_non_root, Some(true), "{n}: runAsNonRoot");
    assert_eq!(
        ctx.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{n}: seccompProfile"
    );
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let sc = c
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("{n}/{}: no securityContext", c.name));
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{n}/{}: readOnlyRootFilesystem",
            c.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{n}/{}: allowPrivilegeEscalation",
            c.name
        );
        let dropped = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.clone())
            .unwrap_or_default();
        assert_eq!(
            dropped,
            vec!["ALL".to_string()],
            "{n}/{}: capabilities drop ALL",
            c.name
        );
    }
}

fn count(objects: &[Object], pick: impl Fn(&Object) -> Option<String>) -> BTreeSet<String> {
    objects.iter().filter_map(pick).collect()
}

fn hpas(objects: &[Object]) -> BTreeSet<String> {
    count(objects, |o| match o {
        Object::Hpa(h) => h.spec.as_ref().map(|s| s.scale_target_ref.name.clone()),
        _ => None,
    })
}

fn pdbs(objects: &[Object]) -> BTreeSet<String> {
    count(objects, |o| match o {
        Object::Pdb(p) => Some(name(&p.metadata).to_string()),
        _ => None,
    })
}

fn nats_replicas(objects: &[Object]) -> Option<i32> {
    objects.iter().find_map(|o| match o {
        Object::StatefulSet(s) if name(&s.metadata) == "nats" => s.spec.as_ref()?.replicas,
        _ => None,
    })
}

#[test]
fn the_top_renders_the_production_overlay() {
    let root = manifests();
    let top = render(root.path(), "k8s");
    let production = render(root.path(), "k8s/overlays/production");
    assert_eq!(top, production, "deploy/k8s renders the production overlay");
    check(&parse(&top), 2);
}

#[test]
fn production_has_hpas_pdbs_and_three_nats_nodes() {
    let root = manifests();
    let objects = parse(&render(root.path(), "k8s/overlays/production"));
    check(&objects, 2);
    let scaled: BTreeSet<String> = [
        "assay-scheduler",
        "assay-executor-launcher",
        "assay-result-aggregator",
    ]
    .map(String::from)
    .into();
    assert_eq!(hpas(&objects), scaled, "HPAs");
    assert_eq!(
        pdbs(&objects).len(),
        5,
        "a PDB per service and for NATS: {:?}",
        pdbs(&objects)
    );
    assert_eq!(nats_replicas(&objects), Some(3));
    check_pod_backend(&objects, "ghcr.io/assay-dev/assay-runner:latest");
    // Created by hand in production, as the install section says.
    assert_eq!(runner_secret(&objects), None);
    let docs = std::fs::read_to_string(repo().join("docs/kubernetes.md")).expect("docs");
    assert!(
        docs.contains("kubectl -n assay-tests create secret generic assay-runner-nats"),
        "docs/kubernetes.md says how to create the runners' NATS Secret"
    );
}

#[test]
fn dev_runs_one_of_everything_with_the_example_catalog() {
    let root = manifests();
    let objects = parse(&render(root.path(), "k8s/overlays/dev"));
    check(&objects, 1);
    assert!(
        hpas(&objects).is_empty() && pdbs(&objects).is_empty(),
        "no HPAs or PDBs in dev"
    );
    assert_eq!(nats_replicas(&objects), Some(1));
    let catalog = objects.iter().find_map(|o| match o {
        Object::ConfigMap(c) if name(&c.metadata) == "assay-workflows" => c.data.clone(),
        _ => None,
    });
    let catalog = catalog.expect("ConfigMap assay-workflows in dev");
    assert!(
        catalog.values().any(|y| y.contains("kind: TestWorkflow")),
        "the example workflow"
    );
    check_pod_backend(&objects, "assay-runner:dev");
    let users = objects.iter().find_map(|o| match o {
        Object::Secret(s) if name(&s.metadata) == "assay-nats-users" => {
            String::from_utf8(s.data.as_ref()?.get("runner")?.0.clone()).ok()
        }
        _ => None,
    });
    assert_eq!(
        runner_secret(&objects),
        Some((
            "runner".to_string(),
            users.expect("assay-nats-users runner")
        )),
        "dev generates the runners' Secret with the NATS user `runner` and its password"
    );
}
