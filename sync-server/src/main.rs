//! `linkbook-server`: the relay, or an admin command (see [`linkbook_server::cli`]).

fn main() -> std::process::ExitCode {
    linkbook_server::cli::run(std::env::args_os())
}
