//! deploy/ and examples/, what an admin applies: the generated ConfigMaps match
//! templates/ and examples/, the manifests agree with each other and with the code, the
//! examples are accepted by an API server and their Services get addresses, and the agent
//! pod works as its DaemonSet describes it (its exact capabilities, volumes, arguments,
//! environment and probes), with BIRD and with FRR. Schema validation of every manifest
//! is `scripts/validate-manifests`, run by `scripts/test`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::netns::NetNs;
use crate::support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const IMAGE: &str = concat!("ghcr.io/routelb/routelb:", env!("CARGO_PKG_VERSION"));

/// Every document of a YAML file, as JSON values.
fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The one object of this kind and name in a file.
fn object(rel: &str, kind: &str, name: &str) -> Value {
    docs(rel)
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{rel} has no {kind} {name}"))
}

// ----------------------------------------------------------------------------------
// Generated ConfigMaps

/// A ConfigMap holding files verbatim, as YAML with literal blocks (readable in review).
fn configmap(name: &str, what: &str, files: &[(&str, &str)]) -> String {
    let mut out = format!(
        "# {what}\n# Generated from {} by `UPDATE_GOLDEN=1 cargo test --test integration deploy`;\n# edit those files, not this one (a test fails when this is stale).\n",
        files.iter().map(|(_, p)| *p).collect::<Vec<_>>().join(", ")
    );
    out.push_str(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: routelb-system\n  labels: {{app.kubernetes.io/name: routelb}}\ndata:\n"
    ));
    for (key, path) in files {
        let text = std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap();
        // Literal block with an explicit indentation indicator, so content that starts
        // with spaces stays exact; chomping keeps the file's trailing newlines.
        let chomp = if text.ends_with("\n\n") {
            "+"
        } else if text.ends_with('\n') {
            ""
        } else {
            "-"
        };
        out.push_str(&format!("  {key}: |2{chomp}\n"));
        for line in text.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// (file under deploy/, its generated text, the files it holds by key).
/// A ConfigMap key and the repository file it holds.
type Files = Vec<(&'static str, &'static str)>;

fn generated() -> Vec<(&'static str, String, Files)> {
    let templates = vec![
        ("bird.conf.tera", "templates/bird.conf.tera"),
        ("frr.conf.tera", "templates/frr.conf.tera"),
    ];
    let bird = vec![("bird.conf", "examples/bird/bird.conf")];
    let frr = vec![
        ("daemons", "examples/frr/daemons"),
        ("frr.conf", "examples/frr/frr.conf"),
        ("vtysh.conf", "examples/frr/vtysh.conf"),
    ];
    vec![
        (
            "deploy/templates.yaml",
            format!(
                "{}---\n{}",
                configmap(
                    "routelb-templates",
                    "The routing templates the agent renders (mounted at /etc/routelb/templates).",
                    &templates
                ),
                configmap(
                    "routelb-bird-bootstrap",
                    "BIRD's configuration until the agent has rendered the real one.",
                    &bird
                )
            ),
            [templates.clone(), bird.clone()].concat(),
        ),
        (
            "deploy/frr/bootstrap.yaml",
            configmap(
                "routelb-frr-bootstrap",
                "FRR's daemons file and configuration until the agent has rendered the real one.",
                &frr,
            ),
            frr.clone(),
        ),
    ]
}

#[test]
fn generated_configmaps_are_current_and_hold_the_files_exactly() {
    for (rel, text, files) in generated() {
        let path = Path::new(ROOT).join(rel);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == text,
            "{rel} is stale: run `UPDATE_GOLDEN=1 cargo test --test integration deploy`"
        );
        // What a YAML parser (the API server's) reads back is each file, byte for byte.
        let mut data = BTreeMap::new();
        for d in docs(rel) {
            let cm: ConfigMap = serde_json::from_value(d).unwrap();
            data.extend(cm.data.unwrap_or_default());
        }
        for (key, file) in files {
            let want = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
            assert_eq!(data.get(key), Some(&want), "{rel}: key {key} != {file}");
        }
    }
}

// ----------------------------------------------------------------------------------
// The manifests agree with each other and with the code

fn daemonset(rel: &str) -> DaemonSet {
    serde_json::from_value(object(rel, "DaemonSet", "routelb-agent")).unwrap()
}

fn containers(ds: &DaemonSet) -> Vec<Container> {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let mut all = spec.init_containers.clone().unwrap_or_default();
    all.extend(spec.containers.clone());
    all
}

fn container(ds: &DaemonSet, name: &str) -> Container {
    containers(ds)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn all_deploy_docs() -> Vec<Value> {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["deploy", "deploy/frr"] {
        for e in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .flat_map(|p| docs(p.strip_prefix(ROOT).unwrap().to_str().unwrap()))
        .collect()
}

#[test]
fn the_manifests_agree_with_each_other_and_with_the_code() {
    let all = all_deploy_docs();
    let names = |kind: &str| -> Vec<String> {
        all.iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Every image is this version's.
    let text: String = all.iter().map(|d| d.to_string()).collect();
    let images: Vec<&str> = text
        .match_indices("\"image\":\"")
        .map(|(i, _)| i)
        .map(|i| {
            let rest = &text[i + 9..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert!(images.len() >= 7, "{images:?}");
    for image in images {
        assert_eq!(image, IMAGE, "every container runs this version's image");
    }
    // Both agent variants: host network, exactly NET_ADMIN and NET_RAW, not privileged,
    // the node name from the downward API, probes on the port it serves.
    for rel in ["deploy/agent.yaml", "deploy/frr/agent.yaml"] {
        let ds = daemonset(rel);
        let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
        assert_eq!(pod.host_network, Some(true), "{rel}");
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("routelb-agent"),
            "{rel}"
        );
        let agent = container(&ds, "agent");
        let sc = agent.security_context.clone().unwrap();
        let caps = sc.capabilities.clone().unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{rel}");
        assert_eq!(
            caps.add,
            Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
            "{rel}"
        );
        assert_eq!(sc.privileged, Some(false), "{rel}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{rel}");
        let env = agent.env.clone().unwrap();
        let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
        assert_eq!(
            node.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "spec.nodeName"
        );
        let args = agent.args.clone().unwrap();
        assert_eq!(args[0], "agent");
        let port = agent.ports.as_ref().unwrap()[0].container_port;
        assert!(
            args.contains(&format!("--health-addr=0.0.0.0:{port}")),
            "{rel}"
        );
        for probe in [&agent.liveness_probe, &agent.readiness_probe] {
            let get = probe.as_ref().unwrap().http_get.clone().unwrap();
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
            );
        }
        // Every ConfigMap volume exists in deploy/ (or deploy/frr/).
        for v in pod.volumes.unwrap() {
            if let Some(cm) = v.config_map {
                assert!(names("ConfigMap").contains(&cm.name), "{rel}: {}", cm.name);
            }
        }
    }
    // The FRR variant reaches FRR's vty sockets through the group the image fixes.
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let ds = daemonset("deploy/frr/agent.yaml");
    let groups = ds
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .security_context
        .unwrap();
    let gid = groups.supplemental_groups.unwrap()[0];
    assert!(
        dockerfile.contains(&format!("--gid {gid} frrvty")),
        "supplementalGroups {gid} is not the image's frrvty group"
    );
    // Service accounts are bound; the allocator's flags match its Lease RBAC.
    for sa in names("ServiceAccount") {
        let bound = all
            .iter()
            .any(|d| d["kind"] == "ClusterRoleBinding" && d["subjects"][0]["name"] == sa.as_str());
        assert!(bound, "ServiceAccount {sa} has no ClusterRoleBinding");
    }
    let defaults = routelb::allocator::Options::default();
    let lease_role = object("deploy/rbac.yaml", "Role", "routelb-allocator-lease");
    assert_eq!(
        lease_role["rules"][1]["resourceNames"][0],
        defaults.lease_name
    );
    assert_eq!(
        lease_role["metadata"]["namespace"],
        defaults.lease_namespace.as_str()
    );
    let deployment = object("deploy/allocator.yaml", "Deployment", "routelb-allocator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    // The agent's Secret namespace is the one its Role grants.
    let secrets = object("deploy/rbac.yaml", "Role", "routelb-agent-secrets");
    assert_eq!(secrets["metadata"]["namespace"], "routelb-system");
    // The agent writes its NodeRoutingStatus where its Role lets it, and no more.
    let report = routelb::agent::report::ReportOptions::default();
    let status = object("deploy/rbac.yaml", "Role", "routelb-agent-status");
    assert_eq!(status["metadata"]["namespace"], report.namespace.as_str());
    assert_eq!(
        status["rules"],
        serde_json::json!([
            {"apiGroups": ["routelb.io"], "resources": ["noderoutingstatuses"], "verbs": ["get", "create", "update"]},
            {"apiGroups": ["routelb.io"], "resources": ["noderoutingstatuses/status"], "verbs": ["update"]}
        ])
    );
}

/// Every metric the example alerts use is one routelb exports.
#[test]
fn the_example_alerts_use_metrics_routelb_exports() {
    let rules = docs("deploy/monitoring/prometheusrule.yaml");
    let mut sources = String::new();
    for dir in [
        "src",
        "src/agent",
        "src/allocator",
        "src/kernel",
        "src/k8s",
        "src/daemon",
    ] {
        for e in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                sources.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    let mut seen = 0;
    for group in rules[0]["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("routelb_") {
                    seen += 1;
                    assert!(
                        sources.contains(&format!("\"{word}\"")),
                        "alert {} uses {word}, which routelb does not export",
                        rule["alert"]
                    );
                }
            }
        }
    }
    assert!(seen >= 5, "the alerts name routelb's metrics");
}

// ----------------------------------------------------------------------------------
// The examples, applied to an API server

/// Creates or updates every object, resolving kinds through the API's discovery like
/// `kubectl apply`.
async fn apply(client: &Client, objects: &[Value]) {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for d in objects {
        let obj: DynamicObject = serde_json::from_value(d.clone()).unwrap();
        let types = obj.types.clone().unwrap();
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"));
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            Api::namespaced_with(
                client.clone(),
                obj.namespace().as_deref().unwrap_or("default"),
                &ar,
            )
        } else {
            Api::all_with(client.clone(), &ar)
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("examples").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {}: {e}", types.kind, obj.name_any()));
    }
}

fn examples() -> Vec<Value> {
    [
        "examples/addresspools.yaml",
        "examples/bgppeers.yaml",
        "examples/routerconfig.yaml",
        "examples/services.yaml",
    ]
    .iter()
    .flat_map(|f| docs(f))
    .collect()
}

#[tokio::test]
async fn the_examples_are_accepted_and_their_services_get_addresses() {
    let c = Cluster::new().await;
    apply(&c.client, &examples()).await;
    let allocator = start_allocator(&c, allocator_options("examples"));
    // web and dual draw from public, lowest free first, .0 avoided (which of the two
    // is first depends on the order the allocator sees them).
    let web = c.wait_ips("demo", "web", 1).await;
    let api = c.wait_ips("demo", "api", 1).await;
    assert_eq!(api, [ip("203.0.113.10")], "the requested address");
    let udp = c.wait_ips("demo", "dns-udp", 1).await;
    let tcp = c.wait_ips("demo", "dns-tcp", 1).await;
    assert_eq!(udp, tcp, "the two DNS Services share");
    assert!(
        udp[0].to_string().starts_with("198.51.100."),
        "from internal: {udp:?}"
    );
    let dual = c.wait_ips("demo", "dual", 2).await;
    assert!(dual[0].is_ipv4() && dual[1].is_ipv6(), "{dual:?}");
    let mut first = vec![web[0], dual[0]];
    first.sort();
    assert_eq!(first, [ip("203.0.113.1"), ip("203.0.113.2")]);
    assert_eq!(dual[1], ip("2001:db8:100::"));
    let pool = c
        .wait_pool("public", "public pool status counts 3 + 1", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.ipv4.as_ref().is_some_and(|f| f.allocated == 3))
        })
        .await;
    assert!(pool.status.unwrap().ipv6.is_some_and(|f| f.allocated == 1));
    allocator.stop().await;
}

// ----------------------------------------------------------------------------------
// The agent pod, as its DaemonSet describes it

const NODE: &str = "node-a";

/// The pod's volumes as directories: ConfigMaps filled from the generated manifests,
/// emptyDirs created world-writable as the kubelet does.
struct Volumes {
    root: PathBuf,
}

impl Volumes {
    fn new(ds: &DaemonSet) -> Volumes {
        let root = std::env::temp_dir().join(format!(
            "routelb-pod-{}-{}",
            std::process::id(),
            free_port()
        ));
        let configmaps: Vec<ConfigMap> = ["deploy/templates.yaml", "deploy/frr/bootstrap.yaml"]
            .iter()
            .flat_map(|f| docs(f))
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
        for v in pod.volumes.unwrap() {
            let dir = root.join(&v.name);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(cm) = v.config_map {
                let data = configmaps
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some(&cm.name))
                    .and_then(|c| c.data.clone())
                    .unwrap_or_else(|| panic!("no ConfigMap {}", cm.name));
                for (k, text) in data {
                    std::fs::write(dir.join(k), text).unwrap();
                }
            } else {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
        }
        Volumes { root }
    }

    /// The container's paths with its mounts replaced by the volume directories.
    fn rewrite(&self, c: &Container, s: &str) -> String {
        let mut mounts: Vec<(String, String)> = c
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.mount_path, m.name))
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        // Placeholders first, so a volume directory (under /tmp) is not rewritten again.
        let mut out = s.to_string();
        for (i, (path, _)) in mounts.iter().enumerate() {
            out = out.replace(path.as_str(), &format!("\u{0}{i}\u{0}"));
        }
        for (i, (_, name)) in mounts.iter().enumerate() {
            out = out.replace(
                &format!("\u{0}{i}\u{0}"),
                self.root.join(name).to_str().unwrap(),
            );
        }
        out
    }

    fn file(&self, volume: &str, name: &str) -> PathBuf {
        self.root.join(volume).join(name)
    }
}

impl Drop for Volumes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Starts a container's process the way the runtime would: its command (or the image's
/// entrypoint, routelb, with its args), its environment, and only the capabilities its
/// securityContext leaves (root in the container, drop ALL + add), no new privileges,
/// the pod's supplemental groups (mapped to this machine's IDs).
fn start(
    c: &Container,
    vols: &Volumes,
    extra_env: &[(&str, &str)],
    groups: &[u32],
    wait: bool,
) -> Option<Proc> {
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{}: only drop-ALL containers are emulated",
        c.name
    );
    let mut bounding = String::from("-all");
    for cap in caps.add.unwrap_or_default() {
        bounding.push_str(&format!(",+{}", cap.to_lowercase()));
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all");
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    if sc.allow_privilege_escalation == Some(false) {
        cmd.arg("--no-new-privs");
    }
    cmd.arg("--");
    match &c.command {
        Some(command) => {
            cmd.args(command.iter().map(|s| vols.rewrite(c, s)));
        }
        None => {
            cmd.arg(env!("CARGO_BIN_EXE_routelb"));
        }
    }
    cmd.args(
        c.args
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| vols.rewrite(c, s)),
    );
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap());
    for e in c.env.clone().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().unwrap().field_path.as_str() {
                "spec.nodeName" => NODE.into(),
                "metadata.namespace" => "routelb-system".into(),
                other => panic!("{}: env from {other} not emulated", c.name),
            },
            _ => String::new(),
        };
        cmd.env(&e.name, value);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let logs = std::env::var_os("ROUTELB_TEST_LOGS").is_some();
    cmd.stdout(Stdio::null()).stderr(if logs {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    if wait {
        let status = cmd.status().unwrap();
        assert!(status.success(), "init container {} failed", c.name);
        None
    } else {
        Some(Proc(cmd.spawn().unwrap()))
    }
}

/// Effective capabilities of a process, as the kernel reports them.
fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

const NET_ADMIN_AND_RAW: u64 = (1 << 12) | (1 << 13);

/// The cluster side of a pod test: examples applied, this node (rack b, so both peers
/// apply, one with a password from the example Secret) and one Service announced here.
async fn cluster_for_pod(daemon: &str) -> Cluster {
    let c = Cluster::new().await;
    let mut objects = examples();
    for o in &mut objects {
        if o["kind"] == "RouterConfig" {
            o["spec"]["daemon"] = json!(daemon);
        }
    }
    apply(&c.client, &objects).await;
    c.node(NODE, &[("rack", "b")]).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes
        .patch_status(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}),
            ),
        )
        .await
        .unwrap();
    c.assign("demo", "web", &["203.0.113.1"], "public").await;
    c
}

/// Waits until the agent pod has done its work: ready, the address on kube-lb0 and its
/// route in table 200, and the daemon's configuration loaded; returns the metrics.
async fn wait_for_the_pod(ns: &NetNs, port: u16) -> String {
    let start = Instant::now();
    loop {
        let (code, detail) = http_get(port, "/readyz").await;
        let (_, m) = http_get(port, "/metrics").await;
        let show = |args: &[&str]| {
            let out = ns.exec(&[&["ip"], args].concat());
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let addr = show(&["-4", "addr", "show", "dev", "kube-lb0"]);
        let routes = show(&["-4", "route", "show", "table", "200"]);
        let reloaded = metric(&m, "routelb_daemon_reloads_total", &[("result", "ok")])
            .is_some_and(|n| n >= 1.0);
        if code == 200
            && addr.contains("203.0.113.1/32")
            && routes.contains("203.0.113.1 dev kube-lb0")
            && reloaded
            && metric(&m, "routelb_daemon_up", &[]) == Some(1.0)
        {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent pod did not converge: readyz {code} {detail}, kube-lb0 {addr:?}, table 200 {routes:?}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn in_namespace<F: std::future::Future<Output = ()>>(ns: &NetNs, body: impl FnOnce() -> F + Send) {
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    });
}

/// The health port the manifest's probes use.
fn probe_port(agent: &Container) -> u16 {
    agent.ports.as_ref().unwrap()[0].container_port as u16
}

#[test]
fn the_bird_agent_pod_works_with_only_its_daemonset_capabilities() {
    let ds = daemonset("deploy/agent.yaml");
    let ns = NetNs::new("pod-bird");
    let vols = Volumes::new(&ds);
    // Everything runs inside the node namespace: the API server on its loopback, the
    // agent on the host network of that "node", as hostNetwork pods do.
    // The node's own address on its LAN (its InternalIP).
    ns.ip(&["link", "add", "eth0", "type", "bridge"]);
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    in_namespace(&ns, || async {
        let c = cluster_for_pod("bird").await;
        let kc = c.kubeconfig();
        let kc = kc.to_str().unwrap();
        start(&container(&ds, "bootstrap"), &vols, &[], &[], true);
        let bird = start(&container(&ds, "bird"), &vols, &[], &[], false).unwrap();
        let agent_c = container(&ds, "agent");
        let agent = start(&agent_c, &vols, &[("ROUTELB_KUBECONFIG", kc)], &[], false).unwrap();
        let m = wait_for_the_pod(&ns, probe_port(&agent_c)).await;
        assert_eq!(
            cap_eff(agent.pid()),
            NET_ADMIN_AND_RAW,
            "the agent ran with exactly NET_ADMIN and NET_RAW"
        );
        assert_eq!(
            metric(&m, "routelb_announced_addresses", &[("family", "ipv4")]),
            Some(1.0)
        );
        // BIRD runs the rendered configuration, with the Secret's password.
        let conf = std::fs::read_to_string(vols.file("bird-config", "bird.conf")).unwrap();
        assert!(
            conf.contains("192.0.2.129") && conf.contains("change-me"),
            "{conf}"
        );
        // The sidecar's liveness probe, as written, passes.
        let probe = container(&ds, "bird").liveness_probe.unwrap().exec.unwrap();
        let cmd: Vec<String> = probe
            .command
            .unwrap()
            .iter()
            .map(|s| vols.rewrite(&container(&ds, "bird"), s))
            .collect();
        let out = Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let show = Command::new("birdc")
            .args(["-s", vols.file("bird-run", "bird.ctl").to_str().unwrap()])
            .args(["show", "protocols"])
            .output()
            .unwrap();
        let protocols = String::from_utf8_lossy(&show.stdout);
        assert!(protocols.contains("BGP"), "{protocols}");
        drop(agent);
        drop(bird);
    });
}

#[test]
fn the_frr_agent_pod_works_with_only_its_daemonset_capabilities() {
    let ds = daemonset("deploy/frr/agent.yaml");
    let ns = NetNs::new("pod-frr");
    let vols = Volumes::new(&ds);
    // The image's frrvty group (in supplementalGroups) is this machine's frrvty.
    let group = std::fs::read_to_string("/etc/group").unwrap();
    let frrvty: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("frrvty:x:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|g| g.parse().ok())
        .expect("FRR is installed (group frrvty)");
    in_namespace(&ns, || async {
        let c = cluster_for_pod("frr").await;
        let kc = c.kubeconfig();
        let kc = kc.to_str().unwrap();
        start(&container(&ds, "bootstrap"), &vols, &[], &[], true);
        // FRR's daemons as the sidecar runs them (frrinit.sh works on the system paths,
        // so they are started directly): as the frr user, sockets in the shared volume.
        let conf = vols.file("frr-config", "frr.conf");
        let run = vols.root.join("frr-run");
        let mut daemons = Vec::new();
        for d in ["zebra", "bgpd"] {
            let mut cmd = Command::new(format!("/usr/lib/frr/{d}"));
            cmd.args(["-F", "traditional", "--vty_socket"])
                .arg(&run)
                .arg("-z")
                .arg(run.join("zserv.api"))
                .arg("-i")
                .arg(run.join(format!("{d}.pid")))
                .arg("-f")
                .arg(&conf)
                .args(["-u", "frr", "-g", "frr", "--log", "stdout"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if d == "bgpd" {
                cmd.args(["-p", "179"]);
            }
            daemons.push(Proc(cmd.spawn().unwrap()));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let agent_c = container(&ds, "agent");
        let agent = start(
            &agent_c,
            &vols,
            &[("ROUTELB_KUBECONFIG", kc)],
            &[frrvty],
            false,
        )
        .unwrap();
        wait_for_the_pod(&ns, probe_port(&agent_c)).await;
        assert_eq!(cap_eff(agent.pid()), NET_ADMIN_AND_RAW);
        // FRR runs the rendered configuration, applied by frr-reload.py from the agent.
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&run)
            .args(["-c", "show running-config"])
            .output()
            .unwrap();
        let running = String::from_utf8_lossy(&out.stdout);
        assert!(
            running.contains("router bgp 64512") && running.contains("neighbor 192.0.2.129"),
            "{running}"
        );
        drop(agent);
        drop(daemons);
    });
}
