//! Asynchronous events, which QEMU sends whenever something happens, and
//! the bounded store that keeps them until the caller asks.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The most events a [`QmpClient`](crate::QmpClient) keeps; older ones are
/// dropped first.
pub const MAX_STORED_EVENTS: usize = 1000;

/// The most bytes (as received) of events a [`QmpClient`](crate::QmpClient)
/// keeps: a count alone would allow a thousand replies' worth of memory.
pub const MAX_STORED_EVENT_BYTES: usize = 16 << 20;

/// Something that happened in QEMU, e.g. `STOP`, `RESUME` or `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Event {
    /// The event's name.
    pub event: String,
    /// Its details; `null` for events without any, such as `STOP`.
    #[serde(default)]
    pub data: Value,
    /// When QEMU saw it: `{"seconds": ..., "microseconds": ...}` since the
    /// epoch, by the host's clock.
    pub timestamp: Value,
}

/// Decodes an event line that arrived while waiting for a reply to `command`.
pub(crate) fn parse_event(command: &str, line: &[u8]) -> Result<Event, Error> {
    serde_json::from_slice(line).map_err(|e| Error::Malformed {
        command: command.to_owned(),
        reason: format!("an event in between is malformed: {e}"),
    })
}

/// Events in arrival order, within [`MAX_STORED_EVENTS`] and
/// [`MAX_STORED_EVENT_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct EventStore {
    /// Each event with its size on the wire.
    events: VecDeque<(Event, usize)>,
    bytes: usize,
    dropped: u64,
}

impl EventStore {
    /// Keeps `event`, `size` bytes long on the wire, dropping the oldest
    /// ones (and an oversized `event` itself) to stay within the bounds.
    pub(crate) fn push(&mut self, event: Event, size: usize) {
        self.events.push_back((event, size));
        self.bytes += size;
        while self.events.len() > MAX_STORED_EVENTS || self.bytes > MAX_STORED_EVENT_BYTES {
            let (_, size) = self
                .events
                .pop_front()
                .expect("a bound is only exceeded when not empty");
            self.bytes -= size;
            self.dropped += 1;
        }
    }

    /// Hands out every stored event, oldest first, and forgets them.
    pub(crate) fn take(&mut self) -> Vec<Event> {
        self.bytes = 0;
        self.events.drain(..).map(|(event, _)| event).collect()
    }

    /// How many events were dropped to stay within the bounds, ever.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOP: &str = r#"{"timestamp": {"seconds": 1700000000, "microseconds": 29816}, "event": "STOP"}"#;

    #[test]
    fn an_event_without_data_decodes() {
        let event: Event = serde_json::from_str(STOP).unwrap();
        assert_eq!(event.event, "STOP");
        assert!(event.data.is_null());
        assert_eq!(event.timestamp["microseconds"], 29816);
    }

    #[test]
    fn for_ordinary_events_the_count_is_the_bound_that_strikes() {
        assert!(MAX_STORED_EVENTS * STOP.len() < MAX_STORED_EVENT_BYTES);
    }
}
