//! The JSONPath subset CRD `additionalPrinterColumns` use (the real server accepts
//! "simple" paths there): `.field`, `['field']`, `[n]`, `[*]`, `.*` and filters
//! `[?(@.a.b=="value")]` (`==`, `!=`; a string or a number).

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        path: Vec<String>,
        equal: bool,
        value: Value,
    },
}

/// A parsed path.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let t = text.trim();
        let t = t
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(t);
        let t = t.strip_prefix('$').unwrap_or(t);
        let mut steps = Vec::new();
        let b = t.as_bytes();
        let mut i = 0;
        let bad = |why: &str| format!("unsupported JSONPath {text:?}: {why}");
        while i < b.len() {
            match b[i] {
                b'.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                        j += 1;
                    }
                    let name = &t[start..j];
                    match name {
                        "" => return Err(bad("empty field name")),
                        "*" => steps.push(Step::All),
                        _ => steps.push(Step::Field(name.to_string())),
                    }
                    i = j;
                }
                b'[' => {
                    let end = t[i..]
                        .find(']')
                        .map(|e| i + e)
                        .ok_or_else(|| bad("unclosed ["))?;
                    // A filter may contain ']' inside quotes: find the closing ")]".
                    let (inner, next) = if t[i + 1..].starts_with("?(") {
                        let close = t[i..].find(")]").ok_or_else(|| bad("unclosed filter"))?;
                        (&t[i + 1..i + close + 1], i + close + 2)
                    } else {
                        (&t[i + 1..end], end + 1)
                    };
                    steps.push(parse_bracket(inner).map_err(|e| bad(&e))?);
                    i = next;
                }
                _ => return Err(bad("expected . or [")),
            }
        }
        Ok(JsonPath(steps))
    }

    /// Every value the path selects.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(name) => next.extend(v.get(name)),
                    Step::Index(n) => {
                        if let Some(a) = v.as_array() {
                            let i = if *n < 0 { a.len() as i64 + n } else { *n };
                            next.extend(usize::try_from(i).ok().and_then(|i| a.get(i)));
                        }
                    }
                    Step::All => match v {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter { path, equal, value } => {
                        for item in v.as_array().into_iter().flatten() {
                            let got = path.iter().try_fold(item, |v, k| v.get(k));
                            let same = got.is_some_and(|g| loosely_equal(g, value));
                            if got.is_some() && same == *equal {
                                next.push(item);
                            }
                        }
                    }
                }
            }
            current = next;
        }
        current
    }
}

fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    let inner = inner.trim();
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Some(q) = quoted(inner) {
        return Ok(Step::Field(q));
    }
    if let Ok(n) = inner.parse::<i64>() {
        return Ok(Step::Index(n));
    }
    let Some(expr) = inner.strip_prefix("?(").and_then(|e| e.strip_suffix(')')) else {
        return Err(format!("unsupported [{inner}]"));
    };
    let (lhs, rhs, equal) = if let Some((l, r)) = expr.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = expr.split_once("!=") {
        (l, r, false)
    } else {
        return Err(format!("unsupported filter {expr}"));
    };
    let path = lhs
        .trim()
        .strip_prefix("@.")
        .ok_or_else(|| format!("a filter starts with @.: {expr}"))?
        .split('.')
        .map(str::to_string)
        .collect();
    let rhs = rhs.trim();
    let value = match quoted(rhs) {
        Some(s) => Value::String(s),
        None => serde_json::from_str(rhs).map_err(|_| format!("unsupported value {rhs}"))?,
    };
    Ok(Step::Filter { path, equal, value })
}

fn quoted(s: &str) -> Option<String> {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return Some(s[1..s.len() - 1].to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find(path: &str, v: &Value) -> Vec<Value> {
        JsonPath::parse(path)
            .unwrap()
            .find(v)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn printer_column_paths_select_what_the_real_server_selects() {
        let v = json!({
            "spec": {"mode": "bgp", "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [
                {"type": "Valid", "status": "True"},
                {"type": "Ready", "status": "False"}
            ]},
        });
        assert_eq!(find(".spec.mode", &v), [json!("bgp")]);
        assert_eq!(find("{.spec.mode}", &v), [json!("bgp")]);
        assert_eq!(find(".spec['mode']", &v), [json!("bgp")]);
        assert_eq!(find(".spec.ports[1].port", &v), [json!(443)]);
        assert_eq!(find(".spec.ports[-1].port", &v), [json!(443)]);
        assert_eq!(find(".spec.ports[*].port", &v), [json!(80), json!(443)]);
        assert_eq!(
            find(r#".status.conditions[?(@.type=="Ready")].status"#, &v),
            [json!("False")]
        );
        assert_eq!(
            find(".status.conditions[?(@.type!='Ready')].type", &v),
            [json!("Valid")]
        );
        assert_eq!(find(".spec.ports[?(@.port==80)].port", &v), [json!(80)]);
        assert!(find(".spec.missing", &v).is_empty());
        assert!(find(".spec.ports[5]", &v).is_empty());
        assert!(JsonPath::parse(".spec..x").is_err());
        assert!(JsonPath::parse(".spec[?(@.a > 1)]").is_err());
    }
}
