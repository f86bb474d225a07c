//! The environment a program gets when the caller sets variables.
//!
//! `guest-exec`'s `env` replaces the program's whole environment, and the
//! agent cannot tell what its own is. So a caller that sets variables gets
//! a standard `PATH` (Debian's, which finds the usual programs on any
//! Linux) with its variables over it, later ones winning; one that asks
//! for a clear environment gets its variables alone.

/// Debian's default `PATH` for root (`/etc/login.defs`, ENV_SUPATH).
pub const STANDARD_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `env` of `guest-exec` for the `assignments` (each `KEY=VALUE`) over
/// [`STANDARD_PATH`], or over nothing with `clear`; `None`, to inherit the
/// agent's environment, when there is neither.
///
/// ```
/// use virtomate_protocol::qga::{environment, STANDARD_PATH};
///
/// assert_eq!(environment(&[], false), None);
/// let env = environment(&["LANG=C".into(), "A=1".into(), "A=2".into()], false).unwrap();
/// assert_eq!(env, [STANDARD_PATH, "LANG=C", "A=2"]);
/// assert_eq!(environment(&["A=1".into()], true).unwrap(), ["A=1"]);
/// ```
pub fn environment(assignments: &[String], clear: bool) -> Option<Vec<String>> {
    if assignments.is_empty() && !clear {
        return None;
    }
    let base = (!clear).then(|| STANDARD_PATH.to_owned());
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
