//! The errors of an agent whose route may change hands under its work: a
//! libvirt domain's channel reached straight while libvirtd was down is
//! taken back by libvirtd as it starts (see
//! [`DomainConnector::LibvirtsChannel`](super::DomainConnector)), and from
//! then on the agent's failures come through libvirtd and read as such.

use std::sync::{Arc, OnceLock};

use super::errors::AgentErrors;

/// The errors of the route first taken, or of libvirtd once the connector
/// has gone through it; shared with the connector, which says when.
#[derive(Debug, Clone)]
pub struct RouteErrors {
    first: AgentErrors,
    handed_back: Arc<OnceLock<AgentErrors>>,
}

impl RouteErrors {
    /// The errors of the route `first` taken, until the connector tells
    /// `handed_back` those of libvirtd.
    pub fn new(first: AgentErrors, handed_back: Arc<OnceLock<AgentErrors>>) -> RouteErrors {
        RouteErrors { first, handed_back }
    }

    /// The errors of the route taken now.
    pub fn now(&self) -> &AgentErrors {
        self.handed_back.get().unwrap_or(&self.first)
    }

    /// The errors of the route first taken.
    pub fn first(&self) -> &AgentErrors {
        &self.first
    }
}
