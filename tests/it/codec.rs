//! JSON and form bodies carry the types of Thorn's manual the way Thorn does.

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use thorn::ContentType;
use uuid::Uuid;

#[derive(Serialize)]
struct Payload {
    at: chrono::DateTime<Utc>,
    day: NaiveDate,
    time: NaiveTime,
    price: Decimal,
    id: Uuid,
}

#[test]
fn json_keeps_microseconds_decimal_scale_and_uuid_strings() {
    let at = Utc.with_ymd_and_hms(2016, 1, 13, 23, 12, 52).unwrap()
        + chrono::Duration::microseconds(205_785);
    let payload = Payload {
        at,
        day: NaiveDate::from_ymd_opt(2016, 1, 13).unwrap(),
        time: NaiveTime::from_hms_micro_opt(23, 12, 52, 5).unwrap(),
        price: Decimal::new(1250, 2),
        id: Uuid::parse_str("c91fe938-55fb-4190-a5ed-bd92f5ea8339").unwrap(),
    };
    let value = serde_json::to_value(&payload).unwrap();
    let body = String::from_utf8(ContentType::Json.encode(&value)).unwrap();
    assert_eq!(
        body,
        r#"{"at":"2016-01-13T23:12:52.205785Z","day":"2016-01-13","time":"23:12:52.000005","price":"12.50","id":"c91fe938-55fb-4190-a5ed-bd92f5ea8339"}"#
    );
}

#[test]
fn form_bodies_are_urlencoded_fields() {
    let value = serde_json::json!({"event": "order.paid", "ref": null, "sender": 3,
                                   "data": {"price": Decimal::new(1250, 2)}});
    let body = String::from_utf8(ContentType::FormUrlEncoded.encode(&value)).unwrap();
    assert_eq!(
        body,
        "event=order.paid&ref=&sender=3&data=%7B%22price%22%3A%2212.50%22%7D"
    );
}
