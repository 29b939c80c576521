//! Which RouterConfig governs a node, and the kernel contract it sets.
//!
//! The RouterConfig is the product's API for where routelb's entries live (interface,
//! table, protocol): the agent programs exactly what the rendered routing configuration
//! reads. The agent's flags (`--interface`, `--route-table`, `--route-protocol`) are
//! only the fallback for nodes no RouterConfig selects and for fields it leaves unset; a
//! flag a RouterConfig overrides is reported, never silently obeyed.

use std::sync::Arc;

use kube_core::ResourceExt;

use crate::crd::{RouterConfig, RouterConfigSpec};
use crate::net::{DEFAULT_INTERFACE, DEFAULT_PROTOCOL, DEFAULT_TABLE, KernelContract};
use crate::selector::{Labels, Selector};

/// The RouterConfig that governs a node, and what else claimed it.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// The oldest RouterConfig selecting the node (by creation, then name).
    pub chosen: Option<Arc<RouterConfig>>,
    /// Other RouterConfigs selecting the node, ignored while the chosen one exists.
    pub also_selecting: Vec<String>,
    /// RouterConfigs whose nodeSelector cannot be read, with why: they select nothing.
    pub invalid: Vec<(String, String)>,
}

impl Selection {
    /// A sentence for an Event when more than one RouterConfig selects the node.
    pub fn conflict(&self, node: &str) -> Option<String> {
        let chosen = self.chosen.as_ref()?;
        (!self.also_selecting.is_empty()).then(|| {
            format!(
                "RouterConfigs {} also select node {node}; the oldest, {}, is used: make their nodeSelectors disjoint",
                self.also_selecting.join(", "),
                chosen.name_any()
            )
        })
    }
}

/// Picks the RouterConfig for a node with `labels`.
pub fn select(labels: &Labels, configs: &[Arc<RouterConfig>]) -> Selection {
    let mut selection = Selection::default();
    let mut matching: Vec<&Arc<RouterConfig>> = Vec::new();
    for rc in configs {
        let selects = match &rc.spec.node_selector {
            None => true,
            Some(sel) => match Selector::from_k8s(sel) {
                Ok(s) => s.matches(labels),
                Err(e) => {
                    selection
                        .invalid
                        .push((rc.name_any(), format!("nodeSelector: {e}")));
                    false
                }
            },
        };
        if selects {
            matching.push(rc);
        }
    }
    matching.sort_by_key(|rc| {
        (
            rc.creation_timestamp()
                .map_or(i64::MAX, |t| t.0.as_second()),
            rc.name_any(),
        )
    });
    let mut matching = matching.into_iter();
    selection.chosen = matching.next().cloned();
    selection.also_selecting = matching.map(|rc| rc.name_any()).collect();
    selection
}

/// The agent's own kernel-contract settings (its flags): `None` where not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContractFlags {
    pub interface: Option<String>,
    pub table: Option<u32>,
    pub protocol: Option<u8>,
}

impl ContractFlags {
    /// The contract of a node no RouterConfig selects.
    pub fn fallback(&self) -> KernelContract {
        KernelContract {
            interface: self
                .interface
                .clone()
                .unwrap_or_else(|| DEFAULT_INTERFACE.into()),
            table: self.table.unwrap_or(DEFAULT_TABLE),
            protocol: self.protocol.unwrap_or(DEFAULT_PROTOCOL),
        }
    }
}

fn plain_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The kernel contract of a node governed by `rc` (or by nothing): the RouterConfig's
/// fields, the flags where it leaves one unset. Returns it with one note per flag the
/// RouterConfig overrides, or why the RouterConfig's values cannot be used.
pub fn contract(
    rc: Option<(&str, &RouterConfigSpec)>,
    flags: &ContractFlags,
) -> Result<(KernelContract, Vec<String>), String> {
    let fallback = flags.fallback();
    let Some((name, spec)) = rc else {
        return Ok((fallback, Vec::new()));
    };
    let contract = KernelContract {
        interface: spec.interface.clone().unwrap_or(fallback.interface),
        table: spec.route_table.unwrap_or(fallback.table),
        protocol: spec.route_protocol.unwrap_or(fallback.protocol),
    };
    if !plain_ifname(&contract.interface) {
        return Err(format!(
            "RouterConfig {name}: interface {:?} is not a valid interface name",
            contract.interface
        ));
    }
    if contract.table == 0 || (253..=255).contains(&contract.table) {
        return Err(format!(
            "RouterConfig {name}: routeTable {} is reserved",
            contract.table
        ));
    }
    if contract.protocol < 5 {
        return Err(format!(
            "RouterConfig {name}: routeProtocol {} is reserved for the kernel (use 5 to 255)",
            contract.protocol
        ));
    }
    let overridden = [
        (
            "--interface",
            "interface",
            flags.interface.clone().zip(spec.interface.clone()),
        ),
        (
            "--route-table",
            "routeTable",
            flags
                .table
                .zip(spec.route_table)
                .map(|(f, s)| (f.to_string(), s.to_string())),
        ),
        (
            "--route-protocol",
            "routeProtocol",
            flags
                .protocol
                .zip(spec.route_protocol)
                .map(|(f, s)| (f.to_string(), s.to_string())),
        ),
    ];
    let notes = overridden
        .into_iter()
        .filter_map(|(flag, field, values)| {
            let (given, used) = values.filter(|(f, s)| f != s)?;
            Some(format!(
                "RouterConfig {name} sets {field} {used}; the agent's {flag} {given} applies only where no RouterConfig sets it"
            ))
        })
        .collect();
    Ok((contract, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rc(name: &str, created: &str, spec: serde_json::Value) -> Arc<RouterConfig> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "routelb.io/v1alpha1", "kind": "RouterConfig",
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_oldest_selecting_config_governs_and_the_others_are_named() {
        let configs = [
            rc(
                "rack-a",
                "2026-01-02T00:00:00Z",
                json!({"asn": 1, "nodeSelector": {"matchLabels": {"rack": "a"}}}),
            ),
            rc("all", "2026-01-01T00:00:00Z", json!({"asn": 2})),
            rc(
                "rack-b",
                "2026-01-01T00:00:00Z",
                json!({"asn": 3, "nodeSelector": {"matchLabels": {"rack": "b"}}}),
            ),
            rc(
                "broken",
                "2026-01-01T00:00:00Z",
                json!({"asn": 4, "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "Near"}]}}),
            ),
        ];
        let s = select(&labels(&[("rack", "a")]), &configs);
        assert_eq!(s.chosen.as_ref().unwrap().name_any(), "all");
        assert_eq!(s.also_selecting, ["rack-a"]);
        assert_eq!(s.invalid.len(), 1);
        assert_eq!(s.invalid[0].0, "broken");
        let note = s.conflict("node-1").unwrap();
        assert!(note.contains("rack-a") && note.contains("all"), "{note}");
        // A node only one config selects has no conflict; one none selects has no config.
        let s = select(&labels(&[("rack", "b")]), &configs[2..]);
        assert_eq!(s.chosen.as_ref().unwrap().name_any(), "rack-b");
        assert!(s.conflict("node-2").is_none());
        assert!(select(&labels(&[]), &configs[2..]).chosen.is_none());
    }

    #[test]
    fn the_router_config_sets_the_contract_and_flags_fill_the_rest() {
        let spec: RouterConfigSpec =
            serde_json::from_value(json!({"asn": 1, "routeTable": 201})).unwrap();
        let flags = ContractFlags {
            protocol: Some(250),
            ..ContractFlags::default()
        };
        let (c, notes) = contract(Some(("rc", &spec)), &flags).unwrap();
        assert_eq!(
            c,
            KernelContract {
                interface: "kube-lb0".into(),
                table: 201,
                protocol: 250
            }
        );
        assert!(notes.is_empty());
        // A flag the RouterConfig overrides is reported.
        let flags = ContractFlags {
            table: Some(202),
            ..ContractFlags::default()
        };
        let (c, notes) = contract(Some(("rc", &spec)), &flags).unwrap();
        assert_eq!(c.table, 201);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("--route-table 202"), "{}", notes[0]);
        // Without a RouterConfig the flags govern; defaults without flags.
        assert_eq!(contract(None, &flags).unwrap().0.table, 202);
        assert_eq!(
            contract(None, &ContractFlags::default()).unwrap().0,
            KernelContract::default()
        );
        // Values that can never work are refused, naming the RouterConfig.
        for bad in [
            json!({"asn": 1, "routeTable": 254}),
            json!({"asn": 1, "interface": "a/b"}),
            json!({"asn": 1, "interface": "much-too-long-name"}),
            json!({"asn": 1, "routeProtocol": 2}),
        ] {
            let spec: RouterConfigSpec = serde_json::from_value(bad).unwrap();
            let err = contract(Some(("rc", &spec)), &ContractFlags::default()).unwrap_err();
            assert!(err.starts_with("RouterConfig rc:"), "{err}");
        }
    }
}
