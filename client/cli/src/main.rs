//! The `relay` client command line: wiring only; everything lives in `relay_cli`.

fn main() -> std::process::ExitCode {
    relay_cli::main()
}
