fn main() -> std::process::ExitCode {
    kasbah_cli::main()
}
