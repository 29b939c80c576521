//! Strategic merge patch and (simplified) server-side apply merging.
//!
//! Both merge maps recursively, delete keys set to `null`, and merge lists by the list's
//! strategy: by a key (`spec.ports` by `port`, `status.conditions` by `type`, CRD lists
//! declared `x-kubernetes-list-type: map`), as a set (`metadata.finalizers`, CRD `set`
//! lists), or by replacing them (everything else, e.g. `status.loadBalancer.ingress`).
//! Strategic-merge directives supported: `$patch: replace|delete`,
//! `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>`; `$retainKeys` is
//! ignored.

use serde_json::{Map, Value};

/// How a list field merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    Replace,
    Set,
    Keys(Vec<String>),
}

/// List strategies of the built-in fields routelb and its tests patch, by field path
/// (list indexes omitted).
pub fn builtin_strategy(path: &[String]) -> ListStrategy {
    let joined = path.join(".");
    // Pod templates (Deployments, DaemonSets) and Pods: the patch merge keys of their
    // lists, so that kubectl apply's patches change one container, not the list.
    let last = path.last().map(String::as_str).unwrap_or_default();
    let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
    let key = |k: &str| ListStrategy::Keys(vec![k.to_string()]);
    match (parent, last) {
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets",
        ) if pod_spec_of(path) => {
            return key("name");
        }
        (Some("containers" | "initContainers"), "env") => return key("name"),
        (Some("containers" | "initContainers"), "volumeMounts") => return key("mountPath"),
        (Some("containers" | "initContainers"), "ports") => {
            return ListStrategy::Keys(vec!["containerPort".into(), "protocol".into()]);
        }
        _ => {}
    }
    match joined.as_str() {
        "metadata.finalizers" => ListStrategy::Set,
        "metadata.ownerReferences" => ListStrategy::Keys(vec!["uid".into()]),
        "spec.ports" => ListStrategy::Keys(vec!["port".into(), "protocol".into()]),
        "status.conditions" | "status.addresses" => ListStrategy::Keys(vec!["type".into()]),
        "spec.taints" => ListStrategy::Keys(vec!["key".into(), "effect".into()]),
        _ => ListStrategy::Replace,
    }
}

/// Whether a list field's parent is a pod spec (`spec` of a Pod, `spec.template.spec`).
fn pod_spec_of(path: &[String]) -> bool {
    let parent = &path[..path.len().saturating_sub(1)];
    parent == ["spec"] || parent.ends_with(&["template".to_string(), "spec".to_string()])
}

/// List strategies declared by a CRD schema, falling back to `Replace`.
pub fn schema_strategy(schema: &Value, path: &[String]) -> ListStrategy {
    if path.first().is_some_and(|p| p == "metadata") {
        return builtin_strategy(path);
    }
    let mut node = schema;
    for (i, seg) in path.iter().enumerate() {
        node = match node
            .get("properties")
            .and_then(|p| p.get(seg))
            .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
        {
            Some(n) => n,
            None => return ListStrategy::Replace,
        };
        if node.get("type").and_then(Value::as_str) == Some("array") && i + 1 < path.len() {
            node = node.get("items").unwrap_or(&Value::Null);
        }
    }
    match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListStrategy::Set,
        Some("map") => ListStrategy::Keys(
            node.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| {
                    k.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListStrategy::Replace,
    }
}

/// Merges `patch` into `target` (strategic merge / apply semantics).
pub fn merge(target: &mut Value, patch: &Value, strategy: &dyn Fn(&[String]) -> ListStrategy) {
    let mut path = Vec::new();
    merge_at(target, patch, strategy, &mut path);
}

fn merge_at(
    target: &mut Value,
    patch: &Value,
    strategy: &dyn Fn(&[String]) -> ListStrategy,
    path: &mut Vec<String>,
) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = p.clone();
        replaced.remove("$patch");
        *target = Value::Object(strip_directives(replaced));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Object(_) => {
                merge_at(t.entry(k.clone()).or_insert(Value::Null), v, strategy, path)
            }
            Value::Array(items) => {
                let merged = merge_list(t.get(k), items, &strategy(path), strategy, path);
                t.insert(k.clone(), Value::Array(merged));
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    // `$setElementOrder/<list>`: the merged list in the patch's order (items the order
    // does not name keep their place after those it does), as the real server orders it.
    for (k, order) in p {
        let Some(field) = k.strip_prefix("$setElementOrder/") else {
            continue;
        };
        let (Some(Value::Array(list)), Some(order)) = (t.get_mut(field), order.as_array()) else {
            continue;
        };
        let rank = |item: &Value| {
            order.iter().position(|o| match o {
                Value::Object(keys) => keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)),
                other => other == item,
            })
        };
        let mut ranked: Vec<(usize, Value)> = list
            .drain(..)
            .enumerate()
            .map(|(i, v)| (rank(&v).unwrap_or(order.len() + i), v))
            .collect();
        ranked.sort_by_key(|(r, _)| *r);
        list.extend(ranked.into_iter().map(|(_, v)| v));
    }
}

fn strip_directives(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .collect()
}

fn merge_list(
    current: Option<&Value>,
    patch: &[Value],
    list: &ListStrategy,
    strategy: &dyn Fn(&[String]) -> ListStrategy,
    path: &mut Vec<String>,
) -> Vec<Value> {
    let current: Vec<Value> = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match list {
        ListStrategy::Replace => patch
            .iter()
            .map(|v| match v {
                Value::Object(m) => Value::Object(strip_directives(m.clone())),
                other => other.clone(),
            })
            .collect(),
        ListStrategy::Set => {
            let mut out = current;
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            out
        }
        ListStrategy::Keys(keys) => {
            // A missing key the server defaults is its default (ports' protocol is TCP),
            // so an applied port without one matches the stored, defaulted one.
            let key_of = |v: &Value| -> Vec<Value> {
                keys.iter()
                    .map(|k| match v.get(k) {
                        Some(x) => x.clone(),
                        None if k == "protocol" => Value::String("TCP".into()),
                        None => Value::Null,
                    })
                    .collect()
            };
            let mut out = current;
            for item in patch {
                let k = key_of(item);
                let pos = out.iter().position(|c| key_of(c) == k);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_at(&mut out[i], item, strategy, path),
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        merge_at(&mut fresh, item, strategy, path);
                        out.push(fresh);
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_template_lists_merge_by_name_and_follow_the_element_order() {
        let mut ds = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "agent", "image": "a:1"}, {"name": "bird", "image": "b"}],
            "volumes": [{"name": "templates"}, {"name": "bird-run"}, {"name": "tmp"}],
        }}}});
        // What kubectl apply sends for deploy/ -> the FRR component.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "agent"}, {"name": "frr"}],
            "containers": [{"name": "agent", "image": "a:2"}, {"name": "frr", "image": "f"},
                           {"$patch": "delete", "name": "bird"}],
            "$setElementOrder/volumes": [{"name": "templates"}, {"name": "frr-run"}, {"name": "tmp"}],
            "volumes": [{"name": "frr-run"}, {"$patch": "delete", "name": "bird-run"}],
        }}}});
        merge(&mut ds, &patch, &builtin_strategy);
        assert_eq!(
            ds,
            json!({"spec": {"template": {"spec": {
                "containers": [{"name": "agent", "image": "a:2"}, {"name": "frr", "image": "f"}],
                "volumes": [{"name": "templates"}, {"name": "frr-run"}, {"name": "tmp"}],
            }}}})
        );
    }

    #[test]
    fn strategic_merge_of_the_fields_routelb_patches() {
        let mut svc = json!({
            "metadata": {"annotations": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}, {"port": 443, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}, "conditions": [{"type": "A", "status": "True"}]}
        });
        let patch = json!({
            "metadata": {"annotations": {"a": null, "c": "3"}, "finalizers": ["y"], "$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "web"}, {"port": 443, "protocol": "TCP", "$patch": "delete"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}, "conditions": [{"type": "B", "status": "False"}]}
        });
        merge(&mut svc, &patch, &builtin_strategy);
        assert_eq!(svc["metadata"]["annotations"], json!({"b": "2", "c": "3"}));
        assert_eq!(svc["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "name": "web"}])
        );
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "192.0.2.2"}])
        );
        assert_eq!(svc["status"]["conditions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn crd_list_types_drive_apply_merges() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"], "items": {"type": "object"}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}
        }}}});
        let mut obj = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}], "tags": ["a"]}});
        let applied = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Conflict", "status": "False"}], "tags": ["b"]}});
        merge(&mut obj, &applied, &|p| schema_strategy(&schema, p));
        assert_eq!(obj["status"]["conditions"][0]["status"], json!("True"));
        assert_eq!(obj["status"]["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(obj["status"]["tags"], json!(["a", "b"]));
    }
}
