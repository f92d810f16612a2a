//! A method's direction is part of its type: the device cannot call a
//! server -> device method, nor answer a device -> server one. Each case
//! in tests/ui fails to compile with the error in its `.stderr`.

#[test]
fn calls_the_wrong_way_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
