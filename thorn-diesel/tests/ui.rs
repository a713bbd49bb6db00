//! What the typed Diesel API refuses at compile time, with the message a
//! user sees (`tests/ui/*.rs` with the expected `.stderr`; `tests/ui-async`
//! for diesel-async).

#[test]
fn misuses_are_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    #[cfg(feature = "async-postgres")]
    t.compile_fail("tests/ui-async/*.rs");
}
