//! What every command is given besides its own arguments.

use virtomate_protocol::ClientOptions;

use crate::domain::Scope;

/// What every command needs besides its own arguments.
pub struct Context {
    pub options: ClientOptions,
    pub scope: Scope,
}
