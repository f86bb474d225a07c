//! The command line as parsing needs it: [`Cli`]'s, with each command's
//! arguments made only once it is the one given.
//!
//! clap builds every command of a derived command line, then copies the
//! global options into each, growing every command's list of arguments:
//! paid by every call of every script. Here each command is deferred
//! (`Command::defer`), made by its own derived `augment_args` when given:
//! `virtomate --version` (the static build) took 0.48 ms of CPU, against
//! 0.60-0.94 ms with every command made (`perf stat -r 100`, 6 rounds).
//! Help is not shown from this tree: `help::parse` shows it from
//! `Cli::command()`, which has every command's text. A test checks that
//! both trees parse alike.

use clap::{Args, Command};

use super::*;

/// Builds a command's arguments onto it.
type Augment = fn(Command) -> Command;

/// Every command, by name, and how its arguments are made.
const COMMANDS: [(&str, Augment); 20] = [
    ("guest-run", GuestRunArgs::augment_args),
    ("guest-ping", GuestPingArgs::augment_args),
    ("domain-list", |command| command),
    ("domain-iface-list", DomainIfaceListArgs::augment_args),
    ("doctor", DoctorArgs::augment_args),
    ("guest-cmd", GuestCmdArgs::augment_args),
    ("qmp", QmpArgs::augment_args),
    ("session", SessionArgs::augment_args),
    ("guest-info", GuestInfoArgs::augment_args),
    ("guest-facts", GuestFactsArgs::augment_args),
    ("guest-set-password", GuestSetPasswordArgs::augment_args),
    ("guest-ssh-keys", GuestSshKeysArgs::augment_args),
    ("guest-set-time", GuestSetTimeArgs::augment_args),
    ("guest-fstrim", GuestFstrimArgs::augment_args),
    ("guest-shutdown", GuestShutdownArgs::augment_args),
    ("copy", CopyArgs::augment_args),
    ("guest-freeze", GuestFreezeArgs::augment_args),
    ("guest-thaw", GuestThawArgs::augment_args),
    ("control", ControlArgs::augment_args),
    ("shell", ShellArgs::augment_args),
];

/// The command line to parse the process's arguments with; its matches
/// are [`Cli`]'s (`FromArgMatches`).
pub fn parse_tree() -> Command {
    let root = Command::new("virtomate")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_version_flag(true)
        .subcommand_required(true)
        .arg_required_else_help(true);
    let root = Options::augment_args(root);
    root.subcommands(COMMANDS.iter().map(|&(name, augment)| match name {
        // Made at once: clap's `help` command takes the commands of a
        // command that has some (`help control check`) from the tree as
        // it is when the root is built.
        "control" => augment(Command::new(name)),
        _ => Command::new(name).defer(augment),
    }))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// What parsing depends on, of a command, its arguments and its
    /// commands, each line naming the command it is of; sorted.
    fn shape(command: &Command, path: &str) -> Vec<String> {
        let path = format!("{path} {}", command.get_name());
        let mut lines = vec![format!(
            "{path}: required={} else_help={} version={:?} hidden={}",
            command.is_subcommand_required_set(),
            command.is_arg_required_else_help_set(),
            command.get_version(),
            command.is_hide_set(),
        )];
        lines.extend(command.get_arguments().map(|arg| {
            format!(
                "{path}: {} {:?} {:?} {:?} {:?} {:?} {} {} {} {} {:?} {:?}",
                arg.get_id(),
                arg.get_short(),
                arg.get_long(),
                arg.get_index(),
                arg.get_num_args(),
                arg.get_action(),
                arg.is_required_set(),
                arg.is_global_set(),
                arg.is_last_set(),
                arg.is_trailing_var_arg_set(),
                arg.get_value_names(),
                arg.get_default_values(),
            )
        }));
        for sub in command.get_subcommands() {
            lines.extend(shape(sub, &path));
        }
        lines.sort();
        lines
    }

    #[test]
    fn the_parse_tree_parses_as_the_derived_command_line() {
        let mut derived = Cli::command();
        derived.build();
        let mut tree = parse_tree();
        tree.build();
        // clap adds `help` to both.
        for sub in derived.get_subcommands().filter(|sub| sub.get_name() != "help") {
            let name = sub.get_name();
            assert!(
                COMMANDS.iter().any(|(listed, _)| *listed == name),
                "{name} is missing from the parse tree's COMMANDS"
            );
        }
        let (tree, derived) = (shape(&tree, ""), shape(&derived, ""));
        let only_tree: Vec<&String> = tree.iter().filter(|line| !derived.contains(line)).collect();
        let only_derived: Vec<&String> = derived.iter().filter(|line| !tree.contains(line)).collect();
        assert!(
            only_tree.is_empty() && only_derived.is_empty(),
            "only the parse tree has {only_tree:#?}, only the derived command line {only_derived:#?}"
        );
        assert_eq!(tree, derived);
    }
}
