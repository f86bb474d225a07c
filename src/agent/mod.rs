//! Reaching a domain's agent: the route found for it ([`DomainConnector`]),
//! a channel over it that names its socket in errors ([`DomainAgent`]),
//! what the agent's failures mean to the user ([`AgentErrors`]), and the
//! signals that interrupt a run. Below the commands, above `domain/`.

mod availability;
mod connector;
mod context;
mod domain_agent;
mod errors;
mod route_errors;
mod signals;
mod silence;

pub use self::availability::{how_to_enable, unavailable, why_lacking};
pub use self::connector::DomainConnector;
pub use self::context::Context;
pub use self::domain_agent::DomainAgent;
pub use self::errors::{stopped_on_a_signal, AgentErrors, RunFront};
pub use self::route_errors::RouteErrors;
pub use self::signals::{cut_short, Settled, Signals, CLEAN_UP_CUT_SHORT};
pub use self::silence::Silence;
