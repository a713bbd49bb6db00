//! What the typed SeaORM API refuses at compile time, with the message a
//! user sees (`tests/ui/*.rs` with the expected `.stderr`).

#[test]
fn misuses_are_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
