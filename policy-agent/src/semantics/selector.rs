//! Label selectors, as `metav1.LabelSelector` defines them.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{names, policy::Admission};
use crate::model::Labels;

/// One requirement; a selector matches when all of its requirements do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// `matchLabels` entry, or `In` with one value: the label is present with this value.
    Equals(String, String),
    /// `In`: the label is present with one of these values.
    In(String, BTreeSet<String>),
    /// `NotIn`: the label is absent, or present with a value not in the set.
    NotIn(String, BTreeSet<String>),
    /// `Exists`: the label is present.
    Exists(String),
    /// `DoesNotExist`: the label is absent.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// A selector field that the API server would reject.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SelectorError {
    /// Path of the offending field, relative to the selector.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses and validates an API selector as the API server validates one being created
    /// (`ValidateLabelSelector`); on failure returns every field that is wrong.
    pub fn parse(api: &LabelSelector) -> Result<Self, Vec<SelectorError>> {
        Self::parse_as(api, Admission::Create)
    }

    /// [`Self::parse`] under the rules of `admission`: a stored object's
    /// `matchExpressions` values are not checked (see [`Admission::Stored`]).
    pub fn parse_as(api: &LabelSelector, admission: Admission) -> Result<Self, Vec<SelectorError>> {
        let mut errors = Vec::new();
        let mut bad = |field: String, message: String| {
            errors.push(SelectorError { field, message });
        };
        let mut requirements = Vec::new();
        // ValidateLabels: every key a qualified name, every value a label value.
        for (k, v) in api.match_labels.iter().flatten() {
            let field = format!("matchLabels.{k}");
            if let Err(e) = names::qualified_name(k) {
                bad(field.clone(), format!("invalid label key {k:?}: {e}"));
            }
            if let Err(e) = names::label_value(v) {
                bad(field, format!("invalid label value {v:?}: {e}"));
            }
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        // ValidateLabelSelectorRequirement.
        for (i, expr) in api.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            let values = expr.values.as_deref().unwrap_or_default();
            let key = expr.key.clone();
            let set: BTreeSet<String> = values.iter().cloned().collect();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    bad(
                        format!("{field}.values"),
                        format!(
                            "required when operator is {} (at least one value)",
                            expr.operator
                        ),
                    );
                    None
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    bad(
                        format!("{field}.values"),
                        format!("may not be specified when operator is {}", expr.operator),
                    );
                    None
                }
                "In" => Some(Requirement::In(key, set)),
                "NotIn" => Some(Requirement::NotIn(key, set)),
                "Exists" => Some(Requirement::Exists(key)),
                "DoesNotExist" => Some(Requirement::DoesNotExist(key)),
                other => {
                    bad(
                        format!("{field}.operator"),
                        format!(
                            "unknown operator {other:?} (valid: In, NotIn, Exists, DoesNotExist)"
                        ),
                    );
                    None
                }
            };
            if let Err(e) = names::qualified_name(&expr.key) {
                bad(
                    format!("{field}.key"),
                    format!("invalid label key {:?}: {e}", expr.key),
                );
            }
            if admission == Admission::Create {
                for (j, v) in values.iter().enumerate() {
                    if let Err(e) = names::label_value(v) {
                        bad(
                            format!("{field}.values[{j}]"),
                            format!("invalid label value {v:?}: {e}"),
                        );
                    }
                }
            }
            requirements.extend(requirement);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        requirements.sort();
        requirements.dedup();
        Ok(Self { requirements })
    }

    /// The selector of these requirements (all must hold), in canonical order.
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort();
        requirements.dedup();
        Self { requirements }
    }

    /// The requirements, in a canonical order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: op.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators() {
        let s = Selector::parse(&LabelSelector {
            match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
            match_expressions: Some(vec![
                expr("tier", "In", &["front", "edge"]),
                expr("env", "NotIn", &["prod"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        })
        .unwrap();
        let ok = labels(&[("app", "web"), ("tier", "edge"), ("team", "x")]);
        assert!(s.matches(&ok));
        let mut prod = ok.clone();
        prod.insert("env".into(), "prod".into());
        assert!(!s.matches(&prod));
        let mut legacy = ok.clone();
        legacy.insert("legacy".into(), "".into());
        assert!(!s.matches(&legacy));
        let mut no_team = ok.clone();
        no_team.remove("team");
        assert!(!s.matches(&no_team));
        let mut wrong_tier = ok;
        wrong_tier.insert("tier".into(), "back".into());
        assert!(!s.matches(&wrong_tier));
    }

    #[test]
    fn invalid_operator_and_values_are_rejected() {
        let bad_op = LabelSelector {
            match_expressions: Some(vec![expr("a", "Equals", &["b"])]),
            ..Default::default()
        };
        let err = Selector::parse(&bad_op).unwrap_err();
        assert_eq!(err[0].field, "matchExpressions[0].operator");

        let in_without_values = LabelSelector {
            match_expressions: Some(vec![expr("a", "In", &[])]),
            ..Default::default()
        };
        assert_eq!(
            Selector::parse(&in_without_values).unwrap_err()[0].field,
            "matchExpressions[0].values"
        );

        let exists_with_values = LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &["x"])]),
            ..Default::default()
        };
        assert!(Selector::parse(&exists_with_values).is_err());

        let bad_key = LabelSelector {
            match_labels: Some([("-bad".to_owned(), "x".to_owned())].into()),
            ..Default::default()
        };
        assert_eq!(
            Selector::parse(&bad_key).unwrap_err()[0].field,
            "matchLabels.-bad"
        );
    }
}
