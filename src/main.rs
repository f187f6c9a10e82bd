//! The `aviary` binary: parse the command line and hand over to the CLI face.

use std::process::ExitCode;

// Training allocates and frees the same large buffers every step; mimalloc keeps them mapped
// where the system allocator returns them to the OS and page-faults them back in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match aviary::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aviary: {e}");
            ExitCode::from(2)
        }
    }
}
