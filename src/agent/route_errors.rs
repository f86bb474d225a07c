//! The errors of an agent whose route may change hands under its work. A
//! libvirt domain's channel reached straight while libvirtd was down is
//! taken back by libvirtd as it starts (see
//! [`DomainConnector::LibvirtsChannel`](super::DomainConnector)); a run
//! through libvirtd goes straight to the channel once libvirtd has gone
//! away under it. The agent's failures read as those of the route taken
//! at the time.

use std::sync::{Arc, Mutex};

use super::errors::AgentErrors;

/// The errors of the route first taken, or of the one the connector has
/// taken since; shared with the connector, which says when.
#[derive(Debug, Clone)]
pub struct RouteErrors {
    first: AgentErrors,
    taken: RouteTaken,
}

/// Where the connector tells the route it has taken since the first.
#[derive(Debug, Clone, Default)]
pub struct RouteTaken(Arc<Mutex<Option<AgentErrors>>>);

impl RouteTaken {
    /// From now on, the errors of `route`.
    pub fn set(&self, route: AgentErrors) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(route);
    }

    fn get(&self) -> Option<AgentErrors> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl RouteErrors {
    /// The errors of the route `first` taken, until the connector tells
    /// `taken` another.
    pub fn new(first: AgentErrors, taken: RouteTaken) -> RouteErrors {
        RouteErrors { first, taken }
    }

    /// The errors of the route taken now.
    pub fn now(&self) -> AgentErrors {
        self.taken.get().unwrap_or_else(|| self.first.clone())
    }

    /// The errors of the route first taken.
    pub fn first(&self) -> &AgentErrors {
        &self.first
    }
}
