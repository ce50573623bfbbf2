//! The `kasbah` CLI, built inside the tests package so integration tests can
//! spawn it (`env!("CARGO_BIN_EXE_kasbah-under-test")`).
fn main() -> std::process::ExitCode {
    kasbah_cli::main()
}
