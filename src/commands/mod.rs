//! One module per subcommand.

pub mod guest_run;
