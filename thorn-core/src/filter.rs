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

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::hash::Hash;
use std::ops::{BitAnd, BitOr, Not};

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Traits behind the compiled operators.

/// Python-style truthiness: non-zero, non-empty, `Some` of a truthy value, `true`.
#[diagnostic::on_unimplemented(
    message = "`eq(true)`/`eq(false)` test truthiness, which `{Self}` does not have",
    label = "no truthiness"
)]
pub trait Truthy {
    /// True when the value is truthy.
    fn is_truthy(&self) -> bool;
}

macro_rules! truthy_num {
    ($($t:ty),*) => {$( impl Truthy for $t { fn is_truthy(&self) -> bool { *self != 0 as $t } } )*};
}
truthy_num!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, f32, f64
);

macro_rules! truthy_always {
    ($($t:ty),*) => {$( impl Truthy for $t { fn is_truthy(&self) -> bool { true } } )*};
}
truthy_always!(Uuid, DateTime<Utc>, NaiveDateTime, NaiveDate, NaiveTime);

impl Truthy for bool {
    fn is_truthy(&self) -> bool {
        *self
    }
}
impl Truthy for String {
    fn is_truthy(&self) -> bool {
        !self.is_empty()
    }
}
impl Truthy for str {
    fn is_truthy(&self) -> bool {
        !self.is_empty()
    }
}
impl Truthy for Decimal {
    fn is_truthy(&self) -> bool {
        !self.is_zero()
    }
}
impl<T> Truthy for Vec<T> {
    fn is_truthy(&self) -> bool {
        !self.is_empty()
    }
}
impl<T> Truthy for HashSet<T> {
    fn is_truthy(&self) -> bool {
        !self.is_empty()
    }
}
impl<T> Truthy for BTreeSet<T> {
    fn is_truthy(&self) -> bool {
        !self.is_empty()
    }
}
impl<T: Truthy> Truthy for Option<T> {
    fn is_truthy(&self) -> bool {
        self.as_ref().is_some_and(Truthy::is_truthy)
    }
}
impl Truthy for Value {
    fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }
}

/// Ordering between a field and a filter value; `None` when they cannot be
/// compared (a `None` field, a NaN).
#[diagnostic::on_unimplemented(
    message = "a `{Self}` field cannot be compared with a `{Rhs}` value in a filter",
    label = "no comparison between `{Self}` and `{Rhs}`"
)]
pub trait Compare<Rhs: ?Sized> {
    /// The ordering of `self` relative to `rhs`.
    fn compare(&self, rhs: &Rhs) -> Option<Ordering>;
}

impl<T: PartialOrd> Compare<T> for T {
    fn compare(&self, rhs: &T) -> Option<Ordering> {
        self.partial_cmp(rhs)
    }
}
impl Compare<&str> for String {
    fn compare(&self, rhs: &&str) -> Option<Ordering> {
        Some(self.as_str().cmp(rhs))
    }
}
impl<T: PartialOrd> Compare<T> for Option<T> {
    fn compare(&self, rhs: &T) -> Option<Ordering> {
        self.as_ref().and_then(|v| v.partial_cmp(rhs))
    }
}
impl Compare<&str> for Option<String> {
    fn compare(&self, rhs: &&str) -> Option<Ordering> {
        self.as_deref().map(|v| v.cmp(rhs))
    }
}
impl Compare<&str> for Value {
    fn compare(&self, rhs: &&str) -> Option<Ordering> {
        self.as_str().map(|v| v.cmp(rhs))
    }
}

/// Membership for `contains`: substring, element, set member, JSON element
/// or key.
#[diagnostic::on_unimplemented(
    message = "`contains` cannot look for a `{V}` in a `{Self}` field",
    label = "no `contains` between `{Self}` and `{V}`"
)]
pub trait Contains<V: ?Sized> {
    /// True when `self` contains `v`.
    fn contains_value(&self, v: &V) -> bool;
}

impl Contains<&str> for String {
    fn contains_value(&self, v: &&str) -> bool {
        self.contains(*v)
    }
}
impl Contains<char> for String {
    fn contains_value(&self, v: &char) -> bool {
        self.contains(*v)
    }
}
impl Contains<&str> for Option<String> {
    fn contains_value(&self, v: &&str) -> bool {
        self.as_deref().is_some_and(|s| s.contains(*v))
    }
}
impl<T: PartialEq> Contains<T> for Vec<T> {
    fn contains_value(&self, v: &T) -> bool {
        self.contains(v)
    }
}
impl Contains<&str> for Vec<String> {
    fn contains_value(&self, v: &&str) -> bool {
        self.iter().any(|s| s == v)
    }
}
impl<T: Eq + Hash> Contains<T> for HashSet<T> {
    fn contains_value(&self, v: &T) -> bool {
        self.contains(v)
    }
}
impl Contains<&str> for HashSet<String> {
    fn contains_value(&self, v: &&str) -> bool {
        self.contains(*v)
    }
}
impl<T: Ord> Contains<T> for BTreeSet<T> {
    fn contains_value(&self, v: &T) -> bool {
        self.contains(v)
    }
}
impl Contains<&str> for BTreeSet<String> {
    fn contains_value(&self, v: &&str) -> bool {
        self.contains(*v)
    }
}
impl Contains<&str> for Value {
    fn contains_value(&self, v: &&str) -> bool {
        match self {
            Value::String(s) => s.contains(*v),
            Value::Array(a) => a.iter().any(|e| e.as_str() == Some(*v)),
            Value::Object(o) => o.contains_key(*v),
            _ => false,
        }
    }
}
impl Contains<Value> for Value {
    fn contains_value(&self, v: &Value) -> bool {
        match (self, v) {
            (Value::Array(a), v) => a.contains(v),
            (Value::Object(o), Value::String(k)) => o.contains_key(k),
            (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
            _ => false,
        }
    }
}

/// Text for `startswith` / `endswith`.
#[diagnostic::on_unimplemented(
    message = "`startswith` and `endswith` need a text field; `{Self}` is not text",
    label = "not text"
)]
pub trait TextLike {
    /// The text, if there is one (`None` for a `None` field).
    fn as_text(&self) -> Option<&str>;
}
impl TextLike for String {
    fn as_text(&self) -> Option<&str> {
        Some(self)
    }
}
impl TextLike for str {
    fn as_text(&self) -> Option<&str> {
        Some(self)
    }
}
impl TextLike for Option<String> {
    fn as_text(&self) -> Option<&str> {
        self.as_deref()
    }
}
impl TextLike for Value {
    fn as_text(&self) -> Option<&str> {
        self.as_str()
    }
}

/// `Option` fields, for `is(None)` / `is_not(None)`.
#[diagnostic::on_unimplemented(
    message = "`is(None)` and `is_not(None)` need an `Option` field; `{Self}` is never None",
    label = "not an `Option`"
)]
pub trait OptionLike {
    /// True for `None`.
    fn is_none_value(&self) -> bool;
}
impl<T> OptionLike for Option<T> {
    fn is_none_value(&self) -> bool {
        self.is_none()
    }
}
impl OptionLike for Value {
    fn is_none_value(&self) -> bool {
        self.is_null()
    }
}

/// The operators as functions of one row's field, called by derived code.
/// Each `now_` form is `op(new) && !op(old)`, built by the derive.
pub mod ops {
    use super::*;

    /// `eq`.
    pub fn eq<F: Compare<V> + ?Sized, V>(f: &F, v: &V) -> bool {
        f.compare(v) == Some(Ordering::Equal)
    }
    /// `ne`.
    pub fn ne<F: Compare<V> + ?Sized, V>(f: &F, v: &V) -> bool {
        !eq(f, v)
    }
    /// `gt`.
    pub fn gt<F: Compare<V> + ?Sized, V>(f: &F, v: &V) -> bool {
        f.compare(v) == Some(Ordering::Greater)
    }
    /// `gte`.
    pub fn gte<F: Compare<V> + ?Sized, V>(f: &F, v: &V) -> bool {
        matches!(f.compare(v), Some(Ordering::Greater | Ordering::Equal))
    }
    /// `lt`.
    pub fn lt<F: Compare<V> + ?Sized, V>(f: &F, v: &V) -> bool {
        f.compare(v) == Some(Ordering::Less)
    }
    /// `lte`.
    pub fn lte<F: Compare<V> + ?Sized, V>(f: &F, v: &V) -> bool {
        matches!(f.compare(v), Some(Ordering::Less | Ordering::Equal))
    }
    /// `eq(true)`, `ne(false)`.
    pub fn truthy<F: Truthy + ?Sized>(f: &F) -> bool {
        f.is_truthy()
    }
    /// `is(None)`.
    pub fn is_none<F: OptionLike + ?Sized>(f: &F) -> bool {
        f.is_none_value()
    }
    /// `in_`.
    pub fn in_<F: Compare<V> + ?Sized, V>(f: &F, items: &[V]) -> bool {
        items.iter().any(|v| eq(f, v))
    }
    /// `contains`.
    pub fn contains<F: Contains<V> + ?Sized, V>(f: &F, v: &V) -> bool {
        f.contains_value(v)
    }
    /// `startswith`.
    pub fn startswith<F: TextLike + ?Sized>(f: &F, prefix: &str) -> bool {
        f.as_text().is_some_and(|t| t.starts_with(prefix))
    }
    /// `endswith`.
    pub fn endswith<F: TextLike + ?Sized>(f: &F, suffix: &str) -> bool {
        f.as_text().is_some_and(|t| t.ends_with(suffix))
    }
}

// ---------------------------------------------------------------------------
// Runtime values and Q.

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
