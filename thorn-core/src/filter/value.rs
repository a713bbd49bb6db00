//! [`FieldValue`]: a model field's value as runtime filters ([`Q`](super::Q))
//! see it, and [`Op`], the operators over those values.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::{Contains, Truthy};

/// A field value as runtime filters see it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldValue {
    /// `None`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer.
    Int(i128),
    /// A float.
    Float(f64),
    /// A decimal.
    Decimal(Decimal),
    /// Text.
    Text(String),
    /// A UUID.
    Uuid(Uuid),
    /// A UTC datetime.
    DateTime(DateTime<Utc>),
    /// A naive datetime.
    NaiveDateTime(NaiveDateTime),
    /// A date.
    Date(NaiveDate),
    /// A time of day.
    Time(NaiveTime),
    /// A list or set.
    List(Vec<FieldValue>),
    /// A JSON value.
    Json(Value),
    /// A field whose type runtime filters cannot read.
    Unsupported,
}

/// Converts a field to a [`FieldValue`]; implemented for the types filters
/// understand.
pub trait ToFieldValue {
    /// The value.
    fn to_field_value(&self) -> FieldValue;
}

macro_rules! fv_int {
    ($($t:ty),*) => {$(
        impl ToFieldValue for $t { fn to_field_value(&self) -> FieldValue { FieldValue::Int(*self as i128) } }
        impl From<$t> for FieldValue { fn from(v: $t) -> Self { FieldValue::Int(v as i128) } }
    )*};
}
fv_int!(i8, i16, i32, i64, u8, u16, u32, u64);

macro_rules! fv_simple {
    ($($t:ty => $variant:ident),*) => {$(
        impl ToFieldValue for $t { fn to_field_value(&self) -> FieldValue { FieldValue::$variant(self.clone()) } }
        impl From<$t> for FieldValue { fn from(v: $t) -> Self { FieldValue::$variant(v) } }
    )*};
}
fv_simple!(bool => Bool, Decimal => Decimal, String => Text, Uuid => Uuid,
    DateTime<Utc> => DateTime, NaiveDateTime => NaiveDateTime, NaiveDate => Date, NaiveTime => Time,
    Value => Json);

impl ToFieldValue for f64 {
    fn to_field_value(&self) -> FieldValue {
        FieldValue::Float(*self)
    }
}
impl From<f64> for FieldValue {
    fn from(v: f64) -> Self {
        FieldValue::Float(v)
    }
}
impl ToFieldValue for f32 {
    fn to_field_value(&self) -> FieldValue {
        FieldValue::Float(f64::from(*self))
    }
}
impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::Text(v.to_owned())
    }
}
impl<T: ToFieldValue> ToFieldValue for Option<T> {
    fn to_field_value(&self) -> FieldValue {
        self.as_ref()
            .map_or(FieldValue::Null, ToFieldValue::to_field_value)
    }
}
impl<T: Into<FieldValue>> From<Option<T>> for FieldValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(FieldValue::Null, Into::into)
    }
}
impl<T: ToFieldValue> ToFieldValue for Vec<T> {
    fn to_field_value(&self) -> FieldValue {
        FieldValue::List(self.iter().map(ToFieldValue::to_field_value).collect())
    }
}
impl<T: ToFieldValue> ToFieldValue for HashSet<T> {
    fn to_field_value(&self) -> FieldValue {
        FieldValue::List(self.iter().map(ToFieldValue::to_field_value).collect())
    }
}
impl<T: ToFieldValue> ToFieldValue for BTreeSet<T> {
    fn to_field_value(&self) -> FieldValue {
        FieldValue::List(self.iter().map(ToFieldValue::to_field_value).collect())
    }
}
impl<T: Into<FieldValue>, const N: usize> From<[T; N]> for FieldValue {
    fn from(v: [T; N]) -> Self {
        FieldValue::List(v.into_iter().map(Into::into).collect())
    }
}
impl<T: Into<FieldValue>> From<Vec<T>> for FieldValue {
    fn from(v: Vec<T>) -> Self {
        FieldValue::List(v.into_iter().map(Into::into).collect())
    }
}

impl FieldValue {
    fn is_truthy(&self) -> bool {
        match self {
            FieldValue::Null | FieldValue::Unsupported => false,
            FieldValue::Bool(b) => *b,
            FieldValue::Int(i) => *i != 0,
            FieldValue::Float(f) => *f != 0.0,
            FieldValue::Decimal(d) => !d.is_zero(),
            FieldValue::Text(s) => !s.is_empty(),
            FieldValue::List(l) => !l.is_empty(),
            FieldValue::Json(v) => v.is_truthy(),
            FieldValue::Uuid(_)
            | FieldValue::DateTime(_)
            | FieldValue::NaiveDateTime(_)
            | FieldValue::Date(_)
            | FieldValue::Time(_) => true,
        }
    }

    fn compare(&self, other: &FieldValue) -> Option<Ordering> {
        use FieldValue::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a.partial_cmp(b),
            (Int(a), Int(b)) => a.partial_cmp(b),
            (Float(a), Float(b)) => a.partial_cmp(b),
            (Int(a), Float(b)) => (*a as f64).partial_cmp(b),
            (Float(a), Int(b)) => a.partial_cmp(&(*b as f64)),
            (Decimal(a), Decimal(b)) => a.partial_cmp(b),
            (Text(a), Text(b)) => a.partial_cmp(b),
            (Uuid(a), Uuid(b)) => a.partial_cmp(b),
            (DateTime(a), DateTime(b)) => a.partial_cmp(b),
            (NaiveDateTime(a), NaiveDateTime(b)) => a.partial_cmp(b),
            (Date(a), Date(b)) => a.partial_cmp(b),
            (Time(a), Time(b)) => a.partial_cmp(b),
            (List(a), List(b)) => {
                if a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.compare(y) == Some(Ordering::Equal))
                {
                    Some(Ordering::Equal)
                } else {
                    None
                }
            }
            (Json(a), Json(b)) => (a == b).then_some(Ordering::Equal),
            (Json(Value::String(a)), Text(b)) => a.as_str().partial_cmp(b.as_str()),
            _ => None,
        }
    }

    fn equals(&self, other: &FieldValue) -> bool {
        self.compare(other) == Some(Ordering::Equal)
    }

    fn contains(&self, needle: &FieldValue) -> bool {
        match (self, needle) {
            (FieldValue::Text(s), FieldValue::Text(sub)) => s.contains(sub.as_str()),
            (FieldValue::List(items), n) => items.iter().any(|i| i.equals(n)),
            (FieldValue::Json(v), FieldValue::Text(s)) => v.contains_value(&s.as_str()),
            (FieldValue::Json(v), FieldValue::Json(n)) => v.contains_value(n),
            _ => false,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            FieldValue::Text(s) => Some(s),
            FieldValue::Json(Value::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// A filter operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Equal (truthiness with a boolean value).
    Eq,
    /// Not equal (falsiness with `true`, truthiness with `false`).
    Ne,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// `None` check with [`FieldValue::Null`], else equality.
    Is,
    /// Negation of `Is`.
    IsNot,
    /// Member of a list.
    In,
    /// Not a member of a list.
    NotIn,
    /// Contains (substring, element, JSON key).
    Contains,
    /// Text prefix.
    StartsWith,
    /// Text suffix.
    EndsWith,
}

impl Op {
    /// The operator's name in filter expressions.
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Is => "is",
            Op::IsNot => "is_not",
            Op::In => "in_",
            Op::NotIn => "not_in",
            Op::Contains => "contains",
            Op::StartsWith => "startswith",
            Op::EndsWith => "endswith",
        }
    }

    /// Applies the operator to one row's value.
    pub fn apply(self, field: &FieldValue, value: &FieldValue) -> bool {
        use std::cmp::Ordering::*;
        match (self, value) {
            (Op::Eq, FieldValue::Bool(b)) => field.is_truthy() == *b,
            (Op::Ne, FieldValue::Bool(b)) => field.is_truthy() != *b,
            (Op::Is, FieldValue::Null) => matches!(field, FieldValue::Null),
            (Op::IsNot, FieldValue::Null) => !matches!(field, FieldValue::Null),
            (Op::Eq | Op::Is, v) => field.equals(v),
            (Op::Ne | Op::IsNot, v) => !field.equals(v),
            (Op::Gt, v) => field.compare(v) == Some(Greater),
            (Op::Gte, v) => matches!(field.compare(v), Some(Greater | Equal)),
            (Op::Lt, v) => field.compare(v) == Some(Less),
            (Op::Lte, v) => matches!(field.compare(v), Some(Less | Equal)),
            (Op::In, FieldValue::List(items)) => items.iter().any(|i| field.equals(i)),
            (Op::NotIn, FieldValue::List(items)) => !items.iter().any(|i| field.equals(i)),
            (Op::In, _) => false,
            (Op::NotIn, _) => true,
            (Op::Contains, v) => field.contains(v),
            (Op::StartsWith, v) => v
                .text()
                .is_some_and(|p| field.text().is_some_and(|t| t.starts_with(p))),
            (Op::EndsWith, v) => v
                .text()
                .is_some_and(|p| field.text().is_some_and(|t| t.ends_with(p))),
        }
    }
}
