//! What happened to containers, volumes, networks and images, as docker's events report it:
//! the engine publishes, subscribers (the `events` endpoint, waits) receive.

use std::collections::BTreeMap;

use super::{now_ns, Engine};

/// Events remembered for `events --since`.
const HISTORY: usize = 1000;

/// The kind of object an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Container,
    Volume,
    Network,
    Image,
}

impl EventKind {
    /// docker's `Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Container => "container",
            EventKind::Volume => "volume",
            EventKind::Network => "network",
            EventKind::Image => "image",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// `create`, `start`, `die`, `destroy`, `kill`, `stop`, `rename`, `attach`, ...
    pub action: String,
    /// The object's ID (a volume's or network's name for those).
    pub id: String,
    /// docker's `Actor.Attributes` (`name`, `image`, `exitCode`, `signal`, ...).
    pub attributes: BTreeMap<String, String>,
    /// When, in ns since the epoch.
    pub time_ns: u64,
}

impl Event {
    /// An event happening now.
    pub fn new(kind: EventKind, action: &str, id: &str) -> Event {
        Event {
            kind,
            action: action.into(),
            id: id.into(),
            attributes: BTreeMap::new(),
            time_ns: now_ns(),
        }
    }

    /// Adds an attribute.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Event {
        self.attributes.insert(key.into(), value.into());
        self
    }
}

impl Engine {
    /// Subscribes to every event from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The remembered events at or after `since_ns` (this engine's latest ones), and a
    /// subscription to the later ones: nothing falls between the two.
    pub fn events_since(
        &self,
        since_ns: u64,
    ) -> (Vec<Event>, tokio::sync::broadcast::Receiver<Event>) {
        let history = super::lock(&self.inner.history);
        let rx = self.inner.events.subscribe();
        let past = history
            .iter()
            .filter(|e| e.time_ns >= since_ns)
            .cloned()
            .collect();
        (past, rx)
    }

    pub(super) fn publish(&self, event: Event) {
        tracing::debug!(kind = event.kind.as_str(), action = %event.action, id = %event.id, "event");
        // Sent under the history's lock, so that `events_since` sees each event either in
        // the history or on its subscription.
        let mut history = super::lock(&self.inner.history);
        if history.len() >= HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        // No subscriber is not an error: events are for whoever listens now.
        let _ = self.inner.events.send(event);
    }

    /// A container event with docker's usual attributes (name, image) and the container's
    /// labels.
    pub(super) fn container_event(&self, action: &str, meta: &crate::state::Meta) -> Event {
        let mut e = Event::new(EventKind::Container, action, &meta.id)
            .with("name", meta.name.clone())
            .with("image", meta.image.clone());
        for (k, v) in &meta.settings.labels {
            e.attributes.entry(k.clone()).or_insert_with(|| v.clone());
        }
        e
    }
}
