//! `--fail-on` rules: `NAME OP NUMBER` (`drift.psi>0.2`, `drift.inputs.question.embedding.p_value<0.01`,
//! `ops.error_rate>=0.05`, `quality.accuracy.delta<-0.1`). A rule holds when any measure it names, in
//! any window, satisfies it.

use serde::Serialize;

use super::Measure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }

    /// Whether `a` is further into the failing side than `b` (to report the worst measure).
    fn worse(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt | Op::Le => a < b,
            _ => a > b,
        }
    }
}

/// A parsed `--fail-on` rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub text: String,
    pub name: String,
    pub op: Op,
    pub threshold: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(
        "--fail-on {text}: write NAME OP NUMBER, e.g. 'drift.psi>0.2' or 'ops.error_rate>=0.05' (OP: > >= < <= == !=)"
    )]
    Syntax { text: String },
    #[error(
        "--fail-on {text}: this monitor measured nothing named `{name}` (it measured: {known})"
    )]
    Unmeasured {
        text: String,
        name: String,
        known: String,
    },
}

impl std::str::FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Rule, RuleError> {
        let syntax = || RuleError::Syntax {
            text: text.to_owned(),
        };
        let at = text.find(['<', '>', '=', '!']).ok_or_else(syntax)?;
        let (name, rest) = text.split_at(at);
        let (op, number) = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .into_iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|n| (op, n)))
        .ok_or_else(syntax)?;
        let name = name.trim();
        let threshold: f64 = number.trim().parse().map_err(|_| syntax())?;
        if name.is_empty() || !threshold.is_finite() {
            return Err(syntax());
        }
        Ok(Rule {
            text: text.to_owned(),
            name: name.to_owned(),
            op,
            threshold,
        })
    }
}

/// The outcome of one rule.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub rule: String,
    pub failed: bool,
    /// The measure furthest toward failing, and where it was.
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub window: String,
    /// How many measures the rule named, and how many of them satisfied it.
    pub measures: usize,
    pub holding: usize,
}

/// Checks every rule against the measures.
pub fn evaluate(rules: &[Rule], measures: &[Measure]) -> Result<Vec<Check>, RuleError> {
    let mut checks = Vec::new();
    for rule in rules {
        let named: Vec<&Measure> = measures
            .iter()
            .filter(|m| m.name == rule.name || m.qualified().as_deref() == Some(rule.name.as_str()))
            .collect();
        let Some(worst) = named.iter().copied().reduce(|a, b| {
            if rule.op.worse(b.value, a.value) {
                b
            } else {
                a
            }
        }) else {
            let mut known: Vec<&str> = measures.iter().map(|m| m.name.as_str()).collect();
            known.sort_unstable();
            known.dedup();
            return Err(RuleError::Unmeasured {
                text: rule.text.clone(),
                name: rule.name.clone(),
                known: known.join(", "),
            });
        };
        let holding = named
            .iter()
            .filter(|m| rule.op.holds(m.value, rule.threshold))
            .count();
        checks.push(Check {
            rule: rule.text.clone(),
            failed: holding > 0,
            value: worst.value,
            field: worst.field.clone(),
            window: worst.window.clone(),
            measures: named.len(),
            holding,
        });
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, field: Option<&str>, window: &str, value: f64) -> Measure {
        Measure {
            name: name.into(),
            field: field.map(Into::into),
            window: window.into(),
            value,
        }
    }

    #[test]
    fn rules_parse() {
        let r: Rule = "drift.psi>0.2".parse().unwrap();
        assert_eq!(
            (r.name.as_str(), r.op, r.threshold),
            ("drift.psi", Op::Gt, 0.2)
        );
        let r: Rule = " quality.accuracy.delta <= -0.1 ".parse().unwrap();
        assert_eq!(
            (r.name.as_str(), r.op, r.threshold),
            ("quality.accuracy.delta", Op::Le, -0.1)
        );
        for bad in [
            "drift.psi",
            "drift.psi>",
            ">0.2",
            "drift.psi=>1",
            "x>nan",
            "x>1e999",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rule_holds_when_any_measure_does_and_reports_the_worst() {
        let ms = vec![
            m("drift.psi", Some("inputs.q"), "all", 0.05),
            m("drift.psi", Some("inputs.q"), "w1", 0.31),
            m("drift.psi", Some("outputs.a"), "all", 0.12),
            m("ops.error_rate", None, "all", 0.0),
        ];
        let rules: Vec<Rule> = [
            "drift.psi>0.2",
            "drift.outputs.a.psi>0.2",
            "ops.error_rate<0.5",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        let c = evaluate(&rules, &ms).unwrap();
        assert!(c[0].failed);
        assert_eq!(
            (c[0].value, c[0].window.as_str(), c[0].holding),
            (0.31, "w1", 1)
        );
        assert!(!c[1].failed);
        assert_eq!(c[1].measures, 1);
        assert!(c[2].failed);
        let unknown = evaluate(&["quality.x.delta<0".parse().unwrap()], &ms).unwrap_err();
        assert!(
            unknown.to_string().contains("drift.psi, ops.error_rate"),
            "{unknown}"
        );
    }
}
