//! sessfs: PHP's session directory on Redis. See README.md and sessfs(8).

use std::process::ExitCode;

use clap::Parser;

use sessfs::config::{Cli, Options, StoreUrl};
use sessfs::daemon::{self, Failure, Notify, exit};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("status") {
        return status(args.get(2));
    }
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

/// `sessfs status MOUNTPOINT`: what that mount's daemon holds and waits for.
fn status(mountpoint: Option<&String>) -> ExitCode {
    let Some(m) = mountpoint else {
        eprintln!("usage: sessfs status MOUNTPOINT");
        return ExitCode::from(exit::USAGE);
    };
    let path = std::path::Path::new(m).join(sessfs::fs::STATUS_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "sessfs: {}: {e} (is a sessfs mount there? root only)",
                path.display()
            );
            ExitCode::from(exit::RUNTIME)
        }
    }
}
