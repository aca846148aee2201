//! The `shardpack` command. Each subcommand lives in `cmd/<name>.rs`; this file parses the
//! command line, runs one, and turns its outcome into an exit code.
//!
//! Exit codes: 0 success (also when stdout is closed early, as in `shardpack ls | head`),
//! 1 an error (bad input, I/O, a corrupt or incomplete dataset), 2 a usage error,
//! 3 `verify` found problems, 130/143 `pack` stopped by SIGINT/SIGTERM (after removing what
//! it wrote).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;
mod notes;
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
    Index(cmd::index::Args),
    Verify(cmd::verify::Args),
    Bench(cmd::bench::Args),
    Plan(cmd::plan::Args),
    Merge(cmd::merge::Args),
}

fn main() -> ExitCode {
    // `Cli::parse()`, keeping the matches: `pack --plan` tells options given on the command
    // line from defaults.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| e.format(&mut Cli::command()))
        .unwrap_or_else(|e| e.exit());
    // Whether a failure prints a JSON error object on stdout: `Lines` after any output (JSON
    // Lines), `Document` only when nothing was printed (one JSON document).
    let json = match &cli.command {
        Command::Ls(a) if a.json => JsonErrors::Lines,
        Command::Pack(cmd::pack::Args { json: true, .. })
        | Command::Info(cmd::info::Args { json: true, .. })
        | Command::Verify(cmd::verify::Args { json: true, .. })
        | Command::Bench(cmd::bench::Args { json: true, .. })
        | Command::Index(cmd::index::Args { json: true, .. }) => JsonErrors::Document,
        _ => JsonErrors::No,
    };
    if matches!(cli.command, Command::Pack(_) | Command::Plan(_)) {
        signal::install();
    }
    let stdout = io::stdout();
    let mut out = Counting {
        inner: io::BufWriter::with_capacity(1 << 16, stdout.lock()),
        written: 0,
    };
    let res = match cli.command {
        Command::Pack(a) => {
            let m = matches.subcommand_matches("pack").expect("pack's matches");
            cmd::pack::run(a, m, &mut out)
        }
        Command::Info(a) => cmd::info::run(a, &mut out),
        Command::Ls(a) => cmd::ls::run(a, &mut out),
        Command::Cat(a) => cmd::cat::run(a, &mut out),
        Command::Extract(a) => cmd::extract::run(a, &mut out),
        Command::Index(a) => cmd::index::run(a, &mut out),
        Command::Verify(a) => cmd::verify::run(a, &mut out),
        Command::Bench(a) => cmd::bench::run(a, &mut out),
        Command::Plan(a) => cmd::plan::run(a, &mut out),
        Command::Merge(a) => cmd::merge::run(a, &mut out),
    };
    let res = res.and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match res {
        Ok(code) => code,
        Err(e) if util::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if is_cancelled(&e) => {
            let sig = signal::received().unwrap_or(0);
            let msg = format!(
                "interrupted by {}; removed what this pack had written",
                signal::name(sig)
            );
            let code = if sig > 0 { (128 + sig) as u8 } else { 1 };
            if json.wanted(out.written) {
                json_error(&mut out, &msg, &[], code);
            }
            let _ = out.flush();
            eprintln!("shardpack: {msg}");
            ExitCode::from(code)
        }
        Err(e) => {
            let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
            if json.wanted(out.written) {
                json_error(&mut out, &e.to_string(), &causes, 1);
            }
            let _ = out.flush();
            let mut msg = format!("shardpack: error: {e}");
            for cause in &causes {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

#[derive(Clone, Copy)]
enum JsonErrors {
    No,
    Lines,
    Document,
}

impl JsonErrors {
    fn wanted(self, written: u64) -> bool {
        match self {
            JsonErrors::No => false,
            JsonErrors::Lines => true,
            JsonErrors::Document => written == 0,
        }
    }
}

/// stdout, counting the bytes the command wrote (see [`JsonErrors`]).
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The JSON error object of a failed `--json` command, on one line of stdout.
fn json_error(out: &mut impl Write, message: &str, causes: &[String], exit_code: u8) {
    let v = serde_json::json!({
        "error": { "message": message, "causes": causes, "exit_code": exit_code }
    });
    // Best effort: stdout may be the very thing that failed.
    let _ = writeln!(out, "{v}");
}

/// Whether the command stopped because it was asked to (a signal; see `signal`).
fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<shardpack::Error>()
            .is_some_and(|x| matches!(x, shardpack::Error::Cancelled))
    })
}
