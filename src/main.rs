//! The `aviary` binary: parse the command line, open the session, then hand it to a face: the
//! CLI for a subcommand, the TUI without one.

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
    let result = aviary::cli::setup().and_then(|(mut cli, config)| {
        let mut session = cli.session(config)?;
        match cli.command.take() {
            Some(command) => aviary::cli::run(&mut session, command),
            None => aviary::tui::run(session),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aviary: {e}");
            ExitCode::from(2)
        }
    }
}
