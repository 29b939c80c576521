//! HTTP: routing of Kubernetes API paths, query parameters, response bodies, watch
//! streams, discovery and the fault-injection admin endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Shared;
use crate::api::{ListQuery, PatchKind, Target, parse_rv, present_json};
use crate::error::{ApiError, ApiResult};
use crate::openapi::{self, FieldValidation};
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Change, ChangeKind, Stored};
use crate::table::{self, Include};
use jiff::Timestamp;

pub type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("valid response")
}

fn value_response(status: StatusCode, v: &Value) -> Response<Body> {
    json_response(status, serde_json::to_vec(v).expect("serialises"))
}

/// An object, in protobuf when the client prefers it and its kind has a protobuf form.
fn object_response(status: StatusCode, v: &Value, protobuf: bool) -> Response<Body> {
    if protobuf && let Some(bytes) = crate::protobuf::encode(v) {
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/vnd.kubernetes.protobuf")
            .body(full(bytes))
            .expect("valid response");
    }
    value_response(status, v)
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = value_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    );
    if e.code == 429 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    r
}

/// Handles one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(admin) = path.strip_prefix("/fake/") {
        return Ok(admin_request(
            &shared,
            req.method(),
            admin,
            req.uri().query(),
        ));
    }
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = shared.faults.take_failure() {
        let e = if code == 429 {
            ApiError::too_many_requests("injected: too many requests, please try again later")
        } else {
            ApiError::internal("injected: internal error")
        };
        return Ok(error_response(&e));
    }
    let response = match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    Ok(response)
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let path = req.uri().path().trim_matches('/').to_string();
    let segs: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let q = query_map(req.uri().query());
    match segs.as_slice() {
        ["version"] => {
            return Ok(value_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
            ));
        }
        ["healthz"] | ["readyz"] | ["livez"] => return Ok(json_response(StatusCode::OK, "ok")),
        ["api"] | ["apis"] if let Some(version) = aggregated_wanted(&req) => {
            let doc = aggregated_list(shared, segs == ["api"], version);
            let mut r = value_response(StatusCode::OK, &doc);
            let ct = format!(
                "application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
            );
            if let Ok(v) = header::HeaderValue::from_str(&ct) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            return Ok(r);
        }
        ["api"] => {
            return Ok(value_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ));
        }
        ["apis"] => return Ok(value_response(StatusCode::OK, &group_list(shared))),
        ["openapi", "v3"] => {
            let root = openapi::v3_root(&shared.api.lock().registry);
            return Ok(value_response(StatusCode::OK, &root));
        }
        ["openapi", "v3", "api", v] | ["openapi", "v3", "apis", "", v] => {
            return openapi::gv_document(&shared.api.lock().registry, "", v)
                .map(|d| value_response(StatusCode::OK, &d))
                .ok_or_else(|| ApiError::not_found_path(req.uri().path()));
        }
        ["openapi", "v3", "apis", g, v] => {
            return openapi::gv_document(&shared.api.lock().registry, g, v)
                .map(|d| value_response(StatusCode::OK, &d))
                .ok_or_else(|| ApiError::not_found_path(req.uri().path()));
        }
        ["openapi", "v2"] => {
            // client-go asks for the protobuf (gnostic) form only, which is not served:
            // 406 makes it go on without, as with a server that has none.
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json");
            if !(accept.contains("json") || accept.contains("*/*")) {
                return Err(ApiError::not_acceptable(
                    "only application/json is served for /openapi/v2",
                ));
            }
            let doc = openapi::v2(&shared.api.lock().registry);
            return Ok(value_response(StatusCode::OK, &doc));
        }
        ["api", "v1"] => {
            return Ok(value_response(
                StatusCode::OK,
                &resource_list(shared, "", "v1")?,
            ));
        }
        ["apis", g, v] => {
            return Ok(value_response(
                StatusCode::OK,
                &resource_list(shared, g, v)?,
            ));
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Err(ApiError::not_found_path(req.uri().path())),
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, "status" | "finalize"] => (None, "namespaces", Some(*ns), Some(rest[2])),
        ["namespaces", ns, plural, tail @ ..] => (
            Some(*ns),
            *plural,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => unreachable!("rest is not empty"),
    };
    let rt = shared
        .api
        .lock()
        .registry
        .get(group, version, plural)
        .ok_or_else(|| ApiError::not_found_path(req.uri().path()))?;
    if namespace.is_some() && !rt.namespaced {
        return Err(ApiError::not_found_path(req.uri().path()));
    }
    if let Some(s) = sub
        && !(s == "status" && rt.status_subresource)
        && !(s == "finalize" && rt.plural == "namespaces")
    {
        return Err(ApiError::not_found_path(req.uri().path()));
    }
    let target = Target {
        rt: rt.clone(),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: sub.map(|s| {
            if s == "finalize" {
                "status".to_string()
            } else {
                s.to_string()
            }
        }),
    };
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let method = req.method().clone();
    {
        let verb = if method == Method::GET && flag(&q, "watch") {
            "WATCH"
        } else {
            method.as_str()
        };
        let key = match &target.subresource {
            Some(s) => format!("{verb} {}/{s}", rt.plural),
            None => format!("{verb} {}", rt.plural),
        };
        let mut counts = shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(key).or_default() += 1;
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let pb = crate::protobuf::preferred(&accept);
    let as_table =
        table::wanted(&accept).then(|| Include::parse(q.get("includeObject").map(String::as_str)));
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes();
    let parse = |b: &Bytes| -> ApiResult<Value> {
        if crate::protobuf::is_protobuf(&content_type) {
            return crate::protobuf::decode(b).map_err(ApiError::unsupported_media_type);
        }
        serde_json::from_slice(b)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
    };
    let validation = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))
        .map_err(ApiError::bad_request)?;
    let mut warnings: Vec<String> = Vec::new();
    let mut check_fields = |v: &Value, apply: bool| -> ApiResult<()> {
        if validation == FieldValidation::Ignore {
            return Ok(());
        }
        let unknown = openapi::unknown_fields(&rt, v);
        if unknown.is_empty() {
            return Ok(());
        }
        if validation == FieldValidation::Strict {
            let msg = if apply {
                openapi::apply_message(
                    &rt,
                    target.namespace.as_deref(),
                    target.name.as_deref().unwrap_or_default(),
                    &unknown,
                )
            } else {
                openapi::strict_message(&rt, &unknown)
            };
            return Err(ApiError::bad_request(msg));
        }
        warnings.extend(unknown.iter().map(|f| format!("unknown field {f:?}")));
        Ok(())
    };
    let api = &shared.api;
    let response = match (method, target.name.is_some()) {
        (Method::GET, false) if flag(&q, "watch") => {
            let delay = shared.faults.watch_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            watch(shared, &target, &q, as_table)
        }
        (Method::GET, false) => {
            let list = api.list(&target, &list_query(&rt, &q)?)?;
            match as_table {
                None => Ok(json_response(StatusCode::OK, list)),
                Some(include) => {
                    let list: Value = serde_json::from_slice(&list)
                        .map_err(|e| ApiError::internal(format!("re-reading a list: {e}")))?;
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    let t = table::table(
                        &rt,
                        &items,
                        list["metadata"].clone(),
                        include,
                        true,
                        Timestamp::now(),
                    );
                    Ok(value_response(StatusCode::OK, &t))
                }
            }
        }
        (Method::GET, true) => {
            let obj = api.get(&target)?;
            match as_table {
                None => Ok(object_response(StatusCode::OK, &obj, pb)),
                Some(include) => {
                    let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion")});
                    let t = table::table(&rt, &[obj], meta, include, true, Timestamp::now());
                    Ok(value_response(StatusCode::OK, &t))
                }
            }
        }
        (Method::POST, false) => {
            let body = parse(&body)?;
            check_fields(&body, false)?;
            Ok(object_response(
                StatusCode::CREATED,
                &api.create(&target, body, dry_run)?,
                pb,
            ))
        }
        (Method::PUT, true) => {
            let body = parse(&body)?;
            check_fields(&body, false)?;
            Ok(object_response(
                StatusCode::OK,
                &api.update(&target, body, dry_run)?,
                pb,
            ))
        }
        (Method::PATCH, true) => {
            let kind = PatchKind::from_content_type(&content_type).ok_or_else(|| {
                ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format ({content_type})"
                ))
            })?;
            // The object a merge, strategic or apply patch describes is checked; a JSON
            // patch's operations are not.
            if kind != PatchKind::Json
                && let Ok(doc) = serde_json::from_slice::<Value>(&body)
            {
                check_fields(&doc, kind == PatchKind::Apply)?;
            }
            let (obj, created) = api.patch(
                &target,
                kind,
                &body,
                q.get("fieldManager").map(String::as_str),
                dry_run,
            )?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(status, &obj, pb))
        }
        (Method::DELETE, true) => {
            let options = if body.is_empty() {
                None
            } else {
                Some(parse(&body)?)
            };
            Ok(object_response(
                StatusCode::OK,
                &api.delete(&target, options.as_ref(), dry_run)?,
                pb,
            ))
        }
        (Method::DELETE, false) => Ok(value_response(
            StatusCode::OK,
            &api.delete_collection(&target, &list_query(&rt, &q)?)?,
        )),
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on this path"
        ))),
    };
    let mut response = response?;
    for w in warnings {
        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - {w:?}")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(response)
}

fn list_query(rt: &ResourceType, q: &HashMap<String, String>) -> ApiResult<ListQuery> {
    let fields: Vec<&str> = rt.fields.iter().map(String::as_str).collect();
    Ok(ListQuery {
        labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), &fields)
            .map_err(ApiError::bad_request)?,
        limit: q
            .get("limit")
            .map(|l| {
                l.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))
            })
            .transpose()?
            .filter(|l| *l > 0),
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|m| !m.is_empty())
            .cloned(),
    })
}

/// The aggregated discovery version a request's Accept header asks for (kubectl asks
/// for `v2`, then `v2beta1`, then the legacy documents), if any.
fn aggregated_wanted(req: &Request<Incoming>) -> Option<&'static str> {
    let accept = req.headers().get(header::ACCEPT)?.to_str().ok()?;
    accept.split(',').find_map(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        if !(params.contains(&"as=APIGroupDiscoveryList")
            && params.contains(&"g=apidiscovery.k8s.io"))
        {
            return None;
        }
        if params.contains(&"v=v2") {
            Some("v2")
        } else if params.contains(&"v=v2beta1") {
            Some("v2beta1")
        } else {
            None
        }
    })
}

/// `/api` (the core group) or `/apis` (every other group) as one APIGroupDiscoveryList:
/// every group, version and resource in one document.
fn aggregated_list(shared: &Shared, core: bool, version: &str) -> Value {
    let inner = shared.api.lock();
    // (group, [(version, resources)]), in the registry's order.
    type Versions = Vec<(String, Vec<Value>)>;
    let mut groups: Vec<(String, Versions)> = Vec::new();
    for rt in inner.registry.all().filter(|r| r.group.is_empty() == core) {
        let g = match groups.iter_mut().position(|(g, _)| *g == rt.group) {
            Some(i) => &mut groups[i].1,
            None => {
                groups.push((rt.group.clone(), Vec::new()));
                &mut groups.last_mut().expect("pushed").1
            }
        };
        match g.iter_mut().find(|(v, _)| *v == rt.version) {
            Some((_, resources)) => resources.push(rt.aggregated()),
            None => g.push((rt.version.clone(), vec![rt.aggregated()])),
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|(v, resources)| json!({"version": v, "resources": resources, "freshness": "Current"}))
                .collect();
            json!({"metadata": {"name": name}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

fn group_list(shared: &Shared) -> Value {
    let inner = shared.api.lock();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for rt in inner.registry.all().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == rt.group) {
            Some((_, vs)) if !vs.contains(&rt.version) => vs.push(rt.version.clone()),
            Some(_) => {}
            None => groups.push((rt.group.clone(), vec![rt.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(shared: &Shared, group: &str, version: &str) -> ApiResult<Value> {
    let inner = shared.api.lock();
    let resources: Vec<Value> = inner
        .registry
        .all()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| r.discovery())
        .collect();
    if resources.is_empty() {
        return Err(ApiError::not_found_path(&format!(
            "/apis/{group}/{version}"
        )));
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

// ----- watch ------------------------------------------------------------------------------

struct WatchFilter {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    /// Events carry one-row Tables (`kubectl get --watch`); the first has the columns.
    table: Option<Include>,
    headers_sent: std::sync::atomic::AtomicBool,
}

impl WatchFilter {
    fn matches(&self, v: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && v.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns)
        {
            return false;
        }
        let shown;
        let v = if self.rt.group == "events.k8s.io" {
            shown = crate::api::present(&self.rt, v);
            &shown
        } else {
            v
        };
        self.labels.matches(v) && self.fields.matches(v)
    }

    fn line(&self, kind: &str, s: &Stored) -> Bytes {
        let obj = match self.table {
            None => present_json(&self.rt, s),
            Some(include) => {
                let shown = crate::api::present(&self.rt, &s.value);
                let meta = json!({"resourceVersion": s.rv.to_string()});
                let headers = !self
                    .headers_sent
                    .swap(true, std::sync::atomic::Ordering::Relaxed);
                let t = table::table(&self.rt, &[shown], meta, include, headers, Timestamp::now());
                Bytes::from(serde_json::to_vec(&t).expect("serialises"))
            }
        };
        let mut out = Vec::with_capacity(obj.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(&obj);
        out.extend_from_slice(b"}\n");
        Bytes::from(out)
    }

    /// The event a watcher with this filter sees for a change, if any. An object that
    /// stops matching is DELETED (its previous state, at the change's version); one that
    /// starts matching is ADDED.
    fn translate(&self, c: &Change) -> Option<Bytes> {
        let now = c.kind != ChangeKind::Deleted && self.matches(&c.obj.value);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(&p.value));
        match (c.kind, before, now) {
            (ChangeKind::Deleted, true, _) => Some(self.line("DELETED", &c.obj)),
            (ChangeKind::Deleted, false, _) => None,
            (_, false, true) => Some(self.line("ADDED", &c.obj)),
            (_, true, true) => Some(self.line("MODIFIED", &c.obj)),
            (_, true, false) => {
                let prev = c.prev.as_ref().expect("matched before");
                let mut v = prev.value.clone();
                v["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                let json = Bytes::from(serde_json::to_vec(&v).expect("serialises"));
                Some(self.line(
                    "DELETED",
                    &Stored {
                        value: v,
                        json,
                        rv: c.rv,
                    },
                ))
            }
            (_, false, false) => None,
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta});
        Bytes::from(format!("{{\"type\":\"BOOKMARK\",\"object\":{obj}}}\n"))
    }
}

fn error_line(e: &ApiError) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"ERROR\",\"object\":{}}}\n",
        e.status()
    ))
}

fn watch(
    shared: &Arc<Shared>,
    t: &Target,
    q: &HashMap<String, String>,
    table: Option<Include>,
) -> ApiResult<Response<Body>> {
    let lq = list_query(&t.rt, q)?;
    let filter = WatchFilter {
        rt: t.rt.clone(),
        namespace: t.namespace.clone(),
        labels: lq.labels,
        fields: lq.fields,
        table,
        headers_sent: std::sync::atomic::AtomicBool::new(false),
    };
    let bookmarks = flag(q, "allowWatchBookmarks");
    let send_initial = flag(q, "sendInitialEvents");
    if send_initial && lq.resource_version_match.as_deref() != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "ListOptions.meta.k8s.io",
            "",
            &["resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into()],
        ));
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(shared.options.default_watch_timeout, Duration::from_secs);
    let storage = t.rt.storage.clone();
    let rv = lq.resource_version.clone().filter(|r| !r.is_empty());
    // Start point and initial objects, taken under the lock so nothing falls between.
    let (mut cursor, initial, mut changed) = {
        let mut inner = shared.api.lock();
        let changed = inner.subscribe(&storage);
        match rv.as_deref() {
            Some(rv) if rv != "0" && !send_initial => (parse_rv(rv)?, Vec::new(), changed),
            _ => {
                let pass = |v: &Value| filter.matches(v);
                let (items, _) = inner
                    .list(&storage, t.namespace.as_deref(), None, None, None, &pass)
                    .map_err(|_| ApiError::internal("listing for the watch failed"))?;
                (inner.rv, items, changed)
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let shared = shared.clone();
    let mut closed = shared.faults.watch_epoch();
    let bookmark_every = shared.options.bookmark_interval;
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for s in &initial {
            if tx.send(filter.line("ADDED", s)).await.is_err() {
                return;
            }
        }
        if send_initial && tx.send(filter.bookmark(cursor, true)).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            // Drain everything after the cursor.
            let (batch, now) = {
                let mut inner = shared.api.lock();
                let batch = inner.changes_since(&storage, cursor, 1024);
                (batch, inner.rv)
            };
            let batch = match batch {
                Ok(b) => b,
                Err(c) => {
                    let e = ApiError::expired(format!(
                        "too old resource version: {} ({})",
                        c.requested, c.oldest
                    ));
                    let _ = tx.send(error_line(&e)).await;
                    return;
                }
            };
            let drained = batch.is_empty();
            for c in batch {
                cursor = c.rv;
                if let Some(line) = filter.translate(&c)
                    && tx.send(line).await.is_err()
                {
                    return;
                }
            }
            if !drained {
                continue;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tick.tick() => {
                    if bookmarks {
                        cursor = cursor.max(now);
                        if tx.send(filter.bookmark(cursor, false)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = &mut deadline => return,
                _ = closed.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response"))
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ----- admin ------------------------------------------------------------------------------

fn admin_request(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Body> {
    let q = query_map(query);
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
    let f = &shared.faults;
    let ok = |what: String| value_response(StatusCode::OK, &json!({"ok": what}));
    if method != Method::POST {
        return error_response(&ApiError::method_not_allowed("admin endpoints take POST"));
    }
    match path {
        "close-watches" => {
            f.close_watches();
            ok("all watches closed".into())
        }
        "compact" => {
            shared.api.lock().compact();
            ok("history compacted".into())
        }
        "fail" => {
            let count = num("count").unwrap_or(1) as u32;
            let code = num("code").unwrap_or(500) as u16;
            if code != 500 && code != 429 {
                return error_response(&ApiError::bad_request("code must be 500 or 429"));
            }
            f.fail_next(count, code);
            ok(format!("the next {count} requests fail with {code}"))
        }
        "watch-delay" => {
            let ms = num("ms").unwrap_or(0);
            f.delay_watches(Duration::from_millis(ms));
            ok(format!("watch delay {ms} ms"))
        }
        "latency" => {
            let ms = num("ms").unwrap_or(0);
            f.set_latency(Duration::from_millis(ms));
            ok(format!("latency {ms} ms"))
        }
        "offline" => {
            let secs = num("seconds").unwrap_or(0);
            f.go_offline(Duration::from_secs(secs));
            ok(format!("offline for {secs} s"))
        }
        _ => error_response(&ApiError::not_found_path(&format!("/fake/{path}"))),
    }
}
