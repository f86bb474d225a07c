//! `virtomate --help`, its commands grouped by what they are for.
//!
//! clap lists subcommands in one flat list and has no headings for groups
//! of them, so the root's help template gets the list written here: the
//! groups are named below, each command's one-line description still comes
//! from clap (the doc comment in `cli.rs`), and a test fails, naming the
//! command, when a command is in no group or a group names one that does
//! not exist. Adding a command to a group is one line in [`GROUPS`].

use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The headings of `--help` and the commands under each, in this order.
#[rustfmt::skip]
const GROUPS: &[(&str, &[&str])] = &[
    ("Running programs", &["guest-run", "shell", "session"]),
    ("Files", &["copy"]),
    ("Agent commands", &["guest-ping", "guest-info", "guest-facts", "guest-cmd"]),
    ("Guest administration", &["guest-set-password", "guest-ssh-keys", "guest-set-time", "guest-shutdown"]),
    ("Guest file systems", &["guest-freeze", "guest-thaw", "guest-fstrim"]),
    ("Domains", &["domain-list", "domain-iface-list", "qmp"]),
    ("Sharing a connection", &["control"]),
    ("Diagnostics", &["doctor", "help"]),
];

/// The command line definition, with the grouped list in its help.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    command.build();
    let listing = grouped_commands(&command);
    let header = *command.get_styles().get_header();
    command.help_template(format!(
        "{{before-help}}{{about-with-newline}}\n{{usage-heading}} {{usage}}\n\n{listing}\
         {header}Options:{header:#}\n{{options}}{{after-help}}"
    ))
}

/// Parses the process's arguments, exiting as clap does on `--help`, on
/// `--version` and on a usage error.
///
/// Parsed with [`crate::cli::parse_tree::parse_tree`], which makes only the given
/// command's arguments; help, which needs every command's text and the
/// grouped list (as costly to a fresh process as its exchange with a
/// control master), is made only when it is asked for.
pub fn parse() -> Cli {
    use clap::error::ErrorKind;
    let matches: ArgMatches = match crate::cli::parse_tree::parse_tree().try_get_matches() {
        Ok(matches) => matches,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            command().get_matches()
        }
        Err(error) => error.exit(),
    };
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The groups as text: a heading each, then one line per command, names
/// aligned as clap aligns its own lists. Commands that are in no group
/// come last under "Other commands", so that none is ever hidden.
fn grouped_commands(command: &clap::Command) -> String {
    let styles = command.get_styles();
    let (header, literal) = (styles.get_header(), styles.get_literal());
    let visible: Vec<&clap::Command> = command.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    let width = visible.iter().map(|c| c.get_name().len()).max().unwrap_or(0);
    let ungrouped: Vec<&str> = visible
        .iter()
        .map(|c| c.get_name())
        .filter(|name| group_of(name).is_none())
        .collect();
    let other = ("Other commands", ungrouped.as_slice());
    let mut text = String::new();
    for (heading, names) in GROUPS
        .iter()
        .copied()
        .chain((!ungrouped.is_empty()).then_some(other))
    {
        text.push_str(&format!("{header}{heading}:{header:#}\n"));
        let names = names.iter();
        for sub in names.filter_map(|name| visible.iter().find(|c| c.get_name() == *name)) {
            let about = sub.get_about().map(|about| about.to_string()).unwrap_or_default();
            let name = sub.get_name();
            let pad = " ".repeat(width - name.len());
            text.push_str(&format!("  {literal}{name}{literal:#}{pad}  {about}\n"));
        }
        text.push('\n');
    }
    text
}

/// The heading of the group that lists `name`.
fn group_of(name: &str) -> Option<&'static str> {
    GROUPS
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map(|(heading, _)| *heading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_in_exactly_one_group_and_every_listed_command_exists() {
        let mut command = Cli::command();
        command.build();
        let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
        for name in &names {
            let groups: Vec<&str> = GROUPS
                .iter()
                .filter(|(_, listed)| listed.contains(name))
                .map(|(heading, _)| *heading)
                .collect();
            assert!(
                groups.len() == 1,
                "the command `{name}` is in {} groups of `--help` ({groups:?}): put it in exactly one \
                 of GROUPS in src/help.rs",
                groups.len()
            );
        }
        for (heading, listed) in GROUPS {
            for name in *listed {
                assert!(
                    names.contains(name),
                    "the group \"{heading}\" of `--help` lists `{name}`, which is no command"
                );
            }
        }
    }

    #[test]
    fn the_help_lists_each_command_once_under_its_heading_with_its_description() {
        let help = command().render_help().to_string();
        assert!(!help.contains("Commands:"), "the flat list is gone: {help}");
        let at = |needle: &str| {
            help.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing: {help}"))
        };
        assert!(at("Running programs:") < at("  guest-run  "));
        assert!(at("  guest-run  ") < at("Files:"));
        assert!(at("Files:") < at("  copy  ") && at("  copy  ") < at("Agent commands:"));
        assert!(at("Diagnostics:") < at("  doctor  ") && at("  doctor  ") < at("Options:"));
        assert_eq!(help.matches("  guest-run  ").count(), 1, "{help}");
        assert!(
            help.contains("Run a program on a domain through the QEMU Guest Agent"),
            "{help}"
        );
        assert!(help.contains("  -p, --pretty"), "{help}");
    }
}
