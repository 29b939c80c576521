//! Kubernetes label selectors, evaluated in pure code.
//!
//! Pools select Services and namespaces, BGP peers and router configs select nodes; all
//! use `metav1.LabelSelector`. It is validated once into [`Selector`] so that a bad
//! operator is reported when the object is read, not silently treated as "no match".

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use thiserror::Error;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A validated label selector. The empty selector matches everything, as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Why a `LabelSelector` is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectorError {
    #[error(
        "matchExpressions[{index}]: unknown operator {operator:?} (use In, NotIn, Exists or DoesNotExist)"
    )]
    UnknownOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs at least one value")]
    MissingValues { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    UnexpectedValues { index: usize, operator: String },
    #[error("matchExpressions[{index}]: empty key")]
    EmptyKey { index: usize },
}

impl Selector {
    /// Validates a Kubernetes `LabelSelector`.
    pub fn from_k8s(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements: Vec<Requirement> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for (index, expr) in sel.match_expressions.iter().flatten().enumerate() {
            if expr.key.is_empty() {
                return Err(SelectorError::EmptyKey { index });
            }
            let values = expr.values.clone().unwrap_or_default();
            let operator = expr.operator.clone();
            let needs_values = |values: Vec<String>| {
                if values.is_empty() {
                    Err(SelectorError::MissingValues {
                        index,
                        operator: operator.clone(),
                    })
                } else {
                    Ok(values)
                }
            };
            let no_values = || {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err(SelectorError::UnexpectedValues {
                        index,
                        operator: operator.clone(),
                    })
                }
            };
            let key = expr.key.clone();
            requirements.push(match expr.operator.as_str() {
                "In" => Requirement::In(key, needs_values(values.clone())?),
                "NotIn" => Requirement::NotIn(key, needs_values(values.clone())?),
                "Exists" => no_values().map(|_| Requirement::Exists(key))?,
                "DoesNotExist" => no_values().map(|_| Requirement::DoesNotExist(key))?,
                _ => return Err(SelectorError::UnknownOperator { index, operator }),
            });
        }
        Ok(Selector { requirements })
    }

    /// A selector requiring exactly these labels.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Selector {
        Selector {
            requirements: labels
                .into_iter()
                .map(|(k, v)| Requirement::Equals(k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for Selector {
    /// Kubernetes' string form (`a=b,c in (x,y),!d`), for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn evaluates_every_operator() {
        let sel = Selector::from_k8s(&LabelSelector {
            match_labels: Some(labels(&[("team", "web")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["front", "edge"]),
                expr("env", "NotIn", &["dev"]),
                expr("public", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        })
        .unwrap();
        let good = labels(&[("team", "web"), ("tier", "edge"), ("public", "")]);
        assert!(sel.matches(&good));
        let mut l = good.clone();
        l.insert("env".into(), "dev".into());
        assert!(!sel.matches(&l));
        let mut l = good.clone();
        l.insert("legacy".into(), "x".into());
        assert!(!sel.matches(&l));
        let mut l = good.clone();
        l.remove("public");
        assert!(!sel.matches(&l));
        let mut l = good;
        l.insert("tier".into(), "back".into());
        assert!(!sel.matches(&l));
        assert_eq!(
            sel.to_string(),
            "team=web,tier in (front,edge),env notin (dev),public,!legacy"
        );
    }

    #[test]
    fn empty_selector_matches_everything() {
        let sel = Selector::from_k8s(&LabelSelector::default()).unwrap();
        assert!(sel.is_empty() && sel.matches(&Labels::new()));
    }

    #[test]
    fn rejects_invalid_expressions_with_their_index() {
        let bad = |e| {
            Selector::from_k8s(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![expr("a", "Exists", &[]), e]),
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad(expr("a", "Equals", &["x"])).contains("matchExpressions[1]: unknown operator"));
        assert!(bad(expr("a", "In", &[])).contains("needs at least one value"));
        assert!(bad(expr("a", "Exists", &["x"])).contains("takes no values"));
        assert!(bad(expr("", "Exists", &[])).contains("empty key"));
    }
}
