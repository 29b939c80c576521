//! Property tests over arbitrary input for every parser of user-written text: pool
//! entries, Service annotations, label selectors. They run in CI with a bounded number
//! of cases (`ROUTELB_FUZZ_CASES`, default 2,000 each); the
//! template context is fuzzed against the real daemons in `tests/integration`.

#![cfg(test)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use proptest::prelude::*;

use crate::ipam::range::{addr_value, parse_entry};
use crate::routing::context::cidrs;
use crate::selector::{Labels, Selector};
use crate::service;

// The test harness's own knob, not the core reading the world.
#[allow(clippy::disallowed_methods)]
fn cases() -> u32 {
    std::env::var("ROUTELB_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000)
}

/// Text that looks like addresses, ranges and CIDRs, and text that does not.
fn entryish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9./:a-fA-F -]{0,40}",
        (any::<[u8; 4]>(), 0u8..=40)
            .prop_map(|(a, l)| format!("{}.{}.{}.{}/{l}", a[0], a[1], a[2], a[3])),
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(a, b)| format!(
            "{}-{}",
            IpAddr::from(a),
            IpAddr::from(b)
        )),
        (any::<[u16; 8]>(), 0u8..=140)
            .prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv6Addr::from(a))),
        ".{0,60}",
    ]
}

fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[0-9a-f.:, ]{0,60}",
        Just("true".to_string()),
        Just("".to_string()),
    ]
}

fn service(annotations: BTreeMap<String, String>, lb_ip: Option<String>) -> Service {
    let mut svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}
    }))
    .unwrap();
    svc.metadata.annotations = Some(annotations);
    if let Some(spec) = svc.spec.as_mut() {
        spec.load_balancer_ip = lb_ip;
    }
    svc
}

const ANNOTATIONS: &[&str] = &[
    "routelb.io/pool",
    "routelb.io/addresses",
    "routelb.io/allow-shared-ip",
    "routelb.io/share-across-namespaces",
    "metallb.io/address-pool",
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
    "purelb.io/addresses",
    "lbipam.cilium.io/ips",
    "lbipam.cilium.io/sharing-key",
    "lbipam.cilium.io/sharing-cross-namespace",
    "eip.openelb.kubesphere.io/v1alpha1",
];

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        "[a-z./-]{0,6}",
        prop_oneof![
            Just("In".to_string()),
            Just("NotIn".to_string()),
            Just("Exists".to_string()),
            Just("DoesNotExist".to_string()),
            "[A-Za-z]{0,6}",
        ],
        proptest::option::of(proptest::collection::vec("[a-z]{0,3}", 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Any entry is parsed or refused, never a panic; a parsed one is a well-formed
    /// range whose minimal CIDR cover is exactly the range.
    #[test]
    fn pool_entries_parse_or_are_refused(entry in entryish()) {
        if let Ok(range) = parse_entry(&entry) {
            prop_assert!(range.first <= range.last);
            prop_assert!(range.contains(range.first_addr()) && range.contains(range.last_addr()));
            let blocks = cidrs(&range);
            let bits = u32::from(range.family.bits());
            let mut next = range.first;
            for p in &blocks {
                prop_assert_eq!(addr_value(p.addr), next, "contiguous: {}", entry);
                let size_bits = bits - u32::from(p.len);
                let last = if size_bits >= 128 { u128::MAX } else { next + ((1u128 << size_bits) - 1) };
                prop_assert!(last <= range.last);
                next = last.wrapping_add(1);
            }
            prop_assert!(!blocks.is_empty());
        }
    }

    /// Any annotation values are read or refused with an error naming what to fix;
    /// never a panic; requested addresses are real addresses.
    #[test]
    fn service_annotations_parse_or_name_the_problem(
        picked in proptest::collection::btree_map(0..ANNOTATIONS.len(), annotation_value(), 0..5),
        lb_ip in proptest::option::of(annotation_value()),
    ) {
        let annotations: BTreeMap<String, String> =
            picked.into_iter().map(|(i, v)| (ANNOTATIONS[i].to_string(), v)).collect();
        let svc = service(annotations, lb_ip);
        match service::parse(&svc, &Labels::new()) {
            Ok(p) => {
                prop_assert!(p.request.addresses.len() <= 2);
                if let Some(k) = &p.request.share.key {
                    prop_assert!(k.starts_with("ns/") || k.starts_with("*/"), "{}", k);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(
                    msg.contains("annotation") || msg.contains("loadBalancerIP"),
                    "an error names what to fix: {}", msg
                );
            }
        }
    }

    /// Any selector is accepted or refused, never a panic; an accepted one agrees with
    /// the meaning of each requirement on any labels.
    #[test]
    fn label_selectors_mean_what_kubernetes_says(
        match_labels in proptest::option::of(proptest::collection::btree_map("[a-z]{1,2}", "[a-z]{0,2}", 0..3)),
        exprs in proptest::option::of(proptest::collection::vec(requirement(), 0..3)),
        labels in proptest::collection::btree_map("[a-z]{1,2}", "[a-z]{0,2}", 0..4),
    ) {
        let sel = LabelSelector { match_labels: match_labels.clone(), match_expressions: exprs.clone() };
        let Ok(parsed) = Selector::from_k8s(&sel) else { return Ok(()) };
        let labels: Labels = labels;
        let mut expected = match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
        for e in exprs.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let has = labels.get(&e.key);
            expected &= match e.operator.as_str() {
                "In" => has.is_some_and(|v| values.contains(v)),
                "NotIn" => has.is_none_or(|v| !values.contains(v)),
                "Exists" => has.is_some(),
                "DoesNotExist" => has.is_none(),
                other => panic!("accepted an unknown operator {other}"),
            };
        }
        prop_assert_eq!(parsed.matches(&labels), expected);
    }
}
