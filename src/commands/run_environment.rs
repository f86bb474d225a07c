//! The environment a program gets with `--env` and `--env-clear`.
//!
//! The agent's `env` replaces the program's whole environment, and the
//! agent cannot tell what its own is. So once any `--env` is given, the
//! program gets a standard `PATH` (Debian's, which finds the usual
//! programs on any Linux) and the `--env` given, later ones winning;
//! `--env-clear` leaves out the `PATH` too. Without either, the agent's
//! own environment is inherited, as before.

/// Debian's default `PATH` for root (`/etc/login.defs`, ENV_SUPATH).
pub const BASE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `env` of `guest-exec` for the `--env` assignments (each `KEY=VALUE`,
/// checked by clap) and `--env-clear`; `None` to inherit the agent's.
pub fn environment(assignments: &[String], clear: bool) -> Option<Vec<String>> {
    if assignments.is_empty() && !clear {
        return None;
    }
    let base = (!clear).then(|| BASE_PATH.to_owned());
    let mut env: Vec<String> = Vec::new();
    for assignment in base.iter().chain(assignments) {
        let key = assignment
            .split_once('=')
            .map_or(assignment.as_str(), |(key, _)| key);
        env.retain(|earlier| earlier.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(assignment.clone());
    }
    Some(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn without_env_options_the_agents_environment_is_inherited() {
        assert_eq!(environment(&[], false), None);
    }

    #[test]
    fn env_adds_to_a_standard_path_and_later_ones_win() {
        let env = environment(&owned(&["A=1", "B=x=y z", "A=2"]), false).unwrap();
        assert_eq!(env, owned(&[BASE_PATH, "B=x=y z", "A=2"]));
        let env = environment(&owned(&["PATH=/opt/bin"]), false).unwrap();
        assert_eq!(env, owned(&["PATH=/opt/bin"]));
    }

    #[test]
    fn env_clear_starts_from_nothing() {
        assert_eq!(environment(&[], true), Some(vec![]));
        assert_eq!(environment(&owned(&["A="]), true), Some(owned(&["A="])));
    }
}
