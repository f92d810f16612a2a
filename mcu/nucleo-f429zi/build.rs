//! Linker scripts, as embassy's examples pass them: cortex-m-rt's link.x
//! (with embassy-stm32's memory.x) and defmt's defmt.x.
fn main() {
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
}
