//! `raindrop` binary: the allocator, then the command line (`cli.rs`).

use clap::Parser;
use raindrop::config::Cli;

/// Arrow buffers are allocated and freed on many threads (runtime workers,
/// the blocking threads that sort and encode): glibc's per-thread arenas
/// kept what they freed, and a 100k rows/s stream grew the process to the
/// machine's 24 GiB in 12 minutes (`benches/stream.rs` soak).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    raindrop::disable_library_backtraces();
    raindrop::cli::run(Cli::parse())
}
