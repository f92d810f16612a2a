//! Linker scripts: esp-hal's linkall.x (memory layout, esp-radio's and the
//! ROM's symbols) and defmt's defmt.x.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Tlinkall.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
}
