use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: under the soak's reuse load glibc kept ~2× the live
/// heap resident and kept growing; it also cost about a sixth of the reuse path's CPU
/// (bench/RESULTS.md, issue 24). Built as v2, with transparent huge pages off for the
/// process and overriding `malloc` (SQLite's allocations too): see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 2's `mi_option_purge_delay` (`mimalloc.h`), which libmimalloc-sys does not
/// name; the test below checks the index still points at that option.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the OS at once instead of after mimalloc's default 10 ms
/// (100 ms for its arenas): after 1M distinct users the service held 108.5 MiB instead
/// of 119.6 MiB, for a few percent more CPU (bench/RESULTS.md, issue 24). An operator's
/// `MIMALLOC_PURGE_DELAY` wins, as mimalloc documents.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's process-wide options at the start of `main`,
        // before any other thread exists; any value is valid for this option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    let cli = token_vendor::cli::Cli::parse();
    token_vendor::cli::run(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_is_mimallocs_purge_delay() {
        // Its neighbours' defaults, then its own (10 ms), then that setting it sticks:
        // a renumbered enum in a new mimalloc fails here rather than set another option.
        // SAFETY: reads and sets mimalloc's process-wide options; any value is valid.
        unsafe {
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY - 1),
                1,
                "eager_commit_delay"
            );
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY + 2),
                0,
                "disallow_os_alloc"
            );
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 10);
            }
        }
        purge_freed_memory_at_once();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: as above.
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
                0
            );
        }
    }
}
