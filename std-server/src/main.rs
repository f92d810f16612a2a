//! The `tether` binary: a thin shell over [`tether_server::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tether_server::cli::main()
}
