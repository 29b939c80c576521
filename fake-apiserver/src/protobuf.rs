//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which kubectl's typed
//! commands send (`kubectl create namespace`, `create service`, `create secret`, `create
//! configmap`): the Kubernetes envelope (`k8s\0` + `runtime.Unknown`) decoded with
//! k8s-pb's generated types, then turned into the JSON the rest of the server stores.
//! Responses stay JSON, which those clients accept.

use base64::Engine;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::policy::v1 as policy;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// Whether a Content-Type is the Kubernetes protobuf one.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim() == "application/vnd.kubernetes.protobuf")
}

/// The JSON form of a protobuf-encoded object, or what is wrong with it.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or("a protobuf body starts with the k8s\\0 magic")?;
    let unknown = Unknown::decode(raw).map_err(|e| format!("the protobuf envelope: {e}"))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let bytes = unknown.raw.unwrap_or_default();
    let bad = |e: prost::DecodeError| format!("the protobuf {kind}: {e}");
    let mut v = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let n = core::Namespace::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            if let Some(spec) = n.spec {
                let mut s = Map::new();
                strings(&mut s, "finalizers", spec.finalizers);
                o.insert("spec".into(), Value::Object(s));
            }
            if let Some(status) = n.status {
                let mut s = Map::new();
                plain(&mut s, "phase", status.phase);
                if !s.is_empty() {
                    o.insert("status".into(), Value::Object(s));
                }
            }
            o
        }
        ("v1", "Secret") => {
            let n = core::Secret::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            plain(&mut o, "type", n.r#type);
            opt(&mut o, "immutable", n.immutable);
            bytes_map(&mut o, "data", n.data);
            string_map(&mut o, "stringData", n.string_data);
            o
        }
        ("v1", "ConfigMap") => {
            let n = core::ConfigMap::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            opt(&mut o, "immutable", n.immutable);
            string_map(&mut o, "data", n.data);
            bytes_map(&mut o, "binaryData", n.binary_data);
            o
        }
        ("v1", "Service") => {
            let n = core::Service::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            if let Some(spec) = n.spec {
                o.insert("spec".into(), Value::Object(service_spec(spec)));
            }
            if let Some(status) = n.status {
                let ingress: Vec<Value> = status
                    .load_balancer
                    .map(|lb| lb.ingress)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| {
                        let mut x = Map::new();
                        plain(&mut x, "ip", i.ip);
                        plain(&mut x, "hostname", i.hostname);
                        opt(&mut x, "ipMode", i.ip_mode);
                        Value::Object(x)
                    })
                    .collect();
                let lb = if ingress.is_empty() {
                    json!({})
                } else {
                    json!({"ingress": ingress})
                };
                o.insert("status".into(), json!({"loadBalancer": lb}));
            }
            o
        }
        ("v1", "ServiceAccount") => {
            let n = core::ServiceAccount::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            objects(&mut o, "secrets", n.secrets, |r, x| {
                plain(x, "kind", r.kind);
                plain(x, "namespace", r.namespace);
                plain(x, "name", r.name);
                plain(x, "uid", r.uid);
                plain(x, "apiVersion", r.api_version);
                plain(x, "resourceVersion", r.resource_version);
                plain(x, "fieldPath", r.field_path);
            });
            objects(&mut o, "imagePullSecrets", n.image_pull_secrets, |r, x| {
                plain(x, "name", r.name);
            });
            opt(
                &mut o,
                "automountServiceAccountToken",
                n.automount_service_account_token,
            );
            o
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let n = rbac::Role::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            o.insert("rules".into(), rules(n.rules));
            o
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let n = rbac::ClusterRole::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            o.insert("rules".into(), rules(n.rules));
            if let Some(a) = n.aggregation_rule {
                let selectors: Vec<Value> =
                    a.cluster_role_selectors.into_iter().map(selector).collect();
                o.insert(
                    "aggregationRule".into(),
                    json!({"clusterRoleSelectors": selectors}),
                );
            }
            o
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let n = rbac::RoleBinding::decode(bytes.as_slice()).map_err(bad)?;
            binding(object(n.metadata), n.subjects, n.role_ref)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let n = rbac::ClusterRoleBinding::decode(bytes.as_slice()).map_err(bad)?;
            binding(object(n.metadata), n.subjects, n.role_ref)
        }
        ("policy/v1", "PodDisruptionBudget") => {
            let n = policy::PodDisruptionBudget::decode(bytes.as_slice()).map_err(bad)?;
            let mut o = object(n.metadata);
            if let Some(spec) = n.spec {
                // All pointers in Go: present means set (minAvailable: 0 included).
                let mut x = Map::new();
                if let Some(v) = spec.min_available {
                    x.insert("minAvailable".into(), int_or_string(v));
                }
                if let Some(v) = spec.max_unavailable {
                    x.insert("maxUnavailable".into(), int_or_string(v));
                }
                if let Some(sel) = spec.selector {
                    x.insert("selector".into(), selector(sel));
                }
                opt(
                    &mut x,
                    "unhealthyPodEvictionPolicy",
                    spec.unhealthy_pod_eviction_policy,
                );
                o.insert("spec".into(), Value::Object(x));
            }
            o
        }
        _ => {
            return Err(format!(
                "protobuf bodies are read for v1 Namespaces, Services, Secrets, ConfigMaps and \
                 ServiceAccounts, RBAC kinds and PodDisruptionBudgets; send {api_version} {kind} as JSON"
            ));
        }
    };
    v.insert("apiVersion".into(), json!(api_version));
    v.insert("kind".into(), json!(kind));
    Ok(Value::Object(v))
}

/// A field Go holds by pointer: present when sent.
fn opt<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(key.into(), v.into());
    }
}

/// A field Go holds by value: Go's encoder always sends it, and its JSON leaves out the
/// zero value (`omitempty`), so zero means unset.
fn plain<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, v: Option<T>) {
    let Some(v) = v.map(Into::into) else {
        return;
    };
    let zero = match &v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    };
    if !zero {
        m.insert(key.into(), v);
    }
}

/// A list of objects, each filled in by `f`, unless it is empty (Go's JSON omits it).
fn objects<T>(
    m: &mut Map<String, Value>,
    key: &str,
    items: Vec<T>,
    f: impl Fn(T, &mut Map<String, Value>),
) {
    if items.is_empty() {
        return;
    }
    let list = items
        .into_iter()
        .map(|i| {
            let mut x = Map::new();
            f(i, &mut x);
            Value::Object(x)
        })
        .collect();
    m.insert(key.into(), Value::Array(list));
}

fn strings(m: &mut Map<String, Value>, key: &str, v: Vec<String>) {
    if !v.is_empty() {
        m.insert(key.into(), json!(v));
    }
}

fn string_map(
    m: &mut Map<String, Value>,
    key: &str,
    v: std::collections::BTreeMap<String, String>,
) {
    if !v.is_empty() {
        m.insert(key.into(), json!(v));
    }
}

fn bytes_map(
    m: &mut Map<String, Value>,
    key: &str,
    v: std::collections::BTreeMap<String, Vec<u8>>,
) {
    if !v.is_empty() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let encoded: Map<String, Value> = v
            .into_iter()
            .map(|(k, b)| (k, json!(b64.encode(b))))
            .collect();
        m.insert(key.into(), Value::Object(encoded));
    }
}

fn time(t: Option<meta::Time>) -> Option<String> {
    // Go sends a zero time as an empty message.
    let seconds = t?.seconds.filter(|s| *s != 0)?;
    jiff::Timestamp::from_second(seconds)
        .ok()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn object(m: Option<meta::ObjectMeta>) -> Map<String, Value> {
    let mut o = Map::new();
    let Some(m) = m else {
        return o;
    };
    let mut md = Map::new();
    plain(&mut md, "name", m.name);
    plain(&mut md, "generateName", m.generate_name);
    plain(&mut md, "namespace", m.namespace);
    plain(&mut md, "uid", m.uid);
    plain(&mut md, "resourceVersion", m.resource_version);
    plain(&mut md, "generation", m.generation);
    plain(&mut md, "creationTimestamp", time(m.creation_timestamp));
    opt(&mut md, "deletionTimestamp", time(m.deletion_timestamp));
    opt(
        &mut md,
        "deletionGracePeriodSeconds",
        m.deletion_grace_period_seconds,
    );
    string_map(&mut md, "labels", m.labels);
    string_map(&mut md, "annotations", m.annotations);
    strings(&mut md, "finalizers", m.finalizers);
    objects(&mut md, "ownerReferences", m.owner_references, |r, x| {
        plain(x, "apiVersion", r.api_version);
        plain(x, "kind", r.kind);
        plain(x, "name", r.name);
        plain(x, "uid", r.uid);
        opt(x, "controller", r.controller);
        opt(x, "blockOwnerDeletion", r.block_owner_deletion);
    });
    o.insert("metadata".into(), Value::Object(md));
    o
}

fn rules(rules: Vec<rbac::PolicyRule>) -> Value {
    Value::Array(
        rules
            .into_iter()
            .map(|r| {
                let mut x = Map::new();
                strings(&mut x, "verbs", r.verbs);
                strings(&mut x, "apiGroups", r.api_groups);
                strings(&mut x, "resources", r.resources);
                strings(&mut x, "resourceNames", r.resource_names);
                strings(&mut x, "nonResourceURLs", r.non_resource_ur_ls);
                Value::Object(x)
            })
            .collect(),
    )
}

fn binding(
    mut o: Map<String, Value>,
    subjects: Vec<rbac::Subject>,
    role_ref: Option<rbac::RoleRef>,
) -> Map<String, Value> {
    objects(&mut o, "subjects", subjects, |s, x| {
        plain(x, "kind", s.kind);
        plain(x, "apiGroup", s.api_group);
        plain(x, "name", s.name);
        plain(x, "namespace", s.namespace);
    });
    let r = role_ref.unwrap_or_default();
    o.insert(
        "roleRef".into(),
        json!({
            "apiGroup": r.api_group.unwrap_or_default(),
            "kind": r.kind.unwrap_or_default(),
            "name": r.name.unwrap_or_default(),
        }),
    );
    o
}

fn selector(s: meta::LabelSelector) -> Value {
    let mut x = Map::new();
    string_map(&mut x, "matchLabels", s.match_labels);
    objects(&mut x, "matchExpressions", s.match_expressions, |e, y| {
        plain(y, "key", e.key);
        plain(y, "operator", e.operator);
        strings(y, "values", e.values);
    });
    Value::Object(x)
}

fn int_or_string(v: IntOrString) -> Value {
    match v.r#type {
        Some(1) => json!(v.str_val.unwrap_or_default()),
        _ => json!(v.int_val.unwrap_or_default()),
    }
}

fn service_spec(s: core::ServiceSpec) -> Map<String, Value> {
    let mut o = Map::new();
    objects(&mut o, "ports", s.ports, |p, x| {
        plain(x, "name", p.name);
        plain(x, "protocol", p.protocol);
        opt(x, "appProtocol", p.app_protocol);
        plain(x, "port", p.port);
        // A zero IntOrString is an unset one (the server defaults it to the port).
        plain(x, "targetPort", p.target_port.map(int_or_string));
        plain(x, "nodePort", p.node_port);
    });
    string_map(&mut o, "selector", s.selector);
    plain(&mut o, "clusterIP", s.cluster_ip);
    strings(&mut o, "clusterIPs", s.cluster_ips);
    plain(&mut o, "type", s.r#type);
    strings(&mut o, "externalIPs", s.external_ips);
    plain(&mut o, "sessionAffinity", s.session_affinity);
    plain(&mut o, "loadBalancerIP", s.load_balancer_ip);
    strings(
        &mut o,
        "loadBalancerSourceRanges",
        s.load_balancer_source_ranges,
    );
    plain(&mut o, "externalName", s.external_name);
    plain(&mut o, "externalTrafficPolicy", s.external_traffic_policy);
    plain(&mut o, "healthCheckNodePort", s.health_check_node_port);
    plain(
        &mut o,
        "publishNotReadyAddresses",
        s.publish_not_ready_addresses,
    );
    if let Some(c) = s.session_affinity_config {
        let timeout = c.client_ip.and_then(|c| c.timeout_seconds);
        o.insert(
            "sessionAffinityConfig".into(),
            json!({"clientIP": timeout.map_or_else(|| json!({}), |t| json!({"timeoutSeconds": t}))}),
        );
    }
    strings(&mut o, "ipFamilies", s.ip_families);
    opt(&mut o, "ipFamilyPolicy", s.ip_family_policy);
    opt(
        &mut o,
        "allocateLoadBalancerNodePorts",
        s.allocate_load_balancer_node_ports,
    );
    opt(&mut o, "loadBalancerClass", s.load_balancer_class);
    opt(&mut o, "internalTrafficPolicy", s.internal_traffic_policy);
    opt(&mut o, "trafficDistribution", s.traffic_distribution);
    o
}

// ----- responses ---------------------------------------------------------------------

/// Whether a client wants protobuf answers (it lists the type first, as client-go's
/// typed clients do).
pub fn preferred(accept: &str) -> bool {
    // A protobuf Table or metadata-only answer (`;as=...`) is not served: JSON then.
    accept
        .split(',')
        .next()
        .is_some_and(|t| is_protobuf(t) && !t.contains(';'))
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn text_map(v: &Value, key: &str) -> std::collections::BTreeMap<String, String> {
    v.get(key)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

fn text_list(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn base64_map(v: &Value, key: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    text_map(v, key)
        .into_iter()
        .filter_map(|(k, s)| b64.decode(s).ok().map(|b| (k, b)))
        .collect()
}

fn int(v: &Value, key: &str) -> Option<i32> {
    v.get(key)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
}

fn to_time(v: &Value, key: &str) -> Option<meta::Time> {
    let t: jiff::Timestamp = v.get(key)?.as_str()?.parse().ok()?;
    Some(meta::Time {
        seconds: Some(t.as_second()),
        nanos: Some(0),
    })
}

fn to_meta(v: &Value) -> meta::ObjectMeta {
    let m = v.get("metadata").cloned().unwrap_or_default();
    meta::ObjectMeta {
        name: text(&m, "name"),
        generate_name: text(&m, "generateName"),
        namespace: text(&m, "namespace"),
        uid: text(&m, "uid"),
        resource_version: text(&m, "resourceVersion"),
        generation: m.get("generation").and_then(Value::as_i64),
        creation_timestamp: to_time(&m, "creationTimestamp"),
        deletion_timestamp: to_time(&m, "deletionTimestamp"),
        deletion_grace_period_seconds: m.get("deletionGracePeriodSeconds").and_then(Value::as_i64),
        labels: text_map(&m, "labels"),
        annotations: text_map(&m, "annotations"),
        owner_references: m
            .get("ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| meta::OwnerReference {
                api_version: text(r, "apiVersion"),
                kind: text(r, "kind"),
                name: text(r, "name"),
                uid: text(r, "uid"),
                controller: r.get("controller").and_then(Value::as_bool),
                block_owner_deletion: r.get("blockOwnerDeletion").and_then(Value::as_bool),
            })
            .collect(),
        finalizers: text_list(&m, "finalizers"),
        ..Default::default()
    }
}

fn to_service(v: &Value) -> core::Service {
    let spec = v.get("spec").cloned().unwrap_or_default();
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| core::ServicePort {
            name: text(p, "name"),
            protocol: text(p, "protocol"),
            app_protocol: text(p, "appProtocol"),
            port: int(p, "port"),
            target_port: p.get("targetPort").map(|t| match t {
                Value::String(s) => IntOrString {
                    r#type: Some(1),
                    int_val: None,
                    str_val: Some(s.clone()),
                },
                other => IntOrString {
                    r#type: Some(0),
                    int_val: other.as_i64().and_then(|n| i32::try_from(n).ok()),
                    str_val: None,
                },
            }),
            node_port: int(p, "nodePort"),
        })
        .collect();
    let ingress = v
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| core::LoadBalancerIngress {
            ip: text(i, "ip"),
            hostname: text(i, "hostname"),
            ip_mode: text(i, "ipMode"),
            ports: Vec::new(),
        })
        .collect();
    core::Service {
        metadata: Some(to_meta(v)),
        spec: Some(core::ServiceSpec {
            ports,
            selector: text_map(&spec, "selector"),
            cluster_ip: text(&spec, "clusterIP"),
            cluster_ips: text_list(&spec, "clusterIPs"),
            r#type: text(&spec, "type"),
            external_ips: text_list(&spec, "externalIPs"),
            session_affinity: text(&spec, "sessionAffinity"),
            load_balancer_ip: text(&spec, "loadBalancerIP"),
            load_balancer_source_ranges: text_list(&spec, "loadBalancerSourceRanges"),
            external_name: text(&spec, "externalName"),
            external_traffic_policy: text(&spec, "externalTrafficPolicy"),
            health_check_node_port: int(&spec, "healthCheckNodePort"),
            publish_not_ready_addresses: spec
                .get("publishNotReadyAddresses")
                .and_then(Value::as_bool),
            session_affinity_config: spec.get("sessionAffinityConfig").map(|c| {
                core::SessionAffinityConfig {
                    client_ip: Some(core::ClientIpConfig {
                        timeout_seconds: c
                            .pointer("/clientIP/timeoutSeconds")
                            .and_then(Value::as_i64)
                            .and_then(|n| i32::try_from(n).ok()),
                    }),
                }
            }),
            ip_families: text_list(&spec, "ipFamilies"),
            ip_family_policy: text(&spec, "ipFamilyPolicy"),
            allocate_load_balancer_node_ports: spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool),
            load_balancer_class: text(&spec, "loadBalancerClass"),
            internal_traffic_policy: text(&spec, "internalTrafficPolicy"),
            traffic_distribution: text(&spec, "trafficDistribution"),
        }),
        status: Some(core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus { ingress }),
            conditions: Vec::new(),
        }),
    }
}

/// The protobuf form of an object of the kinds [`decode`] reads, in the Kubernetes
/// envelope; None for any other (it is answered as JSON).
pub fn encode(v: &Value) -> Option<Vec<u8>> {
    let api_version = v.get("apiVersion")?.as_str()?;
    let kind = v.get("kind")?.as_str()?;
    // Fields the protobuf form here leaves out: such objects are answered in JSON, so a
    // client's read-modify-write loses nothing.
    let has = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let ingress_ports = v
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|i| i.get("ports").is_some());
    if has("/status/conditions") || ingress_ports || has("/metadata/managedFields") {
        return None;
    }
    let raw = match (api_version, kind) {
        ("v1", "Service") => to_service(v).encode_to_vec(),
        ("v1", "Namespace") => core::Namespace {
            metadata: Some(to_meta(v)),
            spec: Some(core::NamespaceSpec {
                finalizers: v
                    .get("spec")
                    .map(|s| text_list(s, "finalizers"))
                    .unwrap_or_default(),
            }),
            status: Some(core::NamespaceStatus {
                phase: v.get("status").and_then(|s| text(s, "phase")),
                conditions: Vec::new(),
            }),
        }
        .encode_to_vec(),
        ("v1", "Secret") => core::Secret {
            metadata: Some(to_meta(v)),
            immutable: v.get("immutable").and_then(Value::as_bool),
            data: base64_map(v, "data"),
            string_data: Default::default(),
            r#type: text(v, "type"),
        }
        .encode_to_vec(),
        ("v1", "ConfigMap") => core::ConfigMap {
            metadata: Some(to_meta(v)),
            immutable: v.get("immutable").and_then(Value::as_bool),
            data: text_map(v, "data"),
            binary_data: base64_map(v, "binaryData"),
        }
        .encode_to_vec(),
        _ => return None,
    };
    Some(envelope(api_version, kind, raw))
}

/// An encoded object in the Kubernetes protobuf envelope: the magic prefix, then a
/// `runtime.Unknown` naming its type.
fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let envelope = Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(envelope.encode_to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_kubectl_bodies_become_the_json_objects_they_describe() {
        let svc = core::Service {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(core::ServiceSpec {
                ports: vec![core::ServicePort {
                    name: Some("80-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: None,
                    }),
                    ..Default::default()
                }],
                selector: [("app".to_string(), "web".to_string())].into(),
                r#type: Some("LoadBalancer".into()),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&envelope("v1", "Service", svc.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                         "selector": {"app": "web"}, "type": "LoadBalancer"}})
        );
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("pw".into()),
                namespace: Some("routelb-system".into()),
                ..Default::default()
            }),
            data: [("password".to_string(), b"s3cret".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["password"], "czNjcmV0");
        assert_eq!(v["metadata"]["namespace"], "routelb-system");
        // What the server answers reads back as what it stored.
        let stored = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "demo", "uid": "u-1", "resourceVersion": "7",
                         "generation": 2, "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {"app": "web"}, "annotations": {"routelb.io/pool": "public"},
                         "finalizers": ["service.kubernetes.io/load-balancer-cleanup"]},
            "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080}],
                     "selector": {"app": "web"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "type": "LoadBalancer", "sessionAffinity": "None", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 31000, "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "allocateLoadBalancerNodePorts": true, "internalTrafficPolicy": "Cluster"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}]}}});
        assert_eq!(decode(&encode(&stored).unwrap()).unwrap(), stored);
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "pw", "namespace": "routelb-system"},
            "type": "Opaque", "data": {"password": "czNjcmV0"}});
        assert_eq!(decode(&encode(&secret).unwrap()).unwrap(), secret);
        assert!(encode(&json!({"apiVersion": "v1", "kind": "Pod"})).is_none());
        let mut with_conditions = stored.clone();
        with_conditions["status"]["conditions"] = json!([{"type": "X", "status": "True"}]);
        assert!(
            encode(&with_conditions).is_none(),
            "answered in JSON, nothing lost"
        );
        assert!(!preferred(
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
        ));
        assert!(preferred(
            "application/vnd.kubernetes.protobuf,application/json"
        ));
        assert!(!preferred(
            "application/json, application/vnd.kubernetes.protobuf"
        ));
        let binding = rbac::RoleBinding {
            metadata: Some(meta::ObjectMeta {
                name: Some("read".into()),
                ..Default::default()
            }),
            subjects: vec![rbac::Subject {
                kind: Some("ServiceAccount".into()),
                api_group: Some(String::new()),
                name: Some("routelb-agent".into()),
                namespace: Some("routelb-system".into()),
            }],
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("Role".into()),
                name: Some("reader".into()),
            }),
        };
        let v = decode(&envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            binding.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            v["subjects"],
            json!([{"kind": "ServiceAccount", "name": "routelb-agent", "namespace": "routelb-system"}])
        );
        assert_eq!(v["roleRef"]["name"], "reader");
        let pdb = policy::PodDisruptionBudget {
            metadata: None,
            spec: Some(policy::PodDisruptionBudgetSpec {
                min_available: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(0),
                    str_val: None,
                }),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&envelope(
            "policy/v1",
            "PodDisruptionBudget",
            pdb.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            v["spec"],
            json!({"minAvailable": 0}),
            "a pointer's zero is set"
        );
        let err = decode(&envelope("apps/v1", "Deployment", Vec::new())).unwrap_err();
        assert!(err.contains("send apps/v1 Deployment as JSON"), "{err}");
        assert!(decode(b"{}").is_err());
    }
}
