//! The `aviary` binary: parse the command line and hand over to the CLI face.

use std::process::ExitCode;

fn main() -> ExitCode {
    aviary::alloc::keep_freed_memory();
    match aviary::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aviary: {e}");
            ExitCode::from(2)
        }
    }
}
