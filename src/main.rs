//! sessfs: PHP's session directory on Redis. See README.md and sessfs(8).

use std::process::ExitCode;

use clap::Parser;

use sessfs::config::{Cli, Options, StoreUrl};
use sessfs::daemon::{self, Failure, Notify, exit};

fn main() -> ExitCode {
    let (mut notify, secret_url) = Notify::from_env();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match start(&cli, secret_url, &mut notify) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            notify.failed(&f);
            tracing::error!("{}", f.message);
            eprintln!("sessfs: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn start(cli: &Cli, secret_url: Option<String>, notify: &mut Notify) -> Result<(), Failure> {
    let opts = Options::parse(&cli.options).map_err(|e| Failure::new(exit::USAGE, e))?;
    // The background child is handed the full URL through a pipe; its argv shows no password.
    let raw_url = secret_url.as_deref().unwrap_or(&cli.store_url);
    let url = StoreUrl::parse(raw_url).map_err(|e| Failure::new(exit::USAGE, e))?;
    if !cli.foreground && !notify.is_background() {
        return daemon::spawn_background(&url);
    }
    daemon::init_logging(&opts, notify.is_background())?;
    daemon::run(cli, &opts, &url, notify)
}
