//! The head's component store: components by digest, within a byte quota
//! (`--component-store`). A component some queued or running task needs is
//! pinned; past the quota, the least recently used unpinned ones are
//! evicted to make room, and an upload that cannot fit is refused with the
//! reason, which later submissions naming it are told.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::cluster::messages::MAX_COMPONENT_BYTES;
use crate::runtime::Digest;

/// A stored component.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) name: String,
    pub(crate) bytes: Arc<Vec<u8>>,
    /// Tasks queued or running that need it.
    pins: usize,
    /// When it was last stored or pinned (a logical clock).
    used: u64,
}

/// Components by digest, within a byte quota.
#[derive(Debug)]
pub(crate) struct ComponentStore {
    quota: u64,
    bytes: u64,
    clock: u64,
    components: FxHashMap<Digest, Stored>,
    /// Why recent uploads were refused, by digest (the last few).
    refused: VecDeque<(Digest, String)>,
}

/// Refusals remembered, so submissions naming them get the reason.
const REFUSALS_KEPT: usize = 64;

impl ComponentStore {
    pub(crate) fn new(quota: u64) -> Self {
        Self {
            quota,
            bytes: 0,
            clock: 0,
            components: FxHashMap::default(),
            refused: VecDeque::new(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Stores a component, evicting unpinned ones least recently used first
    /// if the quota needs it; an error says why it cannot be stored.
    pub(crate) fn store(&mut self, name: String, bytes: Vec<u8>) -> Result<Digest, String> {
        let digest = Digest::of(&bytes);
        let now = self.tick();
        if let Some(stored) = self.components.get_mut(&digest) {
            stored.used = now;
            return Ok(digest);
        }
        let size = bytes.len() as u64;
        if size > MAX_COMPONENT_BYTES as u64 {
            let why = format!(
                "component {name} is {} MiB; a cluster stores components of at most {} MiB",
                size >> 20,
                MAX_COMPONENT_BYTES >> 20
            );
            self.remember_refusal(&digest, &why);
            return Err(why);
        }
        while self.bytes + size > self.quota {
            let victim = self
                .components
                .iter()
                .filter(|(_, c)| c.pins == 0)
                .min_by_key(|(_, c)| c.used)
                .map(|(d, _)| *d);
            let Some(victim) = victim else { break };
            if let Some(evicted) = self.components.remove(&victim) {
                self.bytes -= evicted.bytes.len() as u64;
            }
        }
        if self.bytes + size > self.quota {
            let why = format!(
                "component {name} ({} MiB) does not fit the cluster's component store: {} of its \
                 {} MiB hold components that queued or running tasks need (raise it with \
                 --component-store)",
                size.div_ceil(1 << 20),
                self.bytes.div_ceil(1 << 20),
                self.quota >> 20
            );
            self.remember_refusal(&digest, &why);
            return Err(why);
        }
        self.bytes += size;
        self.components.insert(
            digest,
            Stored {
                name,
                bytes: Arc::new(bytes),
                pins: 0,
                used: now,
            },
        );
        Ok(digest)
    }

    fn remember_refusal(&mut self, digest: &Digest, why: &str) {
        if self.refused.len() == REFUSALS_KEPT {
            self.refused.pop_front();
        }
        self.refused.push_back((*digest, why.to_owned()));
    }

    /// The component, if stored.
    pub(crate) fn get(&self, digest: &Digest) -> Option<&Stored> {
        self.components.get(digest)
    }

    /// Why the component is not stored, for the submitter.
    pub(crate) fn missing(&self, digest: &Digest) -> String {
        self.refused
            .iter()
            .rev()
            .find(|(d, _)| d == digest)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| {
                format!(
                    "component {digest} is not stored in this cluster; upload it first (wtrace \
                     submit does)"
                )
            })
    }

    /// A task needs the component: it stays until [`ComponentStore::unpin`].
    pub(crate) fn pin(&mut self, digest: &Digest) -> bool {
        let now = self.tick();
        match self.components.get_mut(digest) {
            Some(stored) => {
                stored.pins += 1;
                stored.used = now;
                true
            }
            None => false,
        }
    }

    /// A task that needed the component is done.
    pub(crate) fn unpin(&mut self, digest: &Digest) {
        if let Some(stored) = self.components.get_mut(digest) {
            stored.pins = stored.pins.saturating_sub(1);
        }
    }

    /// Components stored.
    pub(crate) fn len(&self) -> usize {
        self.components.len()
    }

    /// Bytes stored.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(tag: u8, mib: usize) -> Vec<u8> {
        let mut bytes = vec![tag; mib << 20];
        bytes[0] = b'\0';
        bytes
    }

    #[test]
    fn past_the_quota_the_least_recently_used_unpinned_go_first() {
        let mut store = ComponentStore::new(3 << 20);
        let a = store.store("a".into(), component(1, 1)).unwrap();
        let b = store.store("b".into(), component(2, 1)).unwrap();
        let c = store.store("c".into(), component(3, 1)).unwrap();
        assert!(store.pin(&a), "a is needed by a task");
        // b is used again, so c is now the least recently used.
        store.store("b".into(), component(2, 1)).unwrap();
        let d = store.store("d".into(), component(4, 1)).unwrap();
        assert!(store.get(&c).is_none(), "c evicted");
        assert!(store.get(&a).is_some() && store.get(&b).is_some() && store.get(&d).is_some());
        assert_eq!(store.bytes(), 3 << 20);
        assert!(store.missing(&c).contains("upload it first"));
    }

    #[test]
    fn an_upload_that_cannot_fit_is_refused_and_its_submitters_are_told_why() {
        let mut store = ComponentStore::new(2 << 20);
        let a = store.store("a".into(), component(1, 1)).unwrap();
        let b = store.store("b".into(), component(2, 1)).unwrap();
        store.pin(&a);
        store.pin(&b);
        let refused = store.store("big.wasm".into(), component(3, 1)).unwrap_err();
        assert!(refused.contains("--component-store"), "{refused}");
        let digest = Digest::of(&component(3, 1));
        assert_eq!(store.missing(&digest), refused);
        // Once a task is done with b, there is room.
        store.unpin(&b);
        store.store("big.wasm".into(), component(3, 1)).unwrap();
        assert!(store.get(&b).is_none());
        assert_eq!(store.len(), 2);
    }
}
