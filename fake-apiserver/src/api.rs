//! The API operations: get, list, create, update, patch, delete, with the semantics of the
//! real API server (preconditions, status subresource, finalizers, generation,
//! namespaces, CRD registration and cascades).

use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::patch;
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Inner, ObjKey, Stored};

/// Which object(s) a request addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub rt: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    fn key(&self) -> ObjKey {
        (
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn status_only(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }
}

/// Patch content types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchKind::Apply)
            }
            _ => None,
        }
    }
}

/// List parameters.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// The state shared by every request.
#[derive(Debug)]
pub struct Api {
    inner: Mutex<Inner>,
}

fn is_event_api(rt: &ResourceType) -> bool {
    rt.group == "events.k8s.io"
}

/// The object as the requested API version shows it.
pub fn present(rt: &ResourceType, v: &Value) -> Value {
    if is_event_api(rt) {
        return objects::event_to_new(v);
    }
    let mut v = v.clone();
    v["apiVersion"] = json!(rt.api_version());
    v
}

/// The serialised object as the requested API version shows it, without re-serialising
/// when the stored form already is that.
pub fn present_json(rt: &ResourceType, s: &Stored) -> Bytes {
    if !is_event_api(rt) && s.value["apiVersion"].as_str() == Some(&rt.api_version()) {
        return s.json.clone();
    }
    Bytes::from(serde_json::to_vec(&present(rt, &s.value)).expect("serialises"))
}

fn ingest(rt: &ResourceType, v: Value) -> Value {
    if is_event_api(rt) {
        objects::event_to_core(&v)
    } else {
        v
    }
}

/// What the `status` subresource owns; everything else is the "spec" part whose change
/// bumps `metadata.generation`.
fn spec_part(rt: &ResourceType, v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if rt.status_subresource {
            m.remove("status");
        }
    }
    v
}

fn continue_token(rv: u64, after: &ObjKey) -> String {
    let raw = json!({"rv": rv, "ns": after.0, "name": after.1}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_continue(token: &str) -> ApiResult<(u64, ObjKey)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let ns = v["ns"].as_str().ok_or_else(bad)?.to_string();
    let name = v["name"].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

/// Parses a resourceVersion parameter.
pub fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

impl Api {
    pub fn new(history_limit: usize, dual_stack: bool) -> Api {
        let mut inner = Inner::new(history_limit);
        inner.alloc.dual_stack = dual_stack;
        let ns = inner.registry.get("", "v1", "namespaces").expect("builtin");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut obj = json!({"metadata": {"name": name}});
            objects::prepare_metadata(&ns, &mut obj, None).expect("valid");
            objects::admit(&ns, &mut obj, None, &mut inner.alloc).expect("valid");
            inner.put(&ns.storage, (String::new(), name.to_string()), obj);
        }
        Api {
            inner: Mutex::new(inner),
        }
    }

    /// The lock over all state.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, t: &Target) -> ApiResult<Value> {
        let inner = self.lock();
        inner
            .get(&t.rt.storage, &t.key())
            .map(|s| present(&t.rt, &s.value))
            .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), t.name()))
    }

    /// A list response body.
    pub fn list(&self, t: &Target, q: &ListQuery) -> ApiResult<Bytes> {
        let mut inner = self.lock();
        let current = inner.rv;
        let (at, after) = match &q.continue_token {
            Some(token) => {
                let (rv, after) = parse_continue(token)?;
                (Some(rv), Some(after))
            }
            None => match (
                q.resource_version.as_deref(),
                q.resource_version_match.as_deref(),
            ) {
                (None | Some("") | Some("0"), _) => (None, None),
                (Some(rv), Some("Exact")) => (Some(parse_rv(rv)?), None),
                (Some(rv), _) => {
                    let rv = parse_rv(rv)?;
                    if rv > current {
                        return Err(ApiError::timeout(format!(
                            "Too large resource version: {rv}, current: {current}"
                        )));
                    }
                    (None, None)
                }
            },
        };
        let rt = t.rt.clone();
        let filter = |v: &Value| {
            let shown;
            let v = if is_event_api(&rt) {
                shown = present(&rt, v);
                &shown
            } else {
                v
            };
            q.labels.matches(v) && q.fields.matches(v)
        };
        let (items, next) = inner
            .list(&t.rt.storage, t.namespace.as_deref(), at, after.as_ref(), q.limit, &filter)
            .map_err(|c| {
                if q.continue_token.is_some() {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                } else {
                    ApiError::expired(format!("too old resource version: {} ({})", c.requested, c.oldest))
                }
            })?;
        let list_rv = at.unwrap_or(current);
        drop(inner);
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if let Some(next) = &next {
            meta["continue"] = json!(continue_token(list_rv, next));
        }
        let mut out =
            BytesMut::with_capacity(64 + items.iter().map(|i| i.json.len() + 1).sum::<usize>());
        out.put_slice(
            format!(
                "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
                t.rt.kind,
                t.rt.api_version(),
                meta
            )
            .as_bytes(),
        );
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(&present_json(&t.rt, item));
        }
        out.put_slice(b"]}");
        Ok(out.freeze())
    }

    pub fn create(&self, t: &Target, body: Value, dry_run: bool) -> ApiResult<Value> {
        let mut body = ingest(&t.rt, body);
        let rt = t.rt.clone();
        let mut inner = self.lock();
        let name = objects::prepare_metadata(&rt, &mut body, t.namespace.as_deref())?;
        if let Some(ns) = t.namespace.as_deref().filter(|_| rt.namespaced) {
            match inner.get("/namespaces", &(String::new(), ns.to_string())) {
                None => return Err(ApiError::not_found("namespaces", ns)),
                Some(n) if n.value.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::forbidden(format!(
                        "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified()
                    )));
                }
                Some(_) => {}
            }
        }
        let key = (t.namespace.clone().unwrap_or_default(), name.clone());
        if inner.get(&rt.storage, &key).is_some() {
            return Err(ApiError::already_exists(&rt.qualified(), &name));
        }
        // Status is the status subresource's to write, except where clients create
        // objects with their status (kubelets registering Nodes).
        if rt.status_subresource
            && !(rt.group.is_empty() && rt.plural == "nodes")
            && let Some(m) = body.as_object_mut()
        {
            m.remove("status");
        }
        objects::admit(&rt, &mut body, None, &mut inner.alloc)?;
        if is_crd(&rt) {
            inner.registry.register_crd(&body).map_err(|e| {
                ApiError::invalid("CustomResourceDefinition.apiextensions.k8s.io", &name, &[e])
            })?;
            body["status"] = objects::crd_status(&body);
        }
        if dry_run {
            return Ok(present(&rt, &body));
        }
        let stored = inner.put(&rt.storage, key, body);
        Ok(present(&rt, &stored.value))
    }

    pub fn update(&self, t: &Target, body: Value, dry_run: bool) -> ApiResult<Value> {
        let body = ingest(&t.rt, body);
        let mut inner = self.lock();
        let old = inner
            .get(&t.rt.storage, &t.key())
            .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), t.name()))?;
        if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str)
            && n != t.name()
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        self.write(&mut inner, t, body, &old, dry_run)
    }

    /// The update path shared by PUT and PATCH.
    fn write(
        &self,
        inner: &mut Inner,
        t: &Target,
        mut new: Value,
        old: &Stored,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let rt = &t.rt;
        if !new.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(rv) = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !rv.is_empty()
            && rv != old.rv.to_string()
        {
            return Err(ApiError::conflict(&rt.qualified(), t.name()));
        }
        if t.status_only() {
            let status = new.get("status").cloned();
            new = old.value.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        } else {
            if !new.get("metadata").is_some_and(Value::is_object) {
                new["metadata"] = json!({});
            }
            for field in [
                "uid",
                "creationTimestamp",
                "name",
                "namespace",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old.value["metadata"].get(field) {
                    Some(v) => new["metadata"][field] = v.clone(),
                    None => {
                        new["metadata"]
                            .as_object_mut()
                            .expect("object")
                            .remove(field);
                    }
                }
            }
            if rt.status_subresource {
                match old.value.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().expect("object").remove("status");
                    }
                }
            }
            new["apiVersion"] = old.value["apiVersion"].clone();
            new["kind"] = old.value["kind"].clone();
        }
        if !t.status_only() || rt.schema.is_some() {
            objects::admit(rt, &mut new, Some(&old.value), &mut inner.alloc)?;
        }
        if is_crd(rt) && !t.status_only() {
            inner.registry.register_crd(&new).map_err(|e| {
                ApiError::invalid(
                    "CustomResourceDefinition.apiextensions.k8s.io",
                    t.name(),
                    &[e],
                )
            })?;
            new["status"] = objects::crd_status(&new);
        }
        if spec_part(rt, &new) != spec_part(rt, &old.value) {
            let generation = old
                .value
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        if dry_run {
            return Ok(present(rt, &new));
        }
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
        if finalized {
            // The last finalizer is gone: the pending deletion completes.
            inner.put(&rt.storage, t.key(), new);
            return Self::remove(inner, t);
        }
        // A write that changes nothing is not stored: no new resourceVersion, no event.
        let mut unchanged = new.clone();
        unchanged["metadata"]["resourceVersion"] = old.value["metadata"]["resourceVersion"].clone();
        if unchanged == old.value {
            return Ok(present(rt, &old.value));
        }
        let stored = inner.put(&rt.storage, t.key(), new);
        Ok(present(rt, &stored.value))
    }

    /// Applies a patch. Returns the object and whether it was created (apply only).
    pub fn patch(
        &self,
        t: &Target,
        kind: PatchKind,
        body: &[u8],
        field_manager: Option<&str>,
        dry_run: bool,
    ) -> ApiResult<(Value, bool)> {
        let rt = t.rt.clone();
        if kind == PatchKind::Strategic && rt.schema.is_some() {
            return Err(ApiError::unsupported_media_type(
                "strategic merge patch is not supported for custom resources; use a merge or JSON patch",
            ));
        }
        if kind == PatchKind::Apply && field_manager.is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let parsed: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
        let mut inner = self.lock();
        let Some(old) = inner.get(&rt.storage, &t.key()) else {
            if kind == PatchKind::Apply && !t.status_only() {
                drop(inner);
                let mut obj = parsed;
                obj["metadata"]["name"] = json!(t.name());
                return self.create(t, obj, dry_run).map(|o| (o, true));
            }
            return Err(ApiError::not_found(&rt.qualified(), t.name()));
        };
        let mut merged = present(&rt, &old.value);
        match kind {
            PatchKind::Merge => json_patch::merge(&mut merged, &parsed),
            PatchKind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(parsed).map_err(|e| {
                    ApiError::bad_request(format!("the JSON patch is malformed: {e}"))
                })?;
                json_patch::patch(&mut merged, &ops).map_err(|e| {
                    ApiError::invalid(
                        &rt.kind,
                        t.name(),
                        &[format!("the JSON patch could not be applied: {e}")],
                    )
                })?;
            }
            PatchKind::Strategic => patch::merge(&mut merged, &parsed, &patch::builtin_strategy),
            PatchKind::Apply => match &rt.schema {
                Some(schema) => patch::merge(&mut merged, &parsed, &|p| {
                    patch::schema_strategy(&schema.openapi, p)
                }),
                None => patch::merge(&mut merged, &parsed, &patch::builtin_strategy),
            },
        }
        let merged = ingest(&rt, merged);
        self.write(&mut inner, t, merged, &old, dry_run)
            .map(|o| (o, false))
    }

    pub fn delete(&self, t: &Target, options: Option<&Value>, dry_run: bool) -> ApiResult<Value> {
        let rt = t.rt.clone();
        let mut inner = self.lock();
        let old = inner
            .get(&rt.storage, &t.key())
            .ok_or_else(|| ApiError::not_found(&rt.qualified(), t.name()))?;
        if let Some(pre) = options.and_then(|o| o.get("preconditions")) {
            let uid_ok = pre.get("uid").and_then(Value::as_str).is_none_or(|u| {
                Some(u) == old.value.pointer("/metadata/uid").and_then(Value::as_str)
            });
            let rv_ok = pre
                .get("resourceVersion")
                .and_then(Value::as_str)
                .is_none_or(|rv| rv == old.rv.to_string());
            if !uid_ok || !rv_ok {
                return Err(ApiError::conflict(&rt.qualified(), t.name()));
            }
        }
        if dry_run {
            return Ok(present(&rt, &old.value));
        }
        let has_finalizers = old
            .value
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old.value.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(present(&rt, &old.value));
            }
            let mut marked = old.value.clone();
            marked["metadata"]["deletionTimestamp"] = json!(objects::now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let stored = inner.put(&rt.storage, t.key(), marked);
            return Ok(present(&rt, &stored.value));
        }
        Self::remove(&mut inner, t)
    }

    /// Removes an object and what it owns: a namespace's contents, a CRD's objects.
    fn remove(inner: &mut Inner, t: &Target) -> ApiResult<Value> {
        let rt = &t.rt;
        if rt.group.is_empty() && rt.plural == "namespaces" {
            let namespaced: Vec<String> = inner
                .registry
                .all()
                .filter(|r| r.namespaced)
                .map(|r| r.storage.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            for storage in namespaced {
                for key in inner.keys(&storage).into_iter().filter(|k| k.0 == t.name()) {
                    if let Some(gone) = inner.remove(&storage, &key)
                        && let Some(r) = inner.registry.of_storage(&storage).next().cloned()
                    {
                        objects::release(&r, &gone.value, &mut inner.alloc);
                    }
                }
            }
        }
        let gone = inner
            .remove(&rt.storage, &t.key())
            .ok_or_else(|| ApiError::not_found(&rt.qualified(), t.name()))?;
        objects::release(rt, &gone.value, &mut inner.alloc);
        if is_crd(rt) {
            let group = gone
                .value
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let plural = gone
                .value
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let storage = format!("{group}/{plural}");
            for key in inner.keys(&storage) {
                inner.remove(&storage, &key);
            }
            inner.registry.unregister_crd(&group, &plural);
        }
        Ok(present(rt, &gone.value))
    }

    /// Deletes every object of a collection matching the selectors; returns a list.
    pub fn delete_collection(&self, t: &Target, q: &ListQuery) -> ApiResult<Value> {
        let keys: Vec<ObjKey> = {
            let mut inner = self.lock();
            let filter = |v: &Value| q.labels.matches(v) && q.fields.matches(v);
            let (items, _) = inner
                .list(
                    &t.rt.storage,
                    t.namespace.as_deref(),
                    None,
                    None,
                    None,
                    &filter,
                )
                .map_err(|_| ApiError::internal("list failed"))?;
            items
                .iter()
                .map(|s| {
                    (
                        s.value
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        s.value
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        };
        let mut deleted = Vec::new();
        for (ns, name) in keys {
            let target = Target {
                namespace: (!ns.is_empty()).then_some(ns),
                name: Some(name),
                ..t.clone()
            };
            if let Ok(v) = self.delete(&target, None, false) {
                deleted.push(v);
            }
        }
        Ok(
            json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": {}, "items": deleted}),
        )
    }
}

fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions"
}
