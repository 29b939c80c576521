//! OpenAPI documents (`/openapi/v3`, `/openapi/v3/<group-version>`, `/openapi/v2`) and
//! server-side field validation (`fieldValidation=Strict|Warn|Ignore`).
//!
//! kubectl reads the v3 root to learn that the server validates fields itself (a PATCH
//! operation of the kind, or of Namespace for custom resources, lists `fieldValidation`),
//! then sends `fieldValidation=Strict` instead of validating on the client. The built-in
//! schemas come from k8s-openapi's generated types (schemars), the custom ones from each
//! CRD's `openAPIV3Schema`; one walk over either finds the fields a schema does not
//! declare, as the real server's strict decoder does.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event as CoreEvent, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as NewEvent;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::registry::{Registry, ResourceType};

const REF: &str = "#/components/schemas/";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

struct Builtins {
    schemas: Map<String, Value>,
    /// (group, version, kind) -> component name.
    kinds: Vec<(String, String, String, String)>,
}

static BUILTINS: LazyLock<Builtins> = LazyLock::new(|| {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    fn add<T: schemars::JsonSchema>(
        g: &mut SchemaGenerator,
        kinds: &mut Vec<(String, String, String, String)>,
        gvk: (&str, &str, &str),
    ) {
        let r = g.subschema_for::<T>();
        let name = r
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(REF))
            .expect("k8s-openapi types are referenced")
            .to_string();
        kinds.push((gvk.0.into(), gvk.1.into(), gvk.2.into(), name));
    }
    add::<Service>(&mut g, &mut kinds, ("", "v1", "Service"));
    add::<Endpoints>(&mut g, &mut kinds, ("", "v1", "Endpoints"));
    add::<Node>(&mut g, &mut kinds, ("", "v1", "Node"));
    add::<Namespace>(&mut g, &mut kinds, ("", "v1", "Namespace"));
    add::<Secret>(&mut g, &mut kinds, ("", "v1", "Secret"));
    add::<ConfigMap>(&mut g, &mut kinds, ("", "v1", "ConfigMap"));
    add::<Pod>(&mut g, &mut kinds, ("", "v1", "Pod"));
    add::<CoreEvent>(&mut g, &mut kinds, ("", "v1", "Event"));
    add::<NewEvent>(&mut g, &mut kinds, ("events.k8s.io", "v1", "Event"));
    add::<EndpointSlice>(
        &mut g,
        &mut kinds,
        ("discovery.k8s.io", "v1", "EndpointSlice"),
    );
    add::<Lease>(&mut g, &mut kinds, ("coordination.k8s.io", "v1", "Lease"));
    add::<CustomResourceDefinition>(
        &mut g,
        &mut kinds,
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
    );
    add::<ServiceAccount>(&mut g, &mut kinds, ("", "v1", "ServiceAccount"));
    add::<Deployment>(&mut g, &mut kinds, ("apps", "v1", "Deployment"));
    add::<DaemonSet>(&mut g, &mut kinds, ("apps", "v1", "DaemonSet"));
    add::<PodDisruptionBudget>(&mut g, &mut kinds, ("policy", "v1", "PodDisruptionBudget"));
    let rbac = "rbac.authorization.k8s.io";
    add::<Role>(&mut g, &mut kinds, (rbac, "v1", "Role"));
    add::<ClusterRole>(&mut g, &mut kinds, (rbac, "v1", "ClusterRole"));
    add::<RoleBinding>(&mut g, &mut kinds, (rbac, "v1", "RoleBinding"));
    add::<ClusterRoleBinding>(&mut g, &mut kinds, (rbac, "v1", "ClusterRoleBinding"));
    g.subschema_for::<ObjectMeta>();
    let mut schemas = g.take_definitions(true);
    let mut visited = BTreeSet::new();
    for (_, _, _, name) in &kinds {
        annotate_lists(&mut schemas, name, &[], &mut visited);
    }
    for (group, version, kind, name) in &kinds {
        if let Some(s) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
            // Servers fill metadata in; a body without it is a BadRequest, not Invalid.
            s.remove("required");
        }
    }
    Builtins { schemas, kinds }
});

/// The component a schema refers to (`$ref`, or `allOf: [$ref]` beside a description).
fn ref_name(s: &Value) -> Option<String> {
    let s = match s.get("allOf").and_then(Value::as_array) {
        Some(a) if a.len() == 1 => &a[0],
        _ => s,
    };
    s.get("$ref")?
        .as_str()?
        .strip_prefix(REF)
        .map(str::to_string)
}

/// Marks the list fields the server merges by key (or as a set) with the patch
/// extensions the real server publishes (`x-kubernetes-patch-strategy: merge`,
/// `x-kubernetes-patch-merge-key`), from the same table its strategic merge uses, so
/// that kubectl computes patches that change one container rather than the list.
fn annotate_lists(
    schemas: &mut Map<String, Value>,
    name: &str,
    path: &[String],
    visited: &mut BTreeSet<String>,
) {
    if !visited.insert(name.to_string()) {
        return;
    }
    let props: Vec<(String, Value)> = match schemas.get(name).and_then(|s| s.get("properties")) {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => return,
    };
    for (field, sub) in props {
        let mut p = path.to_vec();
        p.push(field.clone());
        if let Some(items) = sub.get("items") {
            let ext = match crate::patch::builtin_strategy(&p) {
                crate::patch::ListStrategy::Keys(keys) => Some(json!({
                    "x-kubernetes-patch-strategy": "merge",
                    "x-kubernetes-patch-merge-key": keys[0],
                })),
                crate::patch::ListStrategy::Set => {
                    Some(json!({"x-kubernetes-patch-strategy": "merge"}))
                }
                crate::patch::ListStrategy::Replace => None,
            };
            if let Some(Value::Object(ext)) = ext
                && let Some(prop) = schemas
                    .get_mut(name)
                    .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
                    .and_then(Value::as_object_mut)
            {
                prop.extend(ext);
            }
            if let Some(r) = ref_name(items) {
                annotate_lists(schemas, &r, &p, visited);
            }
        } else if let Some(r) = ref_name(&sub) {
            annotate_lists(schemas, &r, &p, visited);
        }
    }
}

/// The component name of a resource type's schema.
fn component(rt: &ResourceType) -> String {
    if rt.schema.is_some() {
        let reversed: Vec<&str> = rt.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind);
    }
    BUILTINS
        .kinds
        .iter()
        .find(|(g, v, k, _)| *g == rt.group && *v == rt.version && *k == rt.kind)
        .map(|(_, _, _, n)| n.clone())
        .unwrap_or_default()
}

/// A custom resource's schema as the real server publishes it: the CRD's, with
/// apiVersion, kind and metadata declared.
fn custom_schema(rt: &ResourceType) -> Option<Value> {
    let crd = rt.schema.as_ref()?;
    let mut s = crd.openapi.clone();
    let props = s
        .as_object_mut()?
        .entry("properties")
        .or_insert_with(|| json!({}));
    if let Some(p) = props.as_object_mut() {
        p.insert("apiVersion".into(), json!({"type": "string"}));
        p.insert("kind".into(), json!({"type": "string"}));
        p.insert(
            "metadata".into(),
            json!({"$ref": format!("{REF}{OBJECT_META}")}),
        );
    }
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]);
    Some(s)
}

fn schema_of(rt: &ResourceType) -> Option<Value> {
    custom_schema(rt).or_else(|| BUILTINS.schemas.get(&component(rt)).cloned())
}

/// Every component a set of schemas refers to, transitively.
fn closure(roots: &[Value]) -> BTreeSet<String> {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str)
                    && let Some(n) = r.strip_prefix(REF)
                {
                    out.push(n.to_string());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = Vec::new();
    roots.iter().for_each(|r| refs(r, &mut todo));
    while let Some(n) = todo.pop() {
        if seen.insert(n.clone())
            && let Some(s) = BUILTINS.schemas.get(&n)
        {
            refs(s, &mut todo);
        }
    }
    seen
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn query(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(rt: &ResourceType, action: &str, id: &str, schema_ref: &Value) -> Value {
    let mut params: Vec<Value> = Vec::new();
    match action {
        "post" | "put" | "patch" => {
            params.extend(["dryRun", "fieldManager", "fieldValidation"].map(query));
            if action == "patch" {
                params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean"}}));
            }
        }
        "list" | "deletecollection" => params.extend(
            [
                "labelSelector",
                "fieldSelector",
                "limit",
                "continue",
                "resourceVersion",
                "resourceVersionMatch",
                "timeoutSeconds",
                "watch",
                "allowWatchBookmarks",
                "sendInitialEvents",
            ]
            .map(query),
        ),
        _ => {}
    }
    let body_types: &[&str] = match action {
        "patch" => &[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ],
        "post" | "put" => &["application/json"],
        _ => &[],
    };
    let mut op = json!({
        "operationId": id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    });
    if !body_types.is_empty() {
        let schema = if action == "patch" {
            json!({"type": "object"})
        } else {
            schema_ref.clone()
        };
        let content: Map<String, Value> = body_types
            .iter()
            .map(|t| ((*t).to_string(), json!({"schema": schema})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// The document of one group-version, or None when nothing is served there.
pub fn gv_document(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types: Vec<&std::sync::Arc<ResourceType>> = reg
        .all()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let base = format!("/{}", gv_path(group, version));
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut roots = Vec::new();
    for rt in &types {
        let Some(schema) = schema_of(rt) else {
            continue;
        };
        let name = component(rt);
        let r = json!({"$ref": format!("{REF}{name}")});
        roots.push(schema.clone());
        schemas.insert(name, schema);
        let id = |verb: &str, suffix: &str| format!("{verb}{}{}", rt.kind, suffix);
        let list = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{base}/{}", rt.plural)
        };
        let item = format!("{list}/{{name}}");
        paths.insert(
            list.clone(),
            json!({
                "get": operation(rt, "list", &id("list", ""), &json!({"type": "object"})),
                "post": operation(rt, "post", &id("create", ""), &r),
                "delete": operation(rt, "deletecollection", &id("deleteCollection", ""), &json!({"type": "object"})),
            }),
        );
        paths.insert(
            item.clone(),
            json!({
                "get": operation(rt, "get", &id("read", ""), &r),
                "put": operation(rt, "put", &id("replace", ""), &r),
                "patch": operation(rt, "patch", &id("patch", ""), &r),
                "delete": operation(rt, "delete", &id("delete", ""), &json!({"type": "object"})),
            }),
        );
        if rt.status_subresource {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": operation(rt, "get", &id("read", "Status"), &r),
                    "put": operation(rt, "put", &id("replace", "Status"), &r),
                    "patch": operation(rt, "patch", &id("patch", "Status"), &r),
                }),
            );
        }
    }
    for n in closure(&roots) {
        if let Some(s) = BUILTINS.schemas.get(&n) {
            schemas.entry(n).or_insert_with(|| s.clone());
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-fake"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn hash_of(v: &Value) -> String {
    let mut h = std::hash::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: every group-version's document, addressed by its content's hash (kubectl
/// caches documents by URL, so a changed document must get a new one).
pub fn v3_root(reg: &Registry) -> Value {
    let mut gvs: BTreeSet<(String, String)> = BTreeSet::new();
    for t in reg.all() {
        gvs.insert((t.group.clone(), t.version.clone()));
    }
    let mut paths = Map::new();
    for (g, v) in gvs {
        if let Some(doc) = gv_document(reg, &g, &v) {
            let p = gv_path(&g, &v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash_of(&doc))}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v2`: the same schemas and paths in one Swagger 2.0 document.
pub fn v2(reg: &Registry) -> Value {
    let mut gvs: BTreeSet<(String, String)> = BTreeSet::new();
    for t in reg.all() {
        gvs.insert((t.group.clone(), t.version.clone()));
    }
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (g, v) in gvs {
        let Some(doc) = gv_document(reg, &g, &v) else {
            continue;
        };
        let text = doc.to_string().replace(REF, "#/definitions/");
        let doc: Value = serde_json::from_str(&text).expect("re-parses");
        if let Some(p) = doc["paths"].as_object() {
            for (k, ops) in p {
                let mut ops = ops.clone();
                for op in ops.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                    if let Some(o) = op.as_object_mut() {
                        o.remove("requestBody");
                        o.insert("responses".into(), json!({"200": {"description": "OK"}}));
                        for p in o
                            .get_mut("parameters")
                            .and_then(Value::as_array_mut)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(m) = p.as_object_mut() {
                                m.remove("schema");
                                m.insert("type".into(), json!("string"));
                            }
                        }
                    }
                }
                paths.insert(k.clone(), ops);
            }
        }
        if let Some(s) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (k, v) in s {
                definitions.insert(k.clone(), v.clone());
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-fake"},
        "paths": paths,
        "definitions": definitions,
    })
}

// ----- field validation -------------------------------------------------------------------

/// What `fieldValidation` asks for; the real server's default is Warn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<FieldValidation, String> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )),
        }
    }
}

fn resolve(mut s: &Value) -> &Value {
    // Components refer to each other by `$ref` (in `allOf` beside a description).
    for _ in 0..32 {
        match ref_name(s).and_then(|n| BUILTINS.schemas.get(&n)) {
            Some(next) => s = next,
            None => return s,
        }
    }
    s
}

fn walk(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(schema);
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && extra.is_none() {
                return;
            }
            for (k, sub) in m {
                // Strategic merge patch directives are not fields.
                if k.starts_with('$') {
                    continue;
                }
                match props.and_then(|p| p.get(k)).or(extra) {
                    Some(s) => walk(s, sub, &join(k), out),
                    None => out.push(join(k)),
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter().enumerate() {
                    walk(items, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The fields of an object (or of a patch's object) its type's schema does not declare,
/// as `spec.ports[0].nmae`.
pub fn unknown_fields(rt: &ResourceType, obj: &Value) -> Vec<String> {
    let Some(schema) = schema_of(rt) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&schema, obj, "", &mut out);
    out
}

/// The real server's message for a strict decoding failure.
pub fn strict_message(rt: &ResourceType, unknown: &[String]) -> String {
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        fields.join(", "),
        kind = rt.kind,
        version = rt.version,
    )
}

/// The real server's message when an applied configuration has undeclared fields.
pub fn apply_message(
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    unknown: &[String],
) -> String {
    let object = match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!(".{f}: field not declared in schema"))
        .collect();
    format!(
        "failed to create typed patch object ({}, Kind={}) {object}: {}",
        if rt.group.is_empty() {
            format!("/{}", rt.version)
        } else {
            rt.api_version()
        },
        rt.kind,
        fields.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(reg: &Registry, group: &str, plural: &str) -> std::sync::Arc<ResourceType> {
        reg.all()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
            .unwrap()
    }

    #[test]
    fn unknown_fields_are_found_where_the_schema_does_not_declare_them() {
        let reg = Registry::default();
        let svc = rt(&reg, "", "services");
        let ok = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"any": "label"}, "annotations": {"a": "b"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": "http"}],
                     "selector": {"app": "web"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
        });
        assert_eq!(unknown_fields(&svc, &ok), Vec::<String>::new());
        let bad = json!({
            "apiVersion": "v1", "kind": "Service", "colour": "red",
            "metadata": {"name": "web", "nmae": "x"},
            "spec": {"ports": [{"port": 80}, {"port": 81, "prot": 1}], "$setElementOrder/ports": []},
        });
        assert_eq!(
            unknown_fields(&svc, &bad),
            ["colour", "metadata.nmae", "spec.ports[1].prot"]
        );
        assert_eq!(
            strict_message(&svc, &unknown_fields(&svc, &bad)[..1]),
            "Service in version \"v1\" cannot be handled as a Service: strict decoding error: unknown field \"colour\""
        );
    }

    #[test]
    fn custom_resources_are_checked_against_their_crd_and_object_meta() {
        let mut reg = Registry::default();
        crate::registry::register_pool_crd(
            &mut reg,
            json!({"schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {
                    "mode": {"type": "string"},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}}),
        );
        let pool = reg.get("example.com", "v1", "pools").unwrap();
        let v = json!({"apiVersion": "example.com/v1", "kind": "Pool",
            "metadata": {"name": "a", "labelz": {}},
            "spec": {"mode": "x", "mood": "y", "free": {"anything": 1}}});
        assert_eq!(unknown_fields(&pool, &v), ["metadata.labelz", "spec.mood"]);
        let doc = gv_document(&reg, "example.com", "v1").unwrap();
        let s = &doc["components"]["schemas"]["com.example.v1.Pool"];
        assert_eq!(s["x-kubernetes-group-version-kind"][0]["kind"], "Pool");
        assert!(doc["components"]["schemas"][OBJECT_META].is_object());
        let patch = &doc["paths"]["/apis/example.com/v1/pools/{name}"]["patch"];
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
    }

    #[test]
    fn lists_the_server_merges_by_key_say_so_as_the_real_schemas_do() {
        let s = &BUILTINS.schemas;
        let containers = &s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let mounts = &s["io.k8s.api.core.v1.Container"]["properties"]["volumeMounts"];
        assert_eq!(mounts["x-kubernetes-patch-merge-key"], "mountPath");
        let ports = &s["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
        let finalizers = &s[OBJECT_META]["properties"]["finalizers"];
        assert_eq!(finalizers["x-kubernetes-patch-strategy"], "merge");
        let args = &s["io.k8s.api.core.v1.Container"]["properties"]["args"];
        assert!(args.get("x-kubernetes-patch-strategy").is_none(), "{args}");
    }

    #[test]
    fn the_v3_root_addresses_each_document_by_its_content() {
        let mut reg = Registry::default();
        let before = v3_root(&reg);
        let core = before["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(core.starts_with("/openapi/v3/api/v1?hash="), "{core}");
        assert!(before["paths"]["apis/coordination.k8s.io/v1"].is_object());
        crate::registry::register_pool_crd(&mut reg, json!({}));
        let after = v3_root(&reg);
        assert_eq!(after["paths"]["api/v1"], before["paths"]["api/v1"]);
        assert!(after["paths"]["apis/example.com/v1"].is_object());
        let v2 = v2(&reg);
        assert!(v2["definitions"]["io.k8s.api.core.v1.Service"].is_object());
        assert!(!v2.to_string().contains(REF));
    }
}
