//! Filters: the compiled form from the attribute block and the runtime `Q`
//! agree, on every operator and its `now_` form, over every supported type.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use thorn::{DispatchOn, FieldValue, Q, WebhookFields, WebhookModel};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

#[derive(Debug, Clone, WebhookModel)]
#[webhook_model(
    on_s_eq(name = "x", dispatches_on = change, filter = s.eq("A")),
    on_s_now_eq(name = "x", dispatches_on = change, filter = s.now_eq("A")),
    on_s_ne(name = "x", dispatches_on = change, filter = s.ne("A")),
    on_s_now_ne(name = "x", dispatches_on = change, filter = s.now_ne("A")),
    on_s_gt(name = "x", dispatches_on = change, filter = s.gt("B")),
    on_s_now_gte(name = "x", dispatches_on = change, filter = s.now_gte("B")),
    on_s_lt(name = "x", dispatches_on = change, filter = s.lt("B")),
    on_s_now_lte(name = "x", dispatches_on = change, filter = s.now_lte("B")),
    on_s_in(name = "x", dispatches_on = change, filter = s.in_(["A", "Draft one"])),
    on_s_now_not_in(name = "x", dispatches_on = change, filter = s.now_not_in(["A"])),
    on_s_contains(name = "x", dispatches_on = change, filter = s.contains("raf")),
    on_s_now_startswith(name = "x", dispatches_on = change, filter = s.now_startswith("Draft")),
    on_s_endswith(name = "x", dispatches_on = change, filter = s.endswith("one")),
    on_s_truthy(name = "x", dispatches_on = change, filter = s.eq(true)),
    on_s_now_falsy(name = "x", dispatches_on = change, filter = s.now_eq(false)),
    on_s_is(name = "x", dispatches_on = change, filter = s.is("A")),
    on_s_now_is_not(name = "x", dispatches_on = change, filter = s.now_is_not("A")),
    on_i_eq(name = "x", dispatches_on = change, filter = i.eq(1)),
    on_i_now_gt(name = "x", dispatches_on = change, filter = i.now_gt(0)),
    on_i_gte(name = "x", dispatches_on = change, filter = i.gte(1)),
    on_i_now_lt(name = "x", dispatches_on = change, filter = i.now_lt(0)),
    on_i_lte(name = "x", dispatches_on = change, filter = i.lte(-1)),
    on_i_in(name = "x", dispatches_on = change, filter = i.in_([1, 2])),
    on_i_now_in(name = "x", dispatches_on = change, filter = i.now_in([1, 2])),
    on_i_not_in(name = "x", dispatches_on = change, filter = i.not_in([0])),
    on_i_falsy(name = "x", dispatches_on = change, filter = i.eq(false)),
    on_i_now_truthy(name = "x", dispatches_on = change, filter = i.now_ne(false)),
    on_f_gt(name = "x", dispatches_on = change, filter = f.gt(0.5)),
    on_f_now_lte(name = "x", dispatches_on = change, filter = f.now_lte(0.0)),
    on_f_eq(name = "x", dispatches_on = change, filter = f.eq(1.5)),
    on_b_true(name = "x", dispatches_on = change, filter = b.eq(true)),
    on_b_now_true(name = "x", dispatches_on = change, filter = b.now_eq(true)),
    on_b_ne_true(name = "x", dispatches_on = change, filter = b.ne(true)),
    on_b_now_false(name = "x", dispatches_on = change, filter = b.now_eq(false)),
    on_o_none(name = "x", dispatches_on = change, filter = o.is(None)),
    on_o_now_some(name = "x", dispatches_on = change, filter = o.now_is_not(None)),
    on_o_eq(name = "x", dispatches_on = change, filter = o.eq(1)),
    on_o_now_gt(name = "x", dispatches_on = change, filter = o.now_gt(0)),
    on_o_truthy(name = "x", dispatches_on = change, filter = o.eq(true)),
    on_d_gt(name = "x", dispatches_on = change, filter = d.gt(Decimal::TEN)),
    on_d_now_eq(name = "x", dispatches_on = change, filter = d.now_eq(Decimal::TEN)),
    on_d_falsy(name = "x", dispatches_on = change, filter = d.eq(false)),
    on_t_gt(name = "x", dispatches_on = change, filter = t.gt(t0())),
    on_t_now_lte(name = "x", dispatches_on = change, filter = t.now_lte(t0())),
    on_v_contains(name = "x", dispatches_on = change, filter = v.contains("x")),
    on_v_now_contains(name = "x", dispatches_on = change, filter = v.now_contains("x")),
    on_v_truthy(name = "x", dispatches_on = change, filter = v.eq(true)),
    on_j_contains(name = "x", dispatches_on = change, filter = j.contains("k")),
    on_j_now_contains(name = "x", dispatches_on = change, filter = j.now_contains("k")),
    on_combined(name = "x", dispatches_on = change,
                filter = (s.now_eq("A") | i.gt(1)) & !b.eq(true)),
    on_several(name = "x", dispatches_on = change, filter = s.eq("A"), filter = i.eq(1)),
)]
struct Row {
    s: String,
    i: i64,
    f: f64,
    b: bool,
    o: Option<i32>,
    d: Decimal,
    t: DateTime<Utc>,
    v: Vec<String>,
    j: Value,
}

/// The runtime twin of every compiled filter above.
fn runtime_twins() -> Vec<(&'static str, Q)> {
    let f = Q::field;
    vec![
        ("on_s_eq", f("s").eq("A")),
        ("on_s_now_eq", f("s").now_eq("A")),
        ("on_s_ne", f("s").ne("A")),
        ("on_s_now_ne", f("s").now_ne("A")),
        ("on_s_gt", f("s").gt("B")),
        ("on_s_now_gte", f("s").now_gte("B")),
        ("on_s_lt", f("s").lt("B")),
        ("on_s_now_lte", f("s").now_lte("B")),
        ("on_s_in", f("s").in_(["A", "Draft one"])),
        ("on_s_now_not_in", f("s").now_not_in(["A"])),
        ("on_s_contains", f("s").contains("raf")),
        ("on_s_now_startswith", f("s").now_startswith("Draft")),
        ("on_s_endswith", f("s").endswith("one")),
        ("on_s_truthy", f("s").eq(true)),
        ("on_s_now_falsy", f("s").now_eq(false)),
        ("on_s_is", f("s").is("A")),
        ("on_s_now_is_not", f("s").now_is_not("A")),
        ("on_i_eq", f("i").eq(1)),
        ("on_i_now_gt", f("i").now_gt(0)),
        ("on_i_gte", f("i").gte(1)),
        ("on_i_now_lt", f("i").now_lt(0)),
        ("on_i_lte", f("i").lte(-1)),
        ("on_i_in", f("i").in_([1, 2])),
        ("on_i_now_in", f("i").now_in([1, 2])),
        ("on_i_not_in", f("i").not_in([0])),
        ("on_i_falsy", f("i").eq(false)),
        ("on_i_now_truthy", f("i").now_ne(false)),
        ("on_f_gt", f("f").gt(0.5)),
        ("on_f_now_lte", f("f").now_lte(0.0)),
        ("on_f_eq", f("f").eq(1.5)),
        ("on_b_true", f("b").eq(true)),
        ("on_b_now_true", f("b").now_eq(true)),
        ("on_b_ne_true", f("b").ne(true)),
        ("on_b_now_false", f("b").now_eq(false)),
        ("on_o_none", f("o").is(FieldValue::Null)),
        ("on_o_now_some", f("o").now_is_not(FieldValue::Null)),
        ("on_o_eq", f("o").eq(1)),
        ("on_o_now_gt", f("o").now_gt(0)),
        ("on_o_truthy", f("o").eq(true)),
        ("on_d_gt", f("d").gt(Decimal::TEN)),
        ("on_d_now_eq", f("d").now_eq(Decimal::TEN)),
        ("on_d_falsy", f("d").eq(false)),
        ("on_t_gt", f("t").gt(t0())),
        ("on_t_now_lte", f("t").now_lte(t0())),
        ("on_v_contains", f("v").contains("x")),
        ("on_v_now_contains", f("v").now_contains("x")),
        ("on_v_truthy", f("v").eq(true)),
        ("on_j_contains", f("j").contains("k")),
        ("on_j_now_contains", f("j").now_contains("k")),
        (
            "on_combined",
            (f("s").now_eq("A") | f("i").gt(1)) & !f("b").eq(true),
        ),
        ("on_several", f("s").eq("A") & f("i").eq(1)),
    ]
}

fn row() -> Row {
    Row {
        s: "A".into(),
        i: 1,
        f: 1.5,
        b: true,
        o: None,
        d: Decimal::TEN,
        t: t0(),
        v: vec!["x".into()],
        j: json!({"k": 1}),
    }
}

fn fires(key: &str, new: &Row, old: Option<&Row>) -> bool {
    Row::webhooks()
        .event(key)
        .unwrap_or_else(|| panic!("no event {key}"))
        .matches(new, old)
}

#[test]
fn every_compiled_filter_has_a_runtime_twin() {
    let keys: Vec<&str> = Row::webhooks().events().iter().map(|e| e.key()).collect();
    let twins: Vec<&str> = runtime_twins().iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, twins);
}

#[test]
fn operators_on_examples() {
    let base = row();
    let with = |f: &dyn Fn(&mut Row)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    // String
    assert!(fires("on_s_eq", &base, None));
    assert!(
        fires("on_s_now_eq", &base, None),
        "create: no old row, old side does not hold"
    );
    assert!(
        !fires("on_s_now_eq", &base, Some(&base)),
        "already A: no transition"
    );
    let draft = with(&|r| r.s = "Draft one".into());
    assert!(fires("on_s_now_eq", &base, Some(&draft)));
    assert!(
        fires("on_s_now_ne", &draft, Some(&base)),
        "now_ne: was A, is not any more"
    );
    assert!(
        fires("on_s_now_ne", &draft, None),
        "create: the old side counts as not holding"
    );
    assert!(
        !fires("on_s_now_ne", &draft, Some(&draft)),
        "was not A before either"
    );
    assert!(fires("on_s_in", &draft, None) && fires("on_s_contains", &draft, None));
    assert!(fires("on_s_now_startswith", &draft, Some(&base)));
    assert!(fires("on_s_endswith", &draft, None));
    let empty = with(&|r| r.s.clear());
    assert!(fires("on_s_truthy", &base, None) && !fires("on_s_truthy", &empty, None));
    assert!(fires("on_s_now_falsy", &empty, Some(&base)));
    assert!(fires("on_s_lt", &base, None) && !fires("on_s_gt", &base, None));
    // Integer
    let zero = with(&|r| r.i = 0);
    assert!(fires("on_i_now_gt", &base, Some(&zero)) && !fires("on_i_now_gt", &base, Some(&base)));
    assert!(fires("on_i_falsy", &zero, None) && !fires("on_i_falsy", &base, None));
    assert!(fires("on_i_now_in", &base, Some(&zero)) && !fires("on_i_not_in", &zero, None));
    // Float, bool
    assert!(fires("on_f_gt", &base, None) && fires("on_f_eq", &base, None));
    let off = with(&|r| r.b = false);
    assert!(
        fires("on_b_now_true", &base, Some(&off)) && !fires("on_b_now_true", &base, Some(&base))
    );
    assert!(fires("on_b_ne_true", &off, None) && fires("on_b_now_false", &off, Some(&base)));
    // Option
    let some = with(&|r| r.o = Some(1));
    assert!(fires("on_o_none", &base, None) && !fires("on_o_none", &some, None));
    assert!(fires("on_o_now_some", &some, Some(&base)) && fires("on_o_eq", &some, None));
    assert!(
        fires("on_o_now_gt", &some, Some(&base)),
        "None > 0 does not hold: a transition"
    );
    let some_zero = with(&|r| r.o = Some(0));
    assert!(!fires("on_o_truthy", &some_zero, None) && fires("on_o_truthy", &some, None));
    // Decimal, datetime
    let eleven = with(&|r| r.d = Decimal::new(11, 0));
    assert!(fires("on_d_gt", &eleven, None) && fires("on_d_now_eq", &base, Some(&eleven)));
    assert!(fires("on_d_falsy", &with(&|r| r.d = Decimal::ZERO), None));
    let later = with(&|r| r.t = t0() + chrono::Duration::seconds(1));
    assert!(fires("on_t_gt", &later, None) && fires("on_t_now_lte", &base, Some(&later)));
    // Vec, JSON
    let none = with(&|r| r.v.clear());
    assert!(fires("on_v_now_contains", &base, Some(&none)) && !fires("on_v_truthy", &none, None));
    let other = with(&|r| r.j = json!(["k"]));
    assert!(fires("on_j_contains", &other, None), "JSON array element");
    assert!(fires("on_j_contains", &base, None), "JSON object key");
    assert!(!fires("on_j_now_contains", &other, Some(&base)));
    // Combinators and several filters (AND).
    assert!(!fires("on_combined", &base, None), "!b.eq(true) fails");
    assert!(fires("on_combined", &off, None));
    assert!(fires("on_several", &base, None) && !fires("on_several", &zero, None));
}

#[test]
fn derive_exposes_field_values_and_transition_needs() {
    let r = row();
    assert_eq!(r.field_value("s"), Some(FieldValue::Text("A".into())));
    assert_eq!(r.field_value("o"), Some(FieldValue::Null));
    assert_eq!(r.field_value("nope"), None);
    assert!(Row::webhooks().needs_old_row(DispatchOn::Change));
    assert!(!Row::webhooks().needs_old_row(DispatchOn::Create));
    assert!(
        Row::webhooks()
            .event("on_s_now_eq")
            .unwrap()
            .uses_transitions()
    );
    assert!(!Row::webhooks().event("on_s_eq").unwrap().uses_transitions());
}

fn arb_row() -> impl Strategy<Value = Row> {
    (
        prop::sample::select(vec!["", "A", "B", "C", "Draft one", "Draft"]),
        -2i64..3,
        prop::sample::select(vec![-1.0, 0.0, 0.5, 1.5, 2.0]),
        any::<bool>(),
        prop::option::of(-1i32..3),
        (0i64..13).prop_map(|n| Decimal::new(n, 0)),
        (-2i64..3).prop_map(|s| t0() + chrono::Duration::seconds(s)),
        prop::collection::vec(prop::sample::select(vec!["x", "y"]), 0..3),
        prop::sample::select(vec![
            json!(null),
            json!({"k": 1}),
            json!(["k"]),
            json!("kk"),
            json!([]),
        ]),
    )
        .prop_map(|(s, i, f, b, o, d, t, v, j)| Row {
            s: s.into(),
            i,
            f,
            b,
            o,
            d,
            t,
            v: v.into_iter().map(String::from).collect(),
            j,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compiled_filters_and_runtime_q_agree(new in arb_row(), old in prop::option::of(arb_row())) {
        for (key, q) in runtime_twins() {
            let compiled = fires(key, &new, old.as_ref());
            let runtime = q.eval(&new, old.as_ref()).unwrap();
            prop_assert_eq!(compiled, runtime, "{} on new={:?} old={:?}", key, new, old);
        }
    }
}
