//! The operators of compiled filters: traits that give each field type
//! its meaning of `eq`, `contains`, `startswith`... and [`ops`], which the
//! derive calls.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

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
