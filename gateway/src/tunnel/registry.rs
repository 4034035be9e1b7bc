//! Which Session owns which WireGuard key and tunnel address on this gateway. Pure
//! bookkeeping: the address itself is claimed in the store first (see
//! [`claims`](super::claims)), and the [`Tunnel`](super::Tunnel) applies the outcome to the
//! WireGuard endpoint.

use super::addresses::{client_index, AddressPair};
use postern_common::wireguard::PublicKey;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// A connected Session's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The Session's name, one allocation shared by every index of the registry (at 10,000
    /// idle peers, per-peer bytes count).
    pub session: Arc<str>,
    pub key: PublicKey,
    pub addresses: AddressPair,
    /// When the Session expires (unix seconds): the tunnel cuts it then, with no request
    /// needed to notice.
    pub expires_unix: i64,
}

/// Why a connect was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("this WireGuard public key is already used by another session")]
    KeyInUse,
    #[error("tunnel address {0} is still in use on this gateway")]
    AddressInUse(std::net::Ipv4Addr),
}

/// What a connect changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub entry: PeerEntry,
    /// The Session's previous key, to remove from the endpoint (a reconnect with a new key).
    pub replaced: Option<PublicKey>,
}

/// Sessions' peers, by session, key and address index.
#[derive(Debug, Default)]
pub struct Registry {
    by_session: HashMap<Arc<str>, PeerEntry>,
    by_key: HashMap<PublicKey, Arc<str>>,
    by_index: HashMap<u16, Arc<str>>,
    /// Addresses of revoked peers whose resets are still on their way: not reused here
    /// until [`Registry::release`].
    draining: BTreeSet<u16>,
}

impl Registry {
    /// Registers `key` for `session` at `addresses` (claimed for it beforehand); a Session
    /// already connected keeps its address, and `addresses` is ignored.
    pub fn connect(
        &mut self,
        session: &str,
        key: PublicKey,
        expires_unix: i64,
        addresses: AddressPair,
    ) -> Result<Connected, RegistryError> {
        if let Some(owner) = self.by_key.get(&key) {
            if &**owner != session {
                return Err(RegistryError::KeyInUse);
            }
        }
        if let Some(entry) = self.by_session.get_mut(session) {
            let old = std::mem::replace(&mut entry.key, key);
            self.by_key.remove(&old);
            self.by_key.insert(key, entry.session.clone());
            return Ok(Connected {
                entry: entry.clone(),
                replaced: (old != key).then_some(old),
            });
        }
        if self.draining.contains(&addresses.index) || self.by_index.contains_key(&addresses.index)
        {
            return Err(RegistryError::AddressInUse(addresses.v4));
        }
        let name: Arc<str> = Arc::from(session);
        let entry = PeerEntry {
            session: name.clone(),
            key,
            addresses,
            expires_unix,
        };
        self.by_key.insert(key, name.clone());
        self.by_index.insert(addresses.index, name.clone());
        self.by_session.insert(name, entry.clone());
        Ok(Connected {
            entry,
            replaced: None,
        })
    }

    /// Forgets `session`'s peer and frees its address.
    pub fn disconnect(&mut self, session: &str) -> Option<PeerEntry> {
        let entry = self.by_session.remove(session)?;
        self.by_key.remove(&entry.key);
        self.by_index.remove(&entry.addresses.index);
        Some(entry)
    }

    /// The Session of the peer with `key`.
    pub fn session_of_key(&self, key: &PublicKey) -> Option<Arc<str>> {
        self.by_key.get(key).cloned()
    }

    /// First step of a revocation: `session` no longer owns its key or address (new
    /// connections from it are nobody's), but the address stays allocated until
    /// [`Registry::release`], so the resets still on their way to the old peer can never
    /// reach a new Session given the same address.
    pub fn begin_revoke(&mut self, session: &str) -> Option<PeerEntry> {
        let entry = self.by_session.remove(session)?;
        self.by_key.remove(&entry.key);
        self.by_index.remove(&entry.addresses.index);
        self.draining.insert(entry.addresses.index);
        Some(entry)
    }

    /// Frees the address of a revoked peer once its WireGuard peer is gone.
    pub fn release(&mut self, addresses: AddressPair) {
        self.draining.remove(&addresses.index);
    }

    /// The indices this gateway cannot hand out now: connected Sessions' and draining ones.
    pub fn busy(&self) -> BTreeSet<u16> {
        let mut busy = self.draining.clone();
        busy.extend(self.by_index.keys().copied());
        busy
    }

    /// Whether a connected Session uses `key` (then its WireGuard peer must stay).
    pub fn key_in_use(&self, key: &PublicKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// The connected Sessions.
    pub fn sessions(&self) -> impl Iterator<Item = &Arc<str>> {
        self.by_session.keys()
    }

    /// The earliest expiry of a connected Session (unix seconds).
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.by_session.values().map(|e| e.expires_unix).min()
    }

    /// The Session that owns tunnel address `ip`.
    pub fn session_at(&self, ip: IpAddr) -> Option<&str> {
        let index = client_index(ip)?;
        self.by_index.get(&index).map(|s| &**s)
    }

    /// The Session that owns tunnel address `ip`, as the shared name.
    pub fn owner_at(&self, ip: IpAddr) -> Option<Arc<str>> {
        let index = client_index(ip)?;
        self.by_index.get(&index).cloned()
    }

    /// The peer of `session`.
    pub fn get(&self, session: &str) -> Option<&PeerEntry> {
        self.by_session.get(session)
    }

    /// Number of connected Sessions.
    pub fn len(&self) -> usize {
        self.by_session.len()
    }

    /// Whether no Session is connected.
    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::addresses::{client_pair, lowest_free_client_index};
    use postern_common::wireguard::KeyPair;

    /// What the tunnel does on one gateway with nothing else claiming: the lowest index not
    /// busy here.
    fn join(
        r: &mut Registry,
        session: &str,
        key: PublicKey,
        expires: i64,
    ) -> Result<Connected, RegistryError> {
        let index = lowest_free_client_index(&r.busy(), 0).unwrap();
        r.connect(session, key, expires, client_pair(index))
    }

    #[test]
    fn connect_reconnect_disconnect() {
        let mut r = Registry::default();
        let (k1, k2, k3) = (
            KeyPair::generate().public,
            KeyPair::generate().public,
            KeyPair::generate().public,
        );
        let a = join(&mut r, "s1", k1, 100).unwrap();
        assert_eq!(a.entry.addresses.v4.to_string(), "100.64.0.2");
        assert_eq!(a.replaced, None);
        // Same key again: nothing replaced, same address (the one offered is ignored).
        assert_eq!(
            r.connect("s1", k1, 100, client_pair(9)).unwrap().entry,
            a.entry
        );
        // New key for the same session: the old one is replaced, the address kept.
        let b = join(&mut r, "s1", k2, 100).unwrap();
        assert_eq!(b.replaced, Some(k1));
        assert_eq!(b.entry.addresses, a.entry.addresses);
        // Another session cannot take a key in use, nor an address in use.
        assert_eq!(join(&mut r, "s2", k2, 100), Err(RegistryError::KeyInUse));
        assert_eq!(
            r.connect("s2", k3, 50, a.entry.addresses),
            Err(RegistryError::AddressInUse(a.entry.addresses.v4))
        );
        let c = join(&mut r, "s2", k3, 50).unwrap();
        assert_eq!(c.entry.addresses.v4.to_string(), "100.64.0.3");
        assert_eq!(r.session_at("100.64.0.3".parse().unwrap()), Some("s2"));
        assert_eq!(r.session_at("fd70:7374::2".parse().unwrap()), Some("s1"));
        assert_eq!(r.earliest_expiry(), Some(50));
        assert_eq!(r.busy(), BTreeSet::from([2, 3]));
        let s1 = r.session_of_key(&k2).unwrap();
        assert_eq!(&*r.disconnect(&s1).unwrap().session, "s1");
        assert_eq!(r.session_at("100.64.0.2".parse().unwrap()), None);
        assert_eq!(r.len(), 1);
        // The freed address goes to the next session.
        let d = join(&mut r, "s3", k1, 100).unwrap();
        assert_eq!(d.entry.addresses.v4.to_string(), "100.64.0.2");
        assert!(r.disconnect("nope").is_none());
    }

    #[test]
    fn a_revoked_address_is_not_reused_until_released() {
        let mut r = Registry::default();
        let (k1, k2, k3) = (
            KeyPair::generate().public,
            KeyPair::generate().public,
            KeyPair::generate().public,
        );
        let a = join(&mut r, "s1", k1, 100).unwrap().entry;
        let gone = r.begin_revoke("s1").unwrap();
        assert_eq!(gone, a);
        // The Session no longer owns anything...
        assert_eq!(r.session_at(IpAddr::V4(a.addresses.v4)), None);
        assert!(!r.key_in_use(&k1));
        assert!(r.begin_revoke("s1").is_none());
        assert_eq!(r.earliest_expiry(), None);
        // ...but its address stays taken while its resets drain.
        assert!(r.busy().contains(&a.addresses.index));
        assert_eq!(
            r.connect("s2", k2, 100, a.addresses),
            Err(RegistryError::AddressInUse(a.addresses.v4))
        );
        let b = join(&mut r, "s2", k2, 100).unwrap().entry;
        assert_ne!(b.addresses, a.addresses);
        r.release(gone.addresses);
        let c = join(&mut r, "s3", k3, 100).unwrap().entry;
        assert_eq!(c.addresses, a.addresses);
        assert_eq!(r.sessions().count(), 2);
    }
}
