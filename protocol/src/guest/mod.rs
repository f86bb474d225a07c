//! Procedures run in the guest through the agent: a program polled to
//! its end and stopped with its process tree (`exec`), and its output
//! read while it runs through files in a private directory (`follow`),
//! its input fed while it runs through a named pipe there (`feed`).

pub(crate) mod exec;
pub mod feed;
pub mod follow;
pub mod leftovers;
