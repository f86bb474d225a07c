//! `virtomate --generate DIR`: the man pages and shell completions, made
//! from the real [`Cli`] through [`CommandFactory`], so that they always
//! say what `--help` says and pick up every command clap knows of.
//!
//! Why here, and behind the `generate` feature: the generator needs the
//! `Cli` type, which lives in this binary crate (there is no library to
//! import it from, and `src/cli.rs` uses the rest of the crate, so a
//! `build.rs` cannot `include!` it). Built into the binary it is the real
//! definition, not a copy; a default feature keeps it in every ordinary
//! build (the tests and `cargo install` have it, as ripgrep's
//! `--generate` is), while `scripts/package.sh` builds the shipped static
//! binary with `--no-default-features`, leaving clap_mangen and
//! clap_complete out of it (220 KiB of its 2.6 MiB, stripped), and ships
//! the files it generated instead. It
//! is not a clap option (that would show up in the very pages and
//! completions it writes, and clap requires a command): it is looked for
//! before clap parses anything.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The shells completions are written for, under clap_complete's usual
/// file names: `virtomate.bash`, `_virtomate`, `virtomate.fish`.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// If the command line is `virtomate --generate DIR`, writes everything
/// into DIR and says how that went; `None` for any other command line.
pub fn from_args() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some("--generate".as_ref()) {
        return None;
    }
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: virtomate --generate DIR");
        return Some(ExitCode::from(2));
    };
    Some(match generate(Path::new(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtomate --generate: {}: {e}", dir.to_string_lossy());
            ExitCode::FAILURE
        }
    })
}

/// Writes DIR/man/virtomate.1 and a page per command
/// (`virtomate-guest-run.1`, …), and DIR/completions/ for each shell.
pub fn generate(dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    // As clap_mangen::generate_to does, but every page, not only the
    // top one, says it comes from virtomate and which version.
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let source = format!("virtomate {}", env!("CARGO_PKG_VERSION"));
    write_pages(command, &man, &date(), &source)?;

    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    for shell in SHELLS {
        clap_complete::generate_to(shell, &mut command, &name, &completions)?;
    }
    Ok(())
}

/// The page of `command`, and those of its commands that clap does not
/// hide, named after clap's display names (`virtomate-guest-run.1`).
fn write_pages(command: clap::Command, dir: &Path, date: &str, source: &str) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub.clone(), dir, date, source)?;
    }
    // The date must not be empty: clap_mangen would leave it out of
    // `.TH`, and man would show the source as the date.
    clap_mangen::Man::new(command)
        .date(date)
        .source(source)
        .manual("virtomate manual")
        .generate_to(dir)?;
    Ok(())
}

/// The pages' date, YYYY-MM-DD: that of `SOURCE_DATE_EPOCH` (seconds since
/// 1970, set by scripts/package.sh to the commit's time) for reproducible
/// pages, else today's.
fn date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs())
        });
    let (year, month, day) = civil_from_days(seconds / 86_400);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The Gregorian date `days` days after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days that are not negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates_of_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
    }
}
