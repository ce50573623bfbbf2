//! Everything the CLI writes to stdout goes through here. A closed stdout
//! (`kasbah runs list | head -1`) ends the process quietly with status 0,
//! as other command-line tools do, instead of `println!`'s panic on EPIPE.
//! Clippy's `print_stdout` is denied in this crate so nothing bypasses it.

use std::io::{self, Write};

/// Write `args` to stdout; on a broken pipe exit 0 at once (nothing more can
/// be shown to anyone); other errors are returned.
pub fn write(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    quiet_on_broken_pipe(io::stdout().lock().write_fmt(args))
}

/// Write raw bytes to stdout (run outputs), same rule as [`write`].
pub fn write_bytes(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    quiet_on_broken_pipe(out.write_all(bytes).and_then(|()| out.flush()))
}

/// A broken pipe is the reader having gone away: exit 0 quietly.
pub fn quiet_on_broken_pipe(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other,
    }
}

/// `println!` that exits 0 quietly on a closed stdout. Other write errors
/// (a full disk behind a redirect) are reported on stderr once and end the
/// process with status 2.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same rule as [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::print(format_args!($($arg)*)) };
}

/// Used by the macros (they are called where no error can be returned,
/// e.g. inside table-printing closures).
pub fn print(args: std::fmt::Arguments<'_>) {
    if let Err(e) = write(args) {
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(2);
    }
}
