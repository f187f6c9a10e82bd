//! The `aviary` binary: parse the command line and hand over to the CLI face.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `aviary bot list | head` must end quietly when `head` stops reading, as command-line
    // tools do, instead of panicking on the broken pipe: restore the default SIGPIPE action
    // that the Rust runtime replaces.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default before any other thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    aviary::alloc::keep_freed_memory();
    match aviary::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aviary: {e}");
            ExitCode::from(2)
        }
    }
}
