//! What the real API server does to an object on its way in: metadata rules, the
//! defaulting and validation of the built-in types routelb reads, and for custom
//! resources the structural-schema pruning, defaulting, validation and CEL rules.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;

/// Cluster-wide allocations the API server makes: ClusterIPs and node ports.
#[derive(Debug)]
pub struct Allocators {
    next_v4: u32,
    next_v6: u32,
    node_ports: BTreeSet<u16>,
    /// Whether the fake cluster is dual-stack (IPv4 primary).
    pub dual_stack: bool,
}

impl Default for Allocators {
    fn default() -> Allocators {
        Allocators {
            next_v4: 10,
            next_v6: 10,
            node_ports: BTreeSet::new(),
            dual_stack: true,
        }
    }
}

impl Allocators {
    fn cluster_ip(&mut self, family: &str) -> String {
        if family == "IPv6" {
            self.next_v6 += 1;
            format!("fd00:10:96::{:x}", self.next_v6)
        } else {
            self.next_v4 += 1;
            let n = self.next_v4;
            format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
        }
    }

    fn node_port(&mut self) -> ApiResult<u16> {
        let port = (30000..=32767)
            .find(|p| !self.node_ports.contains(p))
            .ok_or_else(|| ApiError::internal("node port range 30000-32767 is exhausted"))?;
        self.node_ports.insert(port);
        Ok(port)
    }

    fn release_ports(&mut self, svc: &Value) {
        for p in ports_of(svc) {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                self.node_ports.remove(&(n as u16));
            }
        }
        if let Some(n) = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
        {
            self.node_ports.remove(&(n as u16));
        }
    }

    fn claim_ports(&mut self, svc: &Value) {
        for p in ports_of(svc) {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                self.node_ports.insert(n as u16);
            }
        }
        if let Some(n) = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
        {
            self.node_ports.insert(n as u16);
        }
    }
}

fn ports_of(svc: &Value) -> Vec<&Value> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Current time as the API server writes `metav1.Time`.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A random suffix for `generateName`, from the API server's alphabet.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Checks and fills the metadata of an object being created. Returns its name.
pub fn prepare_metadata(
    rt: &ResourceType,
    obj: &mut Value,
    namespace: Option<&str>,
) -> ApiResult<String> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    let meta = obj
        .as_object_mut()
        .expect("object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    let name = match meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) => format!("{prefix}{}", random_suffix()),
            None => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    "",
                    &["metadata.name: Required value: name or generateName is required".into()],
                ));
            }
        },
    };
    if !is_dns_subdomain(&name) {
        return Err(ApiError::invalid(
            &rt.kind,
            &name,
            &[format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            )],
        ));
    }
    meta["name"] = json!(name);
    match (rt.namespaced, namespace) {
        (true, Some(ns)) => {
            if let Some(given) = meta.get("namespace").and_then(Value::as_str)
                && !given.is_empty()
                && given != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta["namespace"] = json!(ns);
        }
        (true, None) => return Err(ApiError::bad_request("a namespace is required")),
        (false, _) => {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
        }
    }
    for field in ["labels", "annotations"] {
        if let Some(map) = meta.get(field)
            && !map.is_null()
            && !map
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string))
        {
            return Err(ApiError::bad_request(format!(
                "metadata.{field} must map strings to strings"
            )));
        }
    }
    let m = meta.as_object_mut().expect("object");
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(now()));
    m.insert("generation".into(), json!(1));
    m.remove("deletionTimestamp");
    m.remove("resourceVersion");
    m.remove("managedFields");
    Ok(name)
}

/// Applies the type's defaulting and validation. `old` is the stored object on update.
pub fn admit(
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    alloc: &mut Allocators,
) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(schema) = &rt.schema {
        return admit_custom(rt, schema, obj, old, &name);
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "services") => admit_service(obj, old, alloc, &name),
        ("", "namespaces") => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            if obj.pointer("/status/phase").is_none() {
                obj["status"]["phase"] = json!("Active");
            }
            Ok(())
        }
        ("", "secrets") => {
            if obj.get("type").is_none() {
                obj["type"] = json!("Opaque");
            }
            if let Some(Value::Object(string_data)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                use base64::Engine;
                for (k, v) in string_data {
                    let text = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
            Ok(())
        }
        ("discovery.k8s.io", "endpointslices") => {
            if !obj.get("addressType").is_some_and(Value::is_string) {
                return Err(ApiError::invalid(
                    "EndpointSlice",
                    &name,
                    &["addressType: Required value".into()],
                ));
            }
            if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if p.get("protocol").is_none() {
                        p["protocol"] = json!("TCP");
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn admit_service(
    obj: &mut Value,
    old: Option<&Value>,
    alloc: &mut Allocators,
    name: &str,
) -> ApiResult<()> {
    let invalid = |cause: String| ApiError::invalid("Service", name, &[cause]);
    let spec = obj
        .as_object_mut()
        .expect("object")
        .entry("spec")
        .or_insert_with(|| json!({}));
    if spec.get("type").is_none() {
        spec["type"] = json!("ClusterIP");
    }
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    if !matches!(
        ty.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(invalid(format!(
            "spec.type: Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        )));
    }
    let old_spec = old.and_then(|o| o.get("spec"));
    // Fields that only make sense for some types are dropped when the type changes.
    if old_spec.is_some() {
        let s = spec.as_object_mut().expect("object");
        if ty != "LoadBalancer" {
            s.remove("allocateLoadBalancerNodePorts");
            s.remove("loadBalancerClass");
        }
        if ty == "ClusterIP" || ty == "ExternalName" {
            s.remove("externalTrafficPolicy");
            s.remove("healthCheckNodePort");
            if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if let Some(p) = p.as_object_mut() {
                        p.remove("nodePort");
                    }
                }
            }
        }
    }
    if ty == "LoadBalancer"
        && old_spec.is_some_and(|o| {
            o["type"] == "LoadBalancer"
                && o.get("loadBalancerClass") != spec.get("loadBalancerClass")
        })
    {
        return Err(invalid(
            "spec.loadBalancerClass: Invalid value: may not change once set".into(),
        ));
    }
    if spec.get("loadBalancerClass").is_some_and(|c| !c.is_null()) && ty != "LoadBalancer" {
        return Err(invalid(
            "spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'"
                .into(),
        ));
    }
    if spec.get("sessionAffinity").is_none() {
        spec["sessionAffinity"] = json!("None");
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
    match ports {
        Some(ports) if !ports.is_empty() => {
            for p in ports.iter_mut() {
                if p.get("protocol").is_none() {
                    p["protocol"] = json!("TCP");
                }
                if !p
                    .get("port")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| (1..=65535).contains(&n))
                {
                    return Err(invalid(
                        "spec.ports[].port: Invalid value: must be between 1 and 65535".into(),
                    ));
                }
                if p.get("targetPort").is_none() {
                    p["targetPort"] = p["port"].clone();
                }
            }
        }
        _ if headless || ty == "ExternalName" => {}
        _ => return Err(invalid("spec.ports: Required value".into())),
    }
    if ty == "ExternalName" {
        return Ok(());
    }
    if spec.get("internalTrafficPolicy").is_none() {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    // ClusterIPs and families are allocated once and preserved on update.
    if let Some(old_spec) = old_spec {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec.get(field).is_none()
                && let Some(v) = old_spec.get(field)
            {
                spec[field] = v.clone();
            }
        }
    }
    let families_given: Vec<String> = spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if families_given.iter().any(|f| f != "IPv4" && f != "IPv6") {
        return Err(invalid(
            "spec.ipFamilies: Unsupported value: supported values: \"IPv4\", \"IPv6\"".into(),
        ));
    }
    let policy = match spec.get("ipFamilyPolicy").and_then(Value::as_str) {
        Some(p) => p.to_string(),
        None if families_given.len() > 1 => {
            return Err(invalid(
                "spec.ipFamilyPolicy: Invalid value: must be RequireDualStack or PreferDualStack when multiple ipFamilies are specified".into(),
            ));
        }
        None => "SingleStack".to_string(),
    };
    if !matches!(
        policy.as_str(),
        "SingleStack" | "PreferDualStack" | "RequireDualStack"
    ) {
        return Err(invalid(format!(
            "spec.ipFamilyPolicy: Unsupported value: {policy:?}"
        )));
    }
    if policy == "RequireDualStack" && !alloc.dual_stack {
        return Err(invalid("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into()));
    }
    let families: Vec<String> = if !families_given.is_empty() {
        let mut f = families_given.clone();
        if policy != "SingleStack" && f.len() == 1 && alloc.dual_stack {
            f.push(if f[0] == "IPv4" {
                "IPv6".into()
            } else {
                "IPv4".into()
            });
        }
        if policy == "SingleStack" {
            f.truncate(1);
        }
        f
    } else if policy != "SingleStack" && alloc.dual_stack {
        vec!["IPv4".into(), "IPv6".into()]
    } else {
        vec!["IPv4".into()]
    };
    spec["ipFamilyPolicy"] = json!(policy);
    spec["ipFamilies"] = json!(families);
    if headless {
        spec["clusterIPs"] = json!(["None"]);
    } else {
        let existing: Vec<String> = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .or_else(|| {
                spec.get("clusterIP")
                    .and_then(Value::as_str)
                    .map(|ip| vec![ip.to_string()])
            })
            .unwrap_or_default();
        let mut ips = existing;
        ips.truncate(families.len());
        while ips.len() < families.len() {
            let family = families[ips.len()].clone();
            ips.push(alloc.cluster_ip(&family));
        }
        spec["clusterIP"] = json!(ips[0]);
        spec["clusterIPs"] = json!(ips);
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        if spec.get("externalTrafficPolicy").is_none() {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if ty == "LoadBalancer" && spec.get("allocateLoadBalancerNodePorts").is_none() {
            spec["allocateLoadBalancerNodePorts"] = json!(true);
        }
        let wants_ports = ty == "NodePort" || spec["allocateLoadBalancerNodePorts"] == json!(true);
        if let Some(old) = old {
            alloc.release_ports(old);
        }
        let old_ports: Vec<Value> = old_spec
            .and_then(|s| s.get("ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut)
            && wants_ports
        {
            for p in ports.iter_mut() {
                if p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) == 0 {
                    let kept = old_ports
                        .iter()
                        .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                        .and_then(|o| o.get("nodePort"))
                        .cloned();
                    p["nodePort"] = match kept {
                        Some(n) => n,
                        None => json!(alloc.node_port()?),
                    };
                }
            }
        }
        if spec["externalTrafficPolicy"] == json!("Local")
            && spec.get("healthCheckNodePort").is_none()
        {
            let kept = old_spec.and_then(|s| s.get("healthCheckNodePort")).cloned();
            spec["healthCheckNodePort"] = match kept {
                Some(n) => n,
                None => json!(alloc.node_port()?),
            };
        }
        let snapshot = obj.clone();
        alloc.claim_ports(&snapshot);
    } else if spec.get("externalTrafficPolicy").is_some() {
        return Err(invalid(
            "spec.externalTrafficPolicy: Invalid value: may only be set for externally-accessible services".into(),
        ));
    }
    if obj.pointer("/status/loadBalancer").is_none() {
        obj["status"]["loadBalancer"] = json!({});
    }
    Ok(())
}

/// Releases what an object held (node ports) when it is deleted.
pub fn release(rt: &ResourceType, obj: &Value, alloc: &mut Allocators) {
    if rt.group.is_empty() && rt.plural == "services" {
        alloc.release_ports(obj);
    }
}

// ----- custom resources -----------------------------------------------------------------

fn admit_custom(
    rt: &ResourceType,
    schema: &crate::registry::CrdSchema,
    obj: &mut Value,
    old: Option<&Value>,
    name: &str,
) -> ApiResult<()> {
    let metadata = obj.get("metadata").cloned();
    prune(&schema.openapi, obj, true);
    *obj = kube_cel::apply_defaults(&schema.openapi, obj);
    if let Some(m) = metadata {
        obj["metadata"] = m;
    }
    let mut causes = Vec::new();
    check(&schema.openapi, obj, "", &mut causes, true);
    if causes.is_empty()
        && let Err(errors) = kube_cel::Validator::new().validate_compiled(&schema.cel, obj, old)
    {
        causes.extend(errors.iter().map(|e| {
            if e.field_path.is_empty() {
                format!("<nil>: Invalid value: {}", e.message)
            } else {
                format!("{}: Invalid value: {}", e.field_path, e.message)
            }
        }));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &format!("{}.{}", rt.kind, rt.group),
            name,
            &causes,
        ))
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

/// Drops fields the structural schema does not declare, and nulls where not nullable.
fn prune(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            if schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true)) {
                return;
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keep_unknown = preserves_unknown(schema);
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                match sub {
                    Some(sub) => {
                        let v = map.get_mut(&k).expect("key");
                        if v.is_null() && sub.get("nullable") != Some(&Value::Bool(true)) {
                            map.remove(&k);
                        } else {
                            prune(sub, v, false);
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        map.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for v in items {
                    prune(sub, v, false);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// OpenAPI validation of a structural schema: types, enums, bounds, lengths, patterns,
/// required fields. Appends causes in the API server's wording.
fn check(schema: &Value, value: &Value, path: &str, causes: &mut Vec<String>, root: bool) {
    let at = |p: &str| {
        if p.is_empty() {
            "<root>".to_string()
        } else {
            p.to_string()
        }
    };
    if value.is_null() {
        return;
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == ty || (ty == "number" && actual == "integer");
        if !ok && !(schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))) {
            causes.push(format!(
                "{}: Invalid value: {:?}: {} must be of type {}",
                at(path),
                actual,
                at(path),
                ty
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let supported: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        causes.push(format!(
            "{}: Unsupported value: {}: supported values: {}",
            at(path),
            value,
            supported.join(", ")
        ));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            causes.push(format!(
                "{}: Invalid value: {}: {} in body should be greater than or equal to {}",
                at(path),
                value,
                at(path),
                min
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            causes.push(format!(
                "{}: Invalid value: {}: {} in body should be less than or equal to {}",
                at(path),
                value,
                at(path),
                max
            ));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            causes.push(format!(
                "{}: Invalid value: {:?}: {} in body should be at least {} chars long",
                at(path),
                s,
                at(path),
                min
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            causes.push(format!(
                "{}: Too long: may not be more than {} bytes",
                at(path),
                max
            ));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(s) => causes.push(format!(
                    "{}: Invalid value: {:?}: {} in body should match '{}'",
                    at(path),
                    s,
                    at(path),
                    pattern
                )),
                _ => {}
            }
        }
    }
    match value {
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                causes.push(format!(
                    "{}: Invalid value: {}: {} in body should have at least {} items",
                    at(path),
                    n,
                    at(path),
                    min
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                causes.push(format!(
                    "{}: Too many: {}: must have at most {} items",
                    at(path),
                    n,
                    max
                ));
            }
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(sub, v, &format!("{path}[{i}]"), causes, false);
                }
            }
        }
        Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(k) = req.as_str()
                    && map.get(k).is_none_or(Value::is_null)
                {
                    causes.push(format!("{}: Required value", join(path, k)));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(sub) = props.and_then(|p| p.get(k)).or(additional) {
                    check(sub, v, &join(path, k), causes, false);
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The status a CRD gets once "established".
pub fn crd_status(crd: &Value) -> Value {
    let storage = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == json!(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or("v1")
        .to_string();
    let t = now();
    json!({
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
        ],
        "storedVersions": [storage],
    })
}

// ----- events.k8s.io/v1 <-> v1 Event ----------------------------------------------------

const EVENT_FIELDS: [(&str, &str); 11] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
];

/// Converts a stored `v1` Event to its `events.k8s.io/v1` shape.
pub fn event_to_new(core: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    out.insert("kind".into(), json!("Event"));
    for key in ["metadata", "eventTime", "series", "related"] {
        if let Some(v) = core.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    for (new, old) in EVENT_FIELDS {
        if let Some(v) = core.get(old) {
            out.insert(new.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// Converts an `events.k8s.io/v1` Event to the stored `v1` shape.
pub fn event_to_core(new: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    for key in ["metadata", "eventTime", "series", "related"] {
        if let Some(v) = new.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    for (new_name, old) in EVENT_FIELDS {
        if let Some(v) = new.get(new_name) {
            out.insert(old.into(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn services_get_what_a_real_api_server_fills_in() {
        let reg = Registry::default();
        let rt = reg.get("", "v1", "services").unwrap();
        let mut alloc = Allocators::default();
        let mut s = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
        admit(&rt, &mut s, None, &mut alloc).unwrap();
        let spec = &s["spec"];
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], json!("SingleStack"));
        assert_eq!(spec["externalTrafficPolicy"], json!("Cluster"));
        assert_eq!(spec["sessionAffinity"], json!("None"));
        assert_eq!(spec["ports"][0]["protocol"], json!("TCP"));
        assert_eq!(spec["ports"][0]["targetPort"], json!(80));
        assert!(spec["ports"][0]["nodePort"].as_u64().unwrap() >= 30000);
        assert!(spec["clusterIP"].as_str().unwrap().starts_with("10.96."));
        assert_eq!(s["status"]["loadBalancer"], json!({}));

        let mut dual = svc(
            json!({"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack", "externalTrafficPolicy": "Local", "ports": [{"port": 53, "protocol": "UDP"}]}),
        );
        admit(&rt, &mut dual, None, &mut alloc).unwrap();
        assert_eq!(dual["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(dual["spec"]["clusterIPs"].as_array().unwrap().len(), 2);
        assert!(dual["spec"]["healthCheckNodePort"].as_u64().is_some());

        // An update keeps allocated values and refuses a class change.
        let mut update =
            svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}], "loadBalancerClass": "x"}));
        let old = {
            let mut o = svc(
                json!({"type": "LoadBalancer", "ports": [{"port": 80}], "loadBalancerClass": "y"}),
            );
            admit(&rt, &mut o, None, &mut alloc).unwrap();
            o
        };
        let err = admit(&rt, &mut update, Some(&old), &mut alloc).unwrap_err();
        assert!(err.message.contains("may not change once set"), "{err}");
        let mut update =
            svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}], "loadBalancerClass": "y"}));
        admit(&rt, &mut update, Some(&old), &mut alloc).unwrap();
        assert_eq!(update["spec"]["clusterIP"], old["spec"]["clusterIP"]);
        assert_eq!(
            update["spec"]["ports"][0]["nodePort"],
            old["spec"]["ports"][0]["nodePort"]
        );
        // Changing to ClusterIP drops the type-dependent fields.
        let mut to_cluster = svc(
            json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30001}], "externalTrafficPolicy": "Cluster"}),
        );
        admit(&rt, &mut to_cluster, Some(&old), &mut alloc).unwrap();
        assert!(to_cluster["spec"].get("externalTrafficPolicy").is_none());
        assert!(to_cluster["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn custom_resources_are_pruned_defaulted_and_validated() {
        let mut reg = Registry::default();
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster", "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "mode": {"type": "string", "default": "a", "enum": ["a", "b"]},
                            "name": {"type": "string", "pattern": "^[a-z]+$"}
                        }, "x-kubernetes-validations": [{"rule": "self.size < 5 || self.mode == 'b'", "message": "big widgets need mode b"}]}
                    }}}}]}
        });
        reg.register_crd(&crd).unwrap();
        let rt = reg.get("example.com", "v1", "widgets").unwrap();
        let mut alloc = Allocators::default();
        let mut w =
            json!({"metadata": {"name": "w"}, "spec": {"size": 3, "junk": 1}, "extra": true});
        admit(&rt, &mut w, None, &mut alloc).unwrap();
        assert_eq!(w["spec"], json!({"size": 3, "mode": "a"}));
        assert!(w.get("extra").is_none());
        for (spec, wanted) in [
            (json!({}), "spec.size: Required value"),
            (json!({"size": 11}), "should be less than or equal to 10"),
            (json!({"size": "x"}), "must be of type integer"),
            (json!({"size": 2, "mode": "c"}), "Unsupported value"),
            (json!({"size": 2, "name": "A1"}), "should match"),
            (json!({"size": 7}), "big widgets need mode b"),
        ] {
            let mut w = json!({"metadata": {"name": "w"}, "spec": spec});
            let err = admit(&rt, &mut w, None, &mut alloc).unwrap_err();
            assert_eq!(err.code, 422);
            assert!(err.message.contains(wanted), "{wanted}: {err}");
        }
    }

    #[test]
    fn events_convert_between_both_apis() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"name": "s"}, "message": "hi", "reason": "R", "count": 2});
        let new = event_to_new(&core);
        assert_eq!(new["regarding"]["name"], json!("s"));
        assert_eq!(new["note"], json!("hi"));
        assert_eq!(event_to_core(&new), core);
    }
}
