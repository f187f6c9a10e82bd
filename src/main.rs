//! The `aviary` binary: parse the command line and hand over to the CLI face.

use std::process::ExitCode;

// Training allocates and frees the same large buffers every step; mimalloc keeps them mapped
// where the system allocator returns them to the OS and page-faults them back in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`): how long freed memory stays mapped.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Never hand freed memory back to the OS: a training step frees and reallocates the same
    // tens of megabytes, and with purging every step faults them back in page by page
    // (about 2,000 page faults a step at the reference size; without purging, none).
    // SAFETY: options may be set at any time; -1 means "never purge".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    match aviary::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aviary: {e}");
            ExitCode::from(2)
        }
    }
}
