//! Mistakes in `#[webhook_model(...)]` are compile errors pointing at the
//! offending tokens (`thorn-derive/tests/ui/*.rs` with the expected `.stderr`).

#[test]
fn attribute_mistakes_are_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
