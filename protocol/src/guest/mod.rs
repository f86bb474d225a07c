//! Procedures run in the guest through the agent: a program polled to
//! its end and stopped with its process tree (`exec`), and its output
//! read while it runs through files in a private directory (`follow`).

pub(crate) mod exec;
pub mod follow;
