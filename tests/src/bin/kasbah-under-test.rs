//! The `kasbah` CLI, unchanged, for tests that need the server as a process.
fn main() -> std::process::ExitCode {
    kasbah_cli::main()
}
