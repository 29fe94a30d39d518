//! Maps keyed by values that already are hashes (script ids, upstream pool keys): the
//! key is used as its own hash instead of being hashed again with SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher that passes a `u64` key through.
#[derive(Default, Clone, Copy)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are meant; anything else still spreads over the bits.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map from an already hashed `u64` key.
pub type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_their_own_hash() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<Prehashed>::default();
        assert_eq!(b.hash_one(0xdead_beef_u64), 0xdead_beef);
        let mut m = PrehashedMap::default();
        m.insert(7, "a");
        m.insert(u64::MAX, "b");
        assert_eq!(m.get(&7), Some(&"a"));
        assert_eq!(m.get(&u64::MAX), Some(&"b"));
    }
}
