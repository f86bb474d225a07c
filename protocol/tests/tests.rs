//! The protocol crate's integration tests, one binary: each module below is
//! a file of this directory.
//!
//! Tests that need more than Rust say so with `#[ignore = "needs ..."]`
//! (the test VM, libvirtd): a plain `cargo test` leaves them out, `cargo
//! test -- --include-ignored` (what scripts/test.sh and CI run) runs them,
//! and there they fail, never skip, when what they need is missing.

mod go_between;
mod host_agent;
mod libvirt_rpc;
mod qmp;
mod reader_properties;
mod typed_commands;
