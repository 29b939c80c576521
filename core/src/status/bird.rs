//! BIRD's `show protocols all` over its control socket, read into sessions.
//!
//! The reply's lines carry BIRD's codes: `1002-` starts a protocol's summary line
//! (name, protocol, table, state, since, info), `1006-` and the continuation lines after
//! it (starting with a space) are its details (`BGP state:`, `Neighbor address:`,
//! `Neighbor AS:`, `Last error:`, and per channel `Routes: N imported, M exported`).
//! Since when is in BIRD's `timeformat protocol`: routelb's template sets `iso long`
//! (`2026-12-03 10:51:30`); BIRD's default shows only the time of day, which is read as
//! the last such time before `now` (the daemon's clock is taken to be UTC).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::civil::{Date, DateTime, Time as CivilTime};
use k8s_openapi::jiff::{SignedDuration, Timestamp, tz::TimeZone};

use crate::crd::SessionReport;

/// The BGP sessions in a raw `show protocols all` reply, in BIRD's order.
pub fn parse_protocols(reply: &str, now: Timestamp) -> Vec<SessionReport> {
    let mut out = Vec::new();
    let mut current: Option<SessionReport> = None;
    for line in reply.lines() {
        let code = line_code(line);
        let text = match code {
            Some(_) => line.get(5..).unwrap_or_default(),
            None => line,
        };
        if code == Some(1002) {
            out.extend(current.take());
            current = summary(text, now);
            continue;
        }
        if matches!(code, Some(c) if c != 1006) {
            continue;
        }
        let Some(s) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = text.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "BGP state" => s.state = value.to_string(),
            "Neighbor address" => s.address = value.split('%').next().unwrap_or(value).to_string(),
            "Neighbor AS" => s.asn = value.parse().ok(),
            "Last error" if !value.is_empty() => s.last_error = Some(value.to_string()),
            "Routes" => {
                // "3 imported, 1 filtered, 2 exported, 0 preferred"
                for part in value.split(',') {
                    let mut words = part.split_whitespace();
                    let (Some(n), Some(what)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let Ok(n) = n.parse::<u64>() else { continue };
                    let slot = match what {
                        "exported" => &mut s.prefixes_sent,
                        "imported" => &mut s.prefixes_received,
                        _ => continue,
                    };
                    *slot = Some(slot.unwrap_or(0) + n);
                }
            }
            _ => {}
        }
    }
    out.extend(current);
    // A dynamic BGP template (`neighbor range`) is no session: its spawned protocols are.
    out.retain(|s| !s.address.is_empty());
    for s in &mut out {
        // A session that is not up has sent nothing, whatever the channel counted.
        if s.established() {
            s.prefixes_sent = s.prefixes_sent.or(Some(0));
            s.prefixes_received = s.prefixes_received.or(Some(0));
        }
    }
    out
}

/// A reply line's code (`1002` of `1002-...`), if it has one (continuation lines start
/// with a space instead).
pub fn line_code(line: &str) -> Option<u16> {
    line.get(..4)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse().ok())
}

/// A protocol's summary line, when it is a BGP protocol.
fn summary(text: &str, now: Timestamp) -> Option<SessionReport> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.get(1).copied() != Some("BGP") {
        return None;
    }
    let (since, rest) = match (words.get(4), words.get(5)) {
        (Some(d), Some(t)) if d.parse::<Date>().is_ok() => (since_long(d, t), 6),
        (Some(t), _) => (since_short(t, now), 5),
        _ => (None, 5),
    };
    let info = words.get(rest..).unwrap_or_default();
    Some(SessionReport {
        state: info
            .first()
            .copied()
            .unwrap_or(words.get(3).copied().unwrap_or(""))
            .to_string(),
        since: since.map(Time),
        ..SessionReport::default()
    })
}

fn time_of_day(t: &str) -> Option<CivilTime> {
    t.parse::<CivilTime>().ok()
}

fn since_long(d: &str, t: &str) -> Option<Timestamp> {
    let date = d.parse::<Date>().ok()?;
    let dt = DateTime::from_parts(date, time_of_day(t)?);
    dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

fn since_short(t: &str, now: Timestamp) -> Option<Timestamp> {
    let tod = time_of_day(t)?;
    let today = now.to_zoned(TimeZone::UTC).date();
    let at = DateTime::from_parts(today, tod)
        .to_zoned(TimeZone::UTC)
        .ok()?
        .timestamp();
    if at <= now {
        Some(at)
    } else {
        at.checked_sub(SignedDuration::from_hours(24)).ok()
    }
}

/// BIRD's version from a `show status` reply (`BIRD 2.0.12`).
pub fn parse_version(reply: &str) -> Option<String> {
    reply.lines().find_map(|l| {
        let text = l.get(5..).unwrap_or(l);
        let rest = text.trim().strip_prefix("BIRD ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}
