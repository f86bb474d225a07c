//! virtomate's integration tests, one binary: each module below is a file
//! of this directory, and `support` is what they share.
//!
//! Tests that need more than Rust say so with `#[ignore = "needs ..."]`
//! (the test VM, qemu-ga on the host, libvirtd, GNU time): a plain `cargo
//! test` leaves them out, `cargo test -- --include-ignored` (what
//! scripts/test.sh and CI run) runs them, and there they fail, never skip,
//! when what they need is missing.

mod support;

mod agent_commands;
mod arguments;
mod big_payloads;
mod copy;
mod copy_faults;
mod copy_tree;
mod ctrl_c;
mod diagnostics;
mod doctor_channels;
mod fake_agent;
mod follow;
mod follow_rotation;
mod freeze;
mod host_agent;
mod interactive;
mod interactive_faults;
mod layers;
mod libvirt;
mod libvirt_restart;
mod master;
mod master_faults;
mod packaging;
mod parallel;
mod rsync;
mod run_options;
mod runtime_sweep;
mod session;
mod session_copy;
mod shell;
mod sockets;
mod style;
mod vm;
