//! The `relay` client command line: wiring only; everything lives in `relay_client::cli`.

fn main() -> std::process::ExitCode {
    relay_client::cli::main()
}
