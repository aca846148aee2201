//! The `shardpack` command. Each subcommand lives in `cmd/<name>.rs`; this file parses the
//! command line, runs one, and turns its outcome into an exit code.
//!
//! Exit codes: 0 success (also when stdout is closed early, as in `shardpack ls | head`),
//! 1 an error (bad input, I/O, a corrupt or incomplete dataset), 2 a usage error,
//! 3 `verify` found problems, 130/143 `pack` stopped by SIGINT/SIGTERM (after removing what
//! it wrote).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod signal;
mod util;

/// Compile folder trees of samples into packed, indexed, checksummed shards that a data loader
/// reads with large sequential reads, and inspect, extract and verify them.
#[derive(Parser, Debug)]
#[command(name = "shardpack", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success (a closed stdout pipe counts as success), \
1 error (bad input, I/O, corrupt or incomplete dataset), 2 usage error, 3 verify found problems, \
130/143 pack interrupted by SIGINT/SIGTERM (what it wrote is removed).";

#[derive(Subcommand, Debug)]
enum Command {
    Pack(cmd::pack::Args),
    Info(cmd::info::Args),
    Ls(cmd::ls::Args),
    Cat(cmd::cat::Args),
    Extract(cmd::extract::Args),
    Verify(cmd::verify::Args),
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Pack(_)) {
        signal::install();
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let res = match cli.command {
        Command::Pack(a) => cmd::pack::run(a, &mut out),
        Command::Info(a) => cmd::info::run(a, &mut out),
        Command::Ls(a) => cmd::ls::run(a, &mut out),
        Command::Cat(a) => cmd::cat::run(a, &mut out),
        Command::Extract(a) => cmd::extract::run(a, &mut out),
        Command::Verify(a) => cmd::verify::run(a, &mut out),
        Command::Bench(a) => cmd::bench::run(a, &mut out),
    };
    let res = res.and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match res {
        Ok(code) => code,
        Err(e) if util::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if is_cancelled(&e) => {
            let _ = out.flush();
            let sig = signal::received().unwrap_or(0);
            eprintln!(
                "shardpack: interrupted by {}; removed what this pack had written",
                signal::name(sig)
            );
            ExitCode::from(if sig > 0 { (128 + sig) as u8 } else { 1 })
        }
        Err(e) => {
            let _ = out.flush();
            let mut msg = format!("shardpack: error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

/// Whether the command stopped because it was asked to (a signal; see `signal`).
fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<shardpack::Error>()
            .is_some_and(|x| matches!(x, shardpack::Error::Cancelled))
    })
}
