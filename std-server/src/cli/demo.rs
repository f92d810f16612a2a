//! `tether demo`: the arguments; the demo itself is [`crate::demo`].

use std::process::ExitCode;

use clap::Args;

/// `tether demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub listen: String,
    /// The demo database (created if missing).
    #[arg(long, default_value = "sqlite://tether-demo.sqlite3")]
    pub database: String,
    /// Keep serving after the simulated device is done (until Ctrl-C);
    /// by default the demo exits when the device has finished.
    #[arg(long)]
    pub keep_serving: bool,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> ExitCode {
    let options = crate::demo::DemoOptions {
        listen: args.listen,
        database: args.database,
        keep_serving: args.keep_serving,
    };
    match crate::demo::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether demo: {e}");
            ExitCode::FAILURE
        }
    }
}
