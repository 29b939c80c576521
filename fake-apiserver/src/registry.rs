//! The resource types the server knows: the built-ins routelb uses, and those defined by
//! CustomResourceDefinitions created in it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

/// How a resource's objects are stored: built-ins by name, custom resources by schema.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    /// Discovery categories (`kubectl get all` lists the `all` category).
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Field-selector paths accepted besides `metadata.name` and `metadata.namespace`.
    pub fields: Vec<String>,
    /// Storage shared between API versions (`events` serves `v1` and `events.k8s.io/v1`).
    pub storage: String,
    /// Present for custom resources: the schema that validates, prunes and defaults them.
    pub schema: Option<Arc<CrdSchema>>,
    /// A custom resource version's `additionalPrinterColumns` (server-side Tables).
    pub printer_columns: Vec<Value>,
}

/// A custom resource version's schema, compiled once.
#[derive(Debug)]
pub struct CrdSchema {
    pub openapi: Value,
    pub cel: kube_cel::CompiledSchema,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        status: bool,
        fields: &[&str],
    ) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            status_subresource: status,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            storage: format!("{group}/{plural}"),
            schema: None,
            printer_columns: Vec::new(),
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `addresspools.routelb.io`, for error details.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The aggregated discovery entry (`apidiscovery.k8s.io/v2` APIResourceDiscovery).
    pub fn aggregated(&self) -> Value {
        let kind = json!({"group": self.group, "version": self.version, "kind": self.kind});
        let mut r = json!({
            "resource": self.plural,
            "responseKind": kind,
            "scope": if self.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": self.singular,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !self.short_names.is_empty() {
            r["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            r["categories"] = json!(self.categories);
        }
        if self.status_subresource {
            r["subresources"] = json!([{
                "subresource": "status",
                "responseKind": kind,
                "verbs": ["get", "patch", "update"],
            }]);
        }
        r
    }

    /// The discovery entry of this resource.
    pub fn discovery(&self) -> Vec<Value> {
        let verbs = json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ]);
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// All known resource types, by (group, version, plural).
#[derive(Clone, Debug)]
pub struct Registry {
    types: BTreeMap<(String, String, String), Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Registry {
        let builtins = [
            ResourceType::builtin(
                "",
                "v1",
                "Service",
                "services",
                true,
                true,
                &["spec.clusterIP", "spec.type"],
            ),
            ResourceType::builtin("", "v1", "Endpoints", "endpoints", true, false, &[]),
            ResourceType::builtin(
                "",
                "v1",
                "Node",
                "nodes",
                false,
                true,
                &["spec.unschedulable"],
            ),
            ResourceType::builtin(
                "",
                "v1",
                "Namespace",
                "namespaces",
                false,
                true,
                &["status.phase"],
            ),
            ResourceType::builtin("", "v1", "Secret", "secrets", true, false, &["type"]),
            ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true, false, &[]),
            ResourceType::builtin(
                "",
                "v1",
                "Pod",
                "pods",
                true,
                true,
                &["spec.nodeName", "status.phase"],
            ),
            ResourceType::builtin(
                "",
                "v1",
                "Event",
                "events",
                true,
                false,
                &[
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                ],
            ),
            {
                let mut t = ResourceType::builtin(
                    "events.k8s.io",
                    "v1",
                    "Event",
                    "events",
                    true,
                    false,
                    &[
                        "regarding.kind",
                        "regarding.namespace",
                        "regarding.name",
                        "regarding.uid",
                        "reason",
                        "reportingController",
                        "type",
                    ],
                );
                t.storage = "/events".into();
                t
            },
            ResourceType::builtin(
                "discovery.k8s.io",
                "v1",
                "EndpointSlice",
                "endpointslices",
                true,
                false,
                &["addressType"],
            ),
            ResourceType::builtin(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                false,
                &[],
            ),
            ResourceType::builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
                &[],
            ),
            // What deploy/ installs, stored as sent (nothing runs them: no controllers).
            ResourceType::builtin(
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                false,
                &[],
            ),
            ResourceType::builtin("apps", "v1", "Deployment", "deployments", true, true, &[]),
            ResourceType::builtin("apps", "v1", "DaemonSet", "daemonsets", true, true, &[]),
            ResourceType::builtin(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
                true,
                &[],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "Role",
                "roles",
                true,
                false,
                &[],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
                false,
                &[],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
                false,
                &[],
            ),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
                false,
                &[],
            ),
        ];
        let mut types = BTreeMap::new();
        for mut t in builtins {
            // As the real server lists them.
            let short: &[&str] = match t.plural.as_str() {
                "services" => &["svc"],
                "endpoints" => &["ep"],
                "nodes" => &["no"],
                "namespaces" => &["ns"],
                "configmaps" => &["cm"],
                "pods" => &["po"],
                "events" => &["ev"],
                "customresourcedefinitions" => &["crd", "crds"],
                "serviceaccounts" => &["sa"],
                "deployments" => &["deploy"],
                "daemonsets" => &["ds"],
                "poddisruptionbudgets" => &["pdb"],
                _ => &[],
            };
            t.short_names = short.iter().map(|s| s.to_string()).collect();
            let categories: &[&str] = match t.plural.as_str() {
                "services" | "pods" | "deployments" | "daemonsets" => &["all"],
                "customresourcedefinitions" => &["api-extensions"],
                _ => &[],
            };
            t.categories = categories.iter().map(|s| s.to_string()).collect();
            types.insert(
                (t.group.clone(), t.version.clone(), t.plural.clone()),
                Arc::new(t),
            );
        }
        Registry { types }
    }
}

impl Registry {
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Every type, for discovery.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.values()
    }

    /// Types of one storage (one per served API version).
    pub fn of_storage<'a>(
        &'a self,
        storage: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceType>> {
        self.types.values().filter(move |t| t.storage == storage)
    }

    /// Registers the served versions of a CRD (replacing earlier ones); returns an error
    /// message for an unusable CRD.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), String> {
        let spec = crd.get("spec").ok_or("spec is required")?;
        let group = spec["group"].as_str().ok_or("spec.group is required")?;
        let names = &spec["names"];
        let plural = names["plural"]
            .as_str()
            .ok_or("spec.names.plural is required")?;
        let kind = names["kind"]
            .as_str()
            .ok_or("spec.names.kind is required")?;
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name != format!("{plural}.{group}") {
            return Err(format!(
                "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
            ));
        }
        let namespaced = match spec["scope"].as_str() {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            _ => return Err("spec.scope: Unsupported value: must be Namespaced or Cluster".into()),
        };
        self.unregister_crd(group, plural);
        for v in spec["versions"]
            .as_array()
            .ok_or("spec.versions is required")?
        {
            if v["served"].as_bool() != Some(true) {
                continue;
            }
            let version = v["name"]
                .as_str()
                .ok_or("spec.versions[].name is required")?;
            let schema = v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or_else(
                    || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                );
            let cel = kube_cel::compile_schema(&schema);
            if cel.has_errors() {
                let errors: Vec<String> = cel
                    .compilation_errors()
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                return Err(format!("x-kubernetes-validations: {}", errors.join("; ")));
            }
            let fields = v["selectableFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["jsonPath"].as_str())
                .map(|p| p.trim_start_matches('.').to_string())
                .collect();
            let t = ResourceType {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                singular: names["singular"]
                    .as_str()
                    .map_or_else(|| kind.to_ascii_lowercase(), str::to_string),
                short_names: names["shortNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect(),
                categories: names["categories"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect(),
                namespaced,
                status_subresource: v.pointer("/subresources/status").is_some(),
                fields,
                storage: format!("{group}/{plural}"),
                schema: Some(Arc::new(CrdSchema {
                    openapi: schema,
                    cel,
                })),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            self.types
                .insert((group.into(), version.into(), plural.into()), Arc::new(t));
        }
        Ok(())
    }

    /// Removes a CRD's types.
    pub fn unregister_crd(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|(g, _, p), t| !(g == group && p == plural && t.schema.is_some()));
    }
}

/// For tests: a cluster-scoped CRD `pools.example.com` (kind Pool) whose one version
/// `v1` has the given fields besides its name (`schema`, `additionalPrinterColumns`).
#[cfg(test)]
pub fn register_pool_crd(reg: &mut Registry, version: Value) {
    let mut v = json!({"name": "v1", "served": true, "storage": true});
    if let (Some(m), Value::Object(extra)) = (v.as_object_mut(), version) {
        m.extend(extra);
    }
    reg.register_crd(&json!({
        "metadata": {"name": "pools.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"plural": "pools", "kind": "Pool"}, "versions": [v]}
    }))
    .expect("a valid CRD");
}
