//! Puts the target's memory map where cortex-m-rt's link.x finds it:
//! memory-v7em.x (QEMU mps2-an386, Cortex-M4) or, for thumbv6m, memory-v6m.x
//! (QEMU microbit, Cortex-M0).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let v6m = env::var("TARGET").is_ok_and(|t| t.starts_with("thumbv6m"));
    let memory: &[u8] = if v6m {
        include_bytes!("memory-v6m.x")
    } else {
        include_bytes!("memory-v7em.x")
    };
    fs::write(out.join("memory.x"), memory).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory-v7em.x");
    println!("cargo:rerun-if-changed=memory-v6m.x");
    println!("cargo:rerun-if-changed=build.rs");
}
