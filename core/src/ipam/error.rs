//! Allocation errors, worded for the Service's Events: each says what to fix.

use std::net::IpAddr;

use thiserror::Error;

use super::range::Family;
use super::request::{FamilyPolicy, PortKey, ServiceKey};

/// Why a pool cannot serve a Service.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Ineligible {
    #[error("overlaps the older pool {0} and is not used until fixed")]
    Conflict(String),
    #[error("is disabled")]
    Disabled,
    #[error("has autoAssign: false (name it with the routelb.io/pool annotation)")]
    NoAutoAssign,
    #[error(
        "is a local pool no node can answer for now ({0}); name it with the routelb.io/pool annotation to use it anyway"
    )]
    Unanswerable(String),
    #[error("serviceSelector {0:?} does not match the Service's labels")]
    ServiceSelector(String),
    #[error("namespaceSelector {0:?} does not match the namespace's labels")]
    NamespaceSelector(String),
}

/// Why a Service may not share an address with its current holders.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShareConflict {
    #[error("{holder} holds it{}", share_keys(.holder_key, .key))]
    NotShared {
        holder: ServiceKey,
        holder_key: Option<String>,
        key: Option<String>,
    },
    #[error("{holder} shares it and already uses port {port}")]
    PortInUse { holder: ServiceKey, port: PortKey },
    #[error(
        "{holder} shares it with externalTrafficPolicy {theirs}, this Service has {ours}; sharing needs both Cluster, or both Local with the same selector"
    )]
    TrafficPolicy {
        holder: ServiceKey,
        theirs: String,
        ours: String,
    },
}

/// A sharing key as the Service reads it, and its scope: a namespace, or `*` for
/// Services that share across namespaces (see `crate::service`).
fn split_key(k: &str) -> (&str, &str) {
    k.split_once('/').unwrap_or(("", k))
}

fn share_keys(holder_key: &Option<String>, key: &Option<String>) -> String {
    let across = "both Services set routelb.io/share-across-namespaces: \"true\"";
    match (
        holder_key.as_deref().map(split_key),
        key.as_deref().map(split_key),
    ) {
        (None, _) => " without a sharing key".to_string(),
        (Some(("*", h)), None) => format!(
            " with sharing key {h:?} across namespaces; set routelb.io/allow-shared-ip: {h:?} and routelb.io/share-across-namespaces: \"true\" to share it"
        ),
        (Some((_, h)), None) => {
            format!(" with sharing key {h:?}; set routelb.io/allow-shared-ip: {h:?} to share it")
        }
        (Some((hs, h)), Some((ks, k))) if h == k && hs != ks => format!(
            " with sharing key {h:?} in another scope: a key is its namespace's own unless {across}"
        ),
        (Some((_, h)), Some((_, k))) => format!(" with sharing key {h:?}, not {k:?}"),
    }
}

/// Why a Service got no address. Nothing changed when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocError {
    #[error("conflicting request: {0}")]
    InvalidRequest(String),
    #[error("address {addr} is {family} but the Service's ipFamilyPolicy is {policy} with ipFamilies {families}", family = Family::of(*.addr), families = families_list(.families))]
    WrongFamily {
        addr: IpAddr,
        policy: FamilyPolicy,
        families: Vec<Family>,
    },
    #[error("AddressPool {pool:?} does not exist")]
    PoolNotFound { pool: String },
    #[error("AddressPool {pool} {why}")]
    PoolUnusable { pool: String, why: Ineligible },
    #[error("no AddressPool can serve this Service{}", rejected_list(.rejected))]
    NoPoolMatches { rejected: Vec<(String, Ineligible)> },
    #[error("no {family} addresses in the pools that may serve this Service ({})", .pools.join(", "))]
    NoFamily { family: Family, pools: Vec<String> },
    #[error("no free {} address in {}: the pools are exhausted; add addresses or a pool", families_list(.families), .pools.join(", "))]
    Exhausted {
        families: Vec<Family>,
        pools: Vec<String>,
    },
    #[error("requested address {addr} is outside every AddressPool")]
    AddressOutsidePools { addr: IpAddr },
    #[error("requested address {addr} is not in AddressPool {pool}")]
    AddressNotInPool { addr: IpAddr, pool: String },
    #[error(
        "requested address {addr} ends in .0 or .255, which AddressPool {pool} excludes (avoidBuggyIPs)"
    )]
    AddressExcluded { addr: IpAddr, pool: String },
    #[error("requested address {addr} is in use: {why}")]
    AddressInUse { addr: IpAddr, why: ShareConflict },
    #[error(
        "requested addresses {first} (pool {first_pool}) and {second} (pool {second_pool}) must come from one pool"
    )]
    AddressesInDifferentPools {
        first: IpAddr,
        first_pool: String,
        second: IpAddr,
        second_pool: String,
    },
}

fn families_list(families: &[Family]) -> String {
    families
        .iter()
        .map(Family::to_string)
        .collect::<Vec<_>>()
        .join("+")
}

fn rejected_list(rejected: &[(String, Ineligible)]) -> String {
    if rejected.is_empty() {
        return ": no AddressPool exists".to_string();
    }
    let reasons: Vec<String> = rejected
        .iter()
        .map(|(p, why)| format!("{p} {why}"))
        .collect();
    format!(": {}", reasons.join("; "))
}

impl AllocError {
    /// A short, stable reason for metrics and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::InvalidRequest(_) | AllocError::WrongFamily { .. } => "invalid_request",
            AllocError::PoolNotFound { .. } => "pool_not_found",
            AllocError::PoolUnusable { .. } => "pool_unusable",
            AllocError::NoPoolMatches { .. } => "no_pool",
            AllocError::NoFamily { .. } => "no_pool_for_family",
            AllocError::Exhausted { .. } => "out_of_ips",
            AllocError::AddressOutsidePools { .. }
            | AllocError::AddressNotInPool { .. }
            | AllocError::AddressExcluded { .. } => "address_not_available",
            AllocError::AddressInUse { .. } => "already_allocated",
            AllocError::AddressesInDifferentPools { .. } => "invalid_request",
        }
    }

    /// Whether the error may clear by itself when pools or other Services change (as
    /// opposed to needing an edit of this Service).
    pub fn may_clear(&self) -> bool {
        !matches!(
            self,
            AllocError::InvalidRequest(_)
                | AllocError::WrongFamily { .. }
                | AllocError::AddressesInDifferentPools { .. }
        )
    }
}

/// Why a recorded assignment could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RestoreError {
    #[error("recorded addresses {addresses:?} are not one address per family")]
    Invalid { addresses: Vec<IpAddr> },
    #[error("recorded address {addr} is already in use: {why}")]
    Conflict { addr: IpAddr, why: ShareConflict },
}
