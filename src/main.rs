//! The `indexswarm` binary: parse arguments, run, map the outcome to an exit
//! code (0 success, 1 runtime error, 2 usage error; clap exits 2 itself).

use clap::Parser;

fn main() {
    fix_mmap_threshold();
    let cli = indexswarm::cli::Cli::parse();
    // The demo runs four nodes in one process: keep their logs to warnings
    // unless RUST_LOG asks for more, so its report stays readable.
    let default_level = match cli.command {
        indexswarm::cli::Command::Demo(_) => "warn",
        _ => "info",
    };
    indexswarm::telemetry::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(indexswarm::cli::run(cli));
    // Do not wait for lingering blocking tasks (a hashing thread of a cancelled run).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// Piece buffers (16 KiB to 16 MiB) come and go on every worker thread.
/// glibc raises its mmap threshold each time such a buffer is freed, after
/// which the next ones are carved from per-thread heaps that do not shrink
/// back. A fixed threshold keeps them mapped and unmapped whole: 5 MiB less
/// peak RSS per replica in `bench big` (BENCHMARKS.md, #8). The glibc
/// tunable `MALLOC_MMAP_THRESHOLD_`, when set, wins.
fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, and runs here
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already contains (library errors often quote their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}
