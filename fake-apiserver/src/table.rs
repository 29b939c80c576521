//! Server-side Tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), what
//! `kubectl get` prints: the real server's columns and cells for the built-in kinds
//! (its printers, generated as for `-o wide`: the client hides priority-1 columns), the
//! `additionalPrinterColumns` of custom resources (JSONPath, typed cells, dates shown as
//! ages), and NAME/CREATED AT for anything else.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::jsonpath::JsonPath;
use crate::registry::ResourceType;

/// What a Table row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(q: Option<&str>) -> Include {
        match q {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Whether a request's Accept header asks for a Table (kubectl lists Table first).
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.first() == Some(&"application/json")
            && params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && (params.contains(&"v=v1") || params.contains(&"v=v1beta1"))
    })
}

/// A Table of objects (as the requested API version shows them).
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    list_meta: Value,
    include: Include,
    headers: bool,
    now: Timestamp,
) -> Value {
    let columns = columns(rt);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(rt, o, now)});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    })
                }
                Include::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "rows": rows,
    });
    if headers {
        t["columnDefinitions"] = Value::Array(
            columns
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "type": c.kind,
                        "format": c.format,
                        "description": c.description,
                        "priority": c.priority,
                    })
                })
                .collect(),
        );
    }
    t
}

struct Column {
    name: String,
    kind: String,
    format: String,
    description: String,
    priority: i64,
}

fn col(name: &str, priority: i64) -> Column {
    Column {
        name: name.into(),
        kind: "string".into(),
        format: if name == "Name" { "name" } else { "" }.into(),
        description: String::new(),
        priority,
    }
}

fn columns(rt: &ResourceType) -> Vec<Column> {
    let names: &[(&str, i64)] = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "services") => &[
            ("Name", 0),
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ],
        ("", "namespaces") => &[("Name", 0), ("Status", 0), ("Age", 0)],
        ("", "nodes") => &[
            ("Name", 0),
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
            ("Internal-IP", 1),
            ("External-IP", 1),
            ("OS-Image", 1),
            ("Kernel-Version", 1),
            ("Container-Runtime", 1),
        ],
        ("", "pods") => &[
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1),
        ],
        ("", "endpoints") => &[("Name", 0), ("Endpoints", 0), ("Age", 0)],
        ("discovery.k8s.io", "endpointslices") => &[
            ("Name", 0),
            ("AddressType", 0),
            ("Ports", 0),
            ("Endpoints", 0),
            ("Age", 0),
        ],
        ("", "secrets") => &[("Name", 0), ("Type", 0), ("Data", 0), ("Age", 0)],
        ("", "configmaps") => &[("Name", 0), ("Data", 0), ("Age", 0)],
        ("coordination.k8s.io", "leases") => &[("Name", 0), ("Holder", 0), ("Age", 0)],
        ("apps", "deployments") => &[
            ("Name", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        ("apps", "daemonsets") => &[
            ("Name", 0),
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Node Selector", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        ("", "serviceaccounts") => &[("Name", 0), ("Secrets", 0), ("Age", 0)],
        ("policy", "poddisruptionbudgets") => &[
            ("Name", 0),
            ("Min Available", 0),
            ("Max Unavailable", 0),
            ("Allowed Disruptions", 0),
            ("Age", 0),
        ],
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => {
            &[("Name", 0), ("Created At", 0)]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => &[
            ("Name", 0),
            ("Role", 0),
            ("Age", 0),
            ("Users", 1),
            ("Groups", 1),
            ("ServiceAccounts", 1),
        ],
        ("", "events") | ("events.k8s.io", "events") => &[
            ("Last Seen", 0),
            ("Type", 0),
            ("Reason", 0),
            ("Object", 0),
            ("Subobject", 1),
            ("Source", 1),
            ("Message", 0),
            ("First Seen", 1),
            ("Count", 1),
            ("Name", 1),
        ],
        _ => &[],
    };
    if !names.is_empty() {
        let mut out: Vec<Column> = names.iter().map(|(n, p)| col(n, *p)).collect();
        for c in &mut out {
            if matches!(
                c.name.as_str(),
                "Data"
                    | "Count"
                    | "Desired"
                    | "Current"
                    | "Up-to-date"
                    | "Available"
                    | "Secrets"
                    | "Allowed Disruptions"
            ) || (rt.plural == "daemonsets" && c.name == "Ready")
            {
                c.kind = "integer".into();
            }
            if c.name == "Created At" {
                c.kind = "date".into();
            }
            if rt.plural == "events" && c.name == "Name" {
                c.format = String::new();
            }
        }
        return out;
    }
    if rt.schema.is_some() {
        let mut out = vec![col("Name", 0)];
        for c in custom_columns(rt) {
            out.push(Column {
                name: c["name"].as_str().unwrap_or_default().into(),
                kind: c["type"].as_str().unwrap_or("string").into(),
                format: c["format"].as_str().unwrap_or_default().into(),
                description: c["description"].as_str().unwrap_or_default().into(),
                priority: c["priority"].as_i64().unwrap_or(0),
            });
        }
        return out;
    }
    let mut created = col("Created At", 0);
    created.kind = "date".into();
    vec![col("Name", 0), created]
}

/// A custom resource's columns after NAME: its `additionalPrinterColumns`, or AGE as the
/// real server adds when it has none.
fn custom_columns(rt: &ResourceType) -> Vec<Value> {
    if rt.printer_columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        rt.printer_columns.clone()
    }
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    v.pointer(path).and_then(Value::as_str).unwrap_or_default()
}

fn arr<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    v.pointer(path)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

fn cells(rt: &ResourceType, o: &Value, now: Timestamp) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let age = json!(age_of(s(o, "/metadata/creationTimestamp"), now));
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "services") => {
            let ports = arr(o, "/spec/ports")
                .iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64().filter(|n| *n > 0) {
                        Some(n) => format!("{}:{n}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            vec![
                name,
                json!(s(o, "/spec/type")),
                json!(
                    arr(o, "/spec/clusterIPs")
                        .first()
                        .and_then(Value::as_str)
                        .unwrap_or("<none>")
                ),
                json!(external_ip(o)),
                json!(or_none(ports)),
                age,
                json!(format_labels(o.pointer("/spec/selector"))),
            ]
        }
        ("", "namespaces") => vec![name, json!(s(o, "/status/phase")), age],
        ("", "nodes") => node_cells(o, name, age),
        ("", "pods") => pod_cells(o, name, age),
        ("", "endpoints") => {
            let mut all = Vec::new();
            for subset in arr(o, "/subsets") {
                for a in arr(subset, "/addresses") {
                    for p in arr(subset, "/ports") {
                        all.push(format!("{}:{}", s(a, "/ip"), p["port"]));
                    }
                    if arr(subset, "/ports").is_empty() {
                        all.push(s(a, "/ip").to_string());
                    }
                }
            }
            vec![name, json!(first_three(all)), age]
        }
        ("discovery.k8s.io", "endpointslices") => {
            let ports: Vec<String> = arr(o, "/ports")
                .iter()
                .map(|p| {
                    p["port"]
                        .as_i64()
                        .map_or("<unset>".into(), |n| n.to_string())
                })
                .collect();
            let addresses: Vec<String> = arr(o, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses").iter())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(first_three(addresses)),
                age,
            ]
        }
        ("", "secrets") => vec![
            name,
            json!(s(o, "/type")),
            json!(o.get("data").and_then(Value::as_object).map_or(0, Map::len)),
            age,
        ],
        ("", "configmaps") => {
            let n = ["data", "binaryData"]
                .iter()
                .map(|k| o.get(*k).and_then(Value::as_object).map_or(0, Map::len))
                .sum::<usize>();
            vec![name, json!(n), age]
        }
        ("coordination.k8s.io", "leases") => vec![name, json!(s(o, "/spec/holderIdentity")), age],
        ("apps", "deployments") => {
            let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            let mut out = vec![
                name,
                json!(format!(
                    "{}/{}",
                    n("/status/readyReplicas"),
                    // spec.replicas defaults to 1 (the real server fills it in).
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(n("/status/updatedReplicas")),
                json!(n("/status/availableReplicas")),
                age,
            ];
            out.extend(template_cells(o));
            out
        }
        ("apps", "daemonsets") => {
            let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            let mut out = vec![
                name,
                json!(n("/status/desiredNumberScheduled")),
                json!(n("/status/currentNumberScheduled")),
                json!(n("/status/numberReady")),
                json!(n("/status/updatedNumberScheduled")),
                json!(n("/status/numberAvailable")),
                json!(format_labels(o.pointer("/spec/template/spec/nodeSelector"))),
                age,
            ];
            out.extend(template_cells(o));
            out
        }
        ("", "serviceaccounts") => vec![name, json!(arr(o, "/secrets").len()), age],
        ("policy", "poddisruptionbudgets") => {
            let v = |p: &str| match o.pointer(p) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name,
                json!(v("/spec/minAvailable")),
                json!(v("/spec/maxUnavailable")),
                json!(
                    o.pointer("/status/disruptionsAllowed")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
                age,
            ]
        }
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => {
            vec![name, json!(s(o, "/metadata/creationTimestamp"))]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let subjects = |kind: &str| {
                arr(o, "/subjects")
                    .iter()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| match (kind, s(x, "/namespace")) {
                        ("ServiceAccount", ns) if !ns.is_empty() => {
                            format!("{ns}/{}", s(x, "/name"))
                        }
                        _ => s(x, "/name").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                )),
                age,
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        ("", "events") => event_cells(o, now),
        ("events.k8s.io", "events") => event_cells(&crate::objects::event_to_core(o), now),
        _ if rt.schema.is_some() => {
            let mut out = vec![name];
            for c in &custom_columns(rt) {
                let kind = c["type"].as_str().unwrap_or("string");
                let found = JsonPath::parse(c["jsonPath"].as_str().unwrap_or_default())
                    .map(|p| p.find(o).first().copied().cloned());
                out.push(match found {
                    Ok(Some(v)) => typed_cell(kind, &v, now),
                    _ => Value::Null,
                });
            }
            out
        }
        _ => vec![name, json!(s(o, "/metadata/creationTimestamp"))],
    }
}

/// A custom column's cell, as the real server types it.
fn typed_cell(kind: &str, v: &Value, now: Timestamp) -> Value {
    match (kind, v) {
        (_, Value::Null) => Value::Null,
        ("string", Value::String(_)) => v.clone(),
        // JSONPath prints other values as their JSON text.
        ("string", _) => json!(v.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(_)) => v.clone(),
        ("date", Value::String(t)) => match t.parse::<Timestamp>() {
            Ok(_) => json!(age_of(t, now)),
            Err(_) => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

fn external_ip(o: &Value) -> String {
    let external: Vec<&str> = arr(o, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match s(o, "/spec/type") {
        "ClusterIP" | "NodePort" => or_none(external.join(",")),
        "LoadBalancer" => {
            let mut lb = arr(o, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    i["ip"]
                        .as_str()
                        .or(i["hostname"].as_str())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(",");
            // The real printer generates wide, where nothing is shortened.
            if !external.is_empty() {
                let mut all: Vec<&str> = lb.split(',').filter(|x| !x.is_empty()).collect();
                all.extend(external);
                return all.join(",");
            }
            if lb.is_empty() {
                lb = "<pending>".into();
            }
            lb
        }
        "ExternalName" => s(o, "/spec/externalName").into(),
        _ => "<unknown>".into(),
    }
}

/// CONTAINERS, IMAGES and SELECTOR of a workload's pod template.
fn template_cells(o: &Value) -> Vec<Value> {
    let containers = arr(o, "/spec/template/spec/containers");
    let join = |k: &str| {
        containers
            .iter()
            .map(|c| s(c, k).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        json!(join("/name")),
        json!(join("/image")),
        json!(format_labels(o.pointer("/spec/selector/matchLabels"))),
    ]
}

fn format_labels(m: Option<&Value>) -> String {
    let pairs: Vec<String> = m
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    or_none(pairs.join(","))
}

fn first_three(all: Vec<String>) -> String {
    match all.len() {
        0 => "<none>".into(),
        1..=3 => all.join(","),
        n => format!("{} + {} more...", all[..3].join(","), n - 3),
    }
}

fn node_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let ready = arr(o, "/status/conditions")
        .iter()
        .find(|c| c["type"] == "Ready");
    let mut status = match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .or_else(|| {
                    (k == "kubernetes.io/role").then(|| v.as_str().unwrap_or_default().into())
                })
        })
        .collect();
    roles.sort();
    let address = |kind: &str| {
        arr(o, "/status/addresses")
            .iter()
            .find(|a| a["type"] == kind)
            .map_or("<none>".to_string(), |a| s(a, "/address").into())
    };
    let info = |k: &str| {
        let v = s(o, &format!("/status/nodeInfo/{k}"));
        if v.is_empty() { "<unknown>" } else { v }.to_string()
    };
    vec![
        name,
        json!(status),
        json!(or_none(roles.join(","))),
        age,
        json!(s(o, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

fn pod_cells(o: &Value, name: Value, age: Value) -> Vec<Value> {
    let statuses = arr(o, "/status/containerStatuses");
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    let mut status = s(o, "/status/reason").to_string();
    if status.is_empty() {
        status = s(o, "/status/phase").to_string();
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    let none = |p: &str| or_none(s(o, p).to_string());
    vec![
        name,
        json!(format!("{ready}/{}", arr(o, "/spec/containers").len())),
        json!(status),
        json!(restarts.to_string()),
        age,
        json!(none("/status/podIP")),
        json!(none("/spec/nodeName")),
        json!(none("/status/nominatedNodeName")),
        json!("<none>"),
    ]
}

fn event_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let since = |t: &str| {
        if t.is_empty() {
            String::new()
        } else {
            age_of(t, now)
        }
    };
    let mut first = since(s(o, "/firstTimestamp"));
    if first.is_empty() {
        first = since(s(o, "/eventTime"));
    }
    let mut last = since(s(o, "/lastTimestamp"));
    if last.is_empty() {
        last = first.clone();
    }
    let mut count = o["count"].as_i64().unwrap_or(0);
    if o.get("series").is_some_and(Value::is_object) {
        last = since(s(o, "/series/lastObservedTime"));
        count = o
            .pointer("/series/count")
            .and_then(Value::as_i64)
            .unwrap_or(count);
    } else if count == 0 {
        count = 1;
    }
    let kind = s(o, "/involvedObject/kind").to_ascii_lowercase();
    let target = match s(o, "/involvedObject/name") {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = [s(o, "/source/component"), s(o, "/reportingComponent")]
        .into_iter()
        .find(|x| !x.is_empty())
        .unwrap_or_default();
    let instance = [s(o, "/source/host"), s(o, "/reportingInstance")]
        .into_iter()
        .find(|x| !x.is_empty())
        .unwrap_or_default();
    let source = match (component, instance) {
        ("", _) => String::new(),
        (c, "") => c.to_string(),
        (c, i) => format!("{c}, {i}"),
    };
    vec![
        json!(last),
        json!(s(o, "/type")),
        json!(s(o, "/reason")),
        json!(target),
        json!(s(o, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(o, "/message").trim()),
        json!(first),
        json!(count),
        json!(s(o, "/metadata/name")),
    ]
}

/// The real server's age (`translateTimestampSince`): "45s", "3m12s", "5h", "2d3h", ...
pub fn age_of(timestamp: &str, now: Timestamp) -> String {
    match timestamp.parse::<Timestamp>() {
        Ok(t) => human_duration(now.as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

/// apimachinery's `duration.HumanDuration`, in whole seconds.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn rt(group: &str, plural: &str) -> std::sync::Arc<ResourceType> {
        Registry::default()
            .all()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
            .unwrap()
    }

    #[test]
    fn ages_read_as_the_real_server_writes_them() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (51 * 3600, "2d3h"),
            (8 * 86400, "8d"),
            (730 * 86400 + 86400, "2y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs} s");
        }
    }

    #[test]
    fn services_get_the_real_columns_and_cells() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.10", "fd00::10"],
                     "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000},
                               {"port": 53, "protocol": "UDP"}],
                     "selector": {"app": "web"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"ip": "2001:db8::10"}]}}
        });
        let t = table(
            &rt("", "services"),
            std::slice::from_ref(&svc),
            json!({"resourceVersion": "7"}),
            Include::Metadata,
            true,
            now,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
        assert_eq!(t["columnDefinitions"][6]["priority"], 1);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "LoadBalancer",
                "10.96.0.10",
                "203.0.113.10,2001:db8::10",
                "80:31000/TCP,53/UDP",
                "10m",
                "app=web"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let mut pending = svc;
        pending["status"] = json!({"loadBalancer": {}});
        pending["spec"]["selector"] = json!({});
        let cells = cells(&rt("", "services"), &pending, now);
        assert_eq!(cells[3], "<pending>");
        assert_eq!(cells[6], "<none>");
        let no_headers = table(
            &rt("", "services"),
            &[],
            json!({}),
            Include::None,
            false,
            now,
        );
        assert!(no_headers.get("columnDefinitions").is_none());
    }

    #[test]
    fn custom_resources_use_their_printer_columns() {
        let mut reg = Registry::default();
        crate::registry::register_pool_crd(
            &mut reg,
            json!({
            "schema": {"openAPIV3Schema": {"type": "object",
                "x-kubernetes-preserve-unknown-fields": true}},
            "additionalPrinterColumns": [
                {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                {"name": "Used", "type": "integer", "jsonPath": ".status.used"},
                {"name": "Ready", "type": "string",
                 "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]}),
        );
        let rt = reg.get("example.com", "v1", "pools").unwrap();
        let now: Timestamp = "2026-01-01T02:00:00Z".parse().unwrap();
        let pool = json!({
            "metadata": {"name": "lab", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"mode": "bgp"},
            "status": {"used": 3.0, "conditions": [{"type": "Ready", "status": "True"}]}
        });
        assert_eq!(
            cells(&rt, &pool, now),
            [
                json!("lab"),
                json!("bgp"),
                json!(3),
                json!("True"),
                json!("120m")
            ]
        );
        let bare =
            json!({"metadata": {"name": "new", "creationTimestamp": "2026-01-01T01:59:30Z"}});
        assert_eq!(
            cells(&rt, &bare, now),
            [
                json!("new"),
                Value::Null,
                Value::Null,
                Value::Null,
                json!("30s")
            ]
        );
    }

    #[test]
    fn kubectl_accept_headers_ask_for_tables() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
        assert!(!wanted(
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
        ));
    }
}
