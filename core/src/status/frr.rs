//! FRR's `show bgp neighbors json` (vtysh), read into sessions.
//!
//! The reply is an object keyed by neighbor (address, or interface for unnumbered
//! sessions): `bgpState`, `remoteAs`, `bgpTimerUpEstablishedEpoch` (when it was
//! Established, Unix seconds) or `lastResetTimerMsecs` (how long ago the last reset
//! was, in whole seconds), `lastResetDueTo`,
//! `lastNotificationReason`, `lastErrorCodeSubcode`, and per address family
//! `addressFamilyInfo.<afi>.sentPrefixCounter` / `acceptedPrefixCounter`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::crd::SessionReport;

/// The sessions in a `show bgp neighbors json` reply, by neighbor.
pub fn parse_neighbors(reply: &Value, now: Timestamp) -> Vec<SessionReport> {
    let Some(map) = reply.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (neighbor, n) in map {
        let Some(n) = n.as_object() else { continue };
        let Some(state) = n.get("bgpState").and_then(Value::as_str) else {
            continue;
        };
        let state = state.to_string();
        let established = state.eq_ignore_ascii_case("established");
        let int = |k: &str| n.get(k).and_then(Value::as_i64);
        // Established: since an absolute time; otherwise since the last reset, which FRR
        // gives only as "this long ago" in whole seconds.
        let up_epoch = int("bgpTimerUpEstablishedEpoch").filter(|_| established);
        let since = match up_epoch {
            Some(epoch) => Timestamp::from_second(epoch).ok(),
            None => int(if established {
                "bgpTimerUpMsec"
            } else {
                "lastResetTimerMsecs"
            })
            .and_then(|ms| now.checked_sub(SignedDuration::from_millis(ms)).ok())
            .map(|t| t.round(k8s_openapi::jiff::Unit::Second).unwrap_or(t)),
        }
        .map(Time);
        let count = |k: &str| -> Option<u64> {
            let afs = n.get("addressFamilyInfo")?.as_object()?;
            Some(
                afs.values()
                    .filter_map(|af| af.get(k).and_then(Value::as_u64))
                    .sum(),
            )
        };
        let text = |k: &str| n.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        // FRR keeps a reset reason even on sessions never reset ("Waiting for peer
        // OPEN"): a reason counts once a connection was dropped or a NOTIFICATION came.
        let dropped = int("connectionsDropped").is_some_and(|n| n > 0);
        let notification = text("lastNotificationReason")
            .or(text("lastErrorCodeSubcode").filter(|c| *c != "000000"));
        let last_error = match (notification, established) {
            (Some(n), _) => Some(n.to_string()),
            (None, false) if dropped => text("lastResetDueTo").map(str::to_string),
            _ => None,
        };
        out.push(SessionReport {
            peer: None,
            address: if neighbor.parse::<std::net::IpAddr>().is_ok() {
                neighbor.clone()
            } else {
                // An unnumbered session (keyed by interface): the router's address, once known.
                text("bgpNeighborAddr")
                    .or(text("hostForeign").filter(|h| h.parse::<std::net::IpAddr>().is_ok()))
                    .unwrap_or(neighbor)
                    .to_string()
            },
            asn: n
                .get("remoteAs")
                .and_then(Value::as_u64)
                .and_then(|a| u32::try_from(a).ok()),
            state,
            since,
            prefixes_sent: if established {
                count("sentPrefixCounter")
            } else {
                None
            },
            prefixes_received: if established {
                count("acceptedPrefixCounter")
            } else {
                None
            },
            last_error,
        });
    }
    out
}

/// FRR's version from `show version` (`FRRouting 8.4.4 (host) on Linux...`).
pub fn parse_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("FRRouting ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}
