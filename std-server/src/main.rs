//! The `tether` binary: its command line ([`cli`]) over the tether-server
//! library, and `tether demo` ([`demo`]).
#![forbid(unsafe_code)]

mod cli;
mod demo;

fn main() -> std::process::ExitCode {
    cli::main()
}
