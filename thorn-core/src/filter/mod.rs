//! Filters: which rows make a model event fire.
//!
//! Two forms with the same operators and the same meaning:
//!
//! - **Compiled**, written in `#[webhook_model(... filter = state.now_eq("PUBLISHED") & !title.startswith("Draft"))]`.
//!   The derive turns it into calls to [`ops`], type-checked against the
//!   field types at compile time.
//! - **Runtime** [`Q`] values, for events built by hand, evaluated over the
//!   [`FieldValue`]s a model exposes through [`WebhookFields`].
//!
//! Operators: `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `is`, `is_not`, `in_`
//! (`in` is a Rust keyword), `not_in`, `contains`, `startswith`,
//! `endswith`, and a `now_` form of each: true when the operator holds for
//! the new row and did not hold for the old one (with no old row, on
//! create, the old side counts as not holding). `eq(true)`/`ne(false)` test
//! truthiness (non-zero, non-empty, `Some` of a truthy value, `true`),
//! `eq(false)`/`ne(true)` falsiness; `is(None)`/`is_not(None)` test
//! `Option` fields for `None`.
//!
//! ```
//! use thorn_core::filter::{FieldValue, Q};
//!
//! let q = Q::field("state").now_eq("PUBLISHED") & !Q::field("title").startswith("Draft");
//! let new = |f: &str| match f { "state" => Some(FieldValue::from("PUBLISHED")), "title" => Some(FieldValue::from("Hello")), _ => None };
//! let old = |f: &str| match f { "state" => Some(FieldValue::from("DRAFT")), "title" => Some(FieldValue::from("Hello")), _ => None };
//! assert!(q.eval_with(&new, Some(&old)).unwrap());
//! assert!(!q.eval_with(&new, Some(&new)).unwrap(), "already published: no transition");
//! ```

use std::fmt;
use std::ops::{BitAnd, BitOr, Not};

mod typed;
mod value;

#[doc(hidden)]
pub use typed::{Compare, Contains, OptionLike, TextLike, Truthy, ops};
pub use value::{FieldValue, Op, ToFieldValue};

/// Field values of a model by name; implemented by `#[derive(WebhookModel)]`.
pub trait WebhookFields {
    /// The value of field `name`, or `None` when there is no such field.
    fn field_value(&self, name: &str) -> Option<FieldValue>;
}

/// Reads a field of one row by name.
pub type FieldLookup<'a> = dyn Fn(&str) -> Option<FieldValue> + 'a;

/// A runtime filter evaluated against a field it does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter names field `{0}`, which the model does not have")]
pub struct UnknownField(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf {
        field: String,
        op: Op,
        value: FieldValue,
        now: bool,
    },
    And(Vec<Q>),
    Or(Vec<Q>),
    Not(Box<Q>),
}

/// A runtime filter: operators combined with `&`, `|` and `!`.
#[derive(Debug, Clone, PartialEq)]
pub struct Q(Node);

/// A field of a runtime filter, from [`Q::field`].
#[derive(Debug, Clone)]
pub struct QField(String);

macro_rules! q_ops {
    ($($name:ident, $now:ident => $op:ident;)*) => {
        impl QField {$(
            #[doc = concat!("`", stringify!($name), "` on this field.")]
            pub fn $name(&self, value: impl Into<FieldValue>) -> Q {
                Q::leaf(&self.0, Op::$op, value.into(), false)
            }
            #[doc = concat!("`", stringify!($now), "`: `", stringify!($name), "` holds now and did not before.")]
            pub fn $now(&self, value: impl Into<FieldValue>) -> Q {
                Q::leaf(&self.0, Op::$op, value.into(), true)
            }
        )*}
    };
}
q_ops! {
    eq, now_eq => Eq;
    ne, now_ne => Ne;
    gt, now_gt => Gt;
    gte, now_gte => Gte;
    lt, now_lt => Lt;
    lte, now_lte => Lte;
    is, now_is => Is;
    is_not, now_is_not => IsNot;
    in_, now_in => In;
    not_in, now_not_in => NotIn;
    contains, now_contains => Contains;
    startswith, now_startswith => StartsWith;
    endswith, now_endswith => EndsWith;
}

impl Q {
    /// Starts a condition on field `name`.
    pub fn field(name: impl Into<String>) -> QField {
        QField(name.into())
    }

    fn leaf(field: &str, op: Op, value: FieldValue, now: bool) -> Q {
        Q(Node::Leaf {
            field: field.to_owned(),
            op,
            value,
            now,
        })
    }

    /// True when some condition is a `now_` transition (so the old row is
    /// needed).
    pub fn uses_transitions(&self) -> bool {
        match &self.0 {
            Node::Leaf { now, .. } => *now,
            Node::And(v) | Node::Or(v) => v.iter().any(Q::uses_transitions),
            Node::Not(q) => q.uses_transitions(),
        }
    }

    /// Evaluates against a model's new row and, on change, its old row.
    pub fn eval<M: WebhookFields + ?Sized>(
        &self,
        new: &M,
        old: Option<&M>,
    ) -> Result<bool, UnknownField> {
        let new_f = |f: &str| new.field_value(f);
        match old {
            Some(old) => self.eval_with(&new_f, Some(&|f: &str| old.field_value(f))),
            None => self.eval_with(&new_f, None),
        }
    }

    /// Evaluates with field lookups given as functions.
    pub fn eval_with(
        &self,
        new: &FieldLookup<'_>,
        old: Option<&FieldLookup<'_>>,
    ) -> Result<bool, UnknownField> {
        Ok(match &self.0 {
            Node::Leaf {
                field,
                op,
                value,
                now,
            } => {
                let current = new(field).ok_or_else(|| UnknownField(field.clone()))?;
                let holds = op.apply(&current, value);
                if *now {
                    let before = match old {
                        Some(old) => {
                            let v = old(field).ok_or_else(|| UnknownField(field.clone()))?;
                            op.apply(&v, value)
                        }
                        None => false,
                    };
                    holds && !before
                } else {
                    holds
                }
            }
            Node::And(qs) => {
                for q in qs {
                    if !q.eval_with(new, old)? {
                        return Ok(false);
                    }
                }
                true
            }
            Node::Or(qs) => {
                for q in qs {
                    if q.eval_with(new, old)? {
                        return Ok(true);
                    }
                }
                false
            }
            Node::Not(q) => !q.eval_with(new, old)?,
        })
    }
}

impl BitAnd for Q {
    type Output = Q;
    fn bitand(self, rhs: Q) -> Q {
        match self.0 {
            Node::And(mut v) => {
                v.push(rhs);
                Q(Node::And(v))
            }
            node => Q(Node::And(vec![Q(node), rhs])),
        }
    }
}

impl BitOr for Q {
    type Output = Q;
    fn bitor(self, rhs: Q) -> Q {
        match self.0 {
            Node::Or(mut v) => {
                v.push(rhs);
                Q(Node::Or(v))
            }
            node => Q(Node::Or(vec![Q(node), rhs])),
        }
    }
}

impl Not for Q {
    type Output = Q;
    fn not(self) -> Q {
        Q(Node::Not(Box::new(self)))
    }
}

impl fmt::Display for Q {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Node::Leaf {
                field,
                op,
                value,
                now,
            } => {
                write!(
                    f,
                    "{field}.{}{}({value:?})",
                    if *now { "now_" } else { "" },
                    op.name()
                )
            }
            Node::And(qs) | Node::Or(qs) => {
                let sep = if matches!(self.0, Node::And(_)) {
                    " & "
                } else {
                    " | "
                };
                f.write_str("(")?;
                for (i, q) in qs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    write!(f, "{q}")?;
                }
                f.write_str(")")
            }
            Node::Not(q) => write!(f, "!{q}"),
        }
    }
}

/// Used by derived code to read any field: types with [`ToFieldValue`]
/// give their value, others [`FieldValue::Unsupported`] (autoref
/// specialization, resolved at compile time).
#[doc(hidden)]
pub mod probe {
    use super::{FieldValue, ToFieldValue};

    pub struct Probe<'a, T>(pub &'a T);

    pub trait ViaValue {
        fn probe_value(&self) -> FieldValue;
    }
    impl<T: ToFieldValue> ViaValue for Probe<'_, T> {
        fn probe_value(&self) -> FieldValue {
            self.0.to_field_value()
        }
    }

    pub trait ViaFallback {
        fn probe_value(&self) -> FieldValue;
    }
    impl<T> ViaFallback for &Probe<'_, T> {
        fn probe_value(&self) -> FieldValue {
            FieldValue::Unsupported
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: Vec<(&'static str, FieldValue)>) -> impl Fn(&str) -> Option<FieldValue> {
        move |f| pairs.iter().find(|(n, _)| *n == f).map(|(_, v)| v.clone())
    }

    #[test]
    fn unknown_fields_are_errors_not_panics() {
        let q = Q::field("nope").eq(1);
        let r = row(vec![("a", FieldValue::Int(1))]);
        assert_eq!(q.eval_with(&r, None), Err(UnknownField("nope".into())));
    }

    #[test]
    fn combinators_and_display() {
        let q = (Q::field("a").eq(1) | Q::field("b").gt(2)) & !Q::field("c").is(FieldValue::Null);
        let r = row(vec![
            ("a", 1.into()),
            ("b", 0.into()),
            ("c", FieldValue::Null),
        ]);
        assert!(!q.eval_with(&r, None).unwrap());
        let r = row(vec![("a", 1.into()), ("b", 0.into()), ("c", 5.into())]);
        assert!(q.eval_with(&r, None).unwrap());
        assert!(q.to_string().contains("a.eq(Int(1))"));
        assert!(!q.uses_transitions());
        assert!(Q::field("a").now_in([1, 2]).uses_transitions());
    }
}
