//! key → shard: xxh3-64 of the key bytes, modulo the shard count.
//!
//! The mapping is part of the product's contract: a service that keeps its own data per shard
//! relies on a key landing on the same shard on every platform and every release. The golden-value
//! test below pins it; never change it without a migration story.

use xxhash_rust::xxh3::xxh3_64;

use crate::types::ShardId;

/// A key that can be mapped to a shard.
///
/// Integers hash their little-endian bytes; strings their UTF-8 bytes; byte slices themselves.
/// Implement it for your own key types by hashing a stable byte form (never `std::hash::Hash`,
/// whose output may change between Rust releases).
pub trait ShardKey {
    /// The stable 64-bit hash of this key.
    fn shard_hash(&self) -> u64;
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl ShardKey for $t {
            #[inline]
            fn shard_hash(&self) -> u64 {
                xxh3_64(&self.to_le_bytes())
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128);

impl ShardKey for str {
    #[inline]
    fn shard_hash(&self) -> u64 {
        xxh3_64(self.as_bytes())
    }
}

impl ShardKey for String {
    #[inline]
    fn shard_hash(&self) -> u64 {
        xxh3_64(self.as_bytes())
    }
}

impl ShardKey for [u8] {
    #[inline]
    fn shard_hash(&self) -> u64 {
        xxh3_64(self)
    }
}

impl ShardKey for Vec<u8> {
    #[inline]
    fn shard_hash(&self) -> u64 {
        xxh3_64(self)
    }
}

impl<T: ShardKey + ?Sized> ShardKey for &T {
    #[inline]
    fn shard_hash(&self) -> u64 {
        (**self).shard_hash()
    }
}

/// The shard `key` maps to among `shard_count` shards.
///
/// # Panics
/// If `shard_count` is 0; a cluster config with zero shards is refused at start.
#[inline]
pub fn shard_for<K: ShardKey + ?Sized>(key: &K, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "shard_count is validated to be > 0 at start");
    ShardId((key.shard_hash() % u64::from(shard_count)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: these must hold on every platform and in every release. Cross-checked against
    /// the reference xxh3 implementation (Python `xxhash.xxh3_64_intdigest`).
    #[test]
    fn golden_hashes() {
        assert_eq!(0u64.shard_hash(), 0xc77b_3abb_6f87_acd9);
        assert_eq!(42u64.shard_hash(), 0xd5a6_f8c8_38df_27c8);
        assert_eq!("user-42".shard_hash(), 0x50fe_4b21_cf7b_09cd);
        assert_eq!(b"\x00\x01\x02".as_slice().shard_hash(), 0x5f42_99fc_161c_9cbb);
        assert_eq!("".shard_hash(), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn golden_shards() {
        let got: Vec<u32> =
            ["user-1", "user-2", "user-3", "cart:9", ""].iter().map(|k| shard_for(*k, 1024).0).collect();
        assert_eq!(got, vec![457, 212, 597, 962, 194]);
        assert_eq!(shard_for(&7u64, 1024), ShardId(687));
        assert_eq!(shard_for(&-7i32, 1024), ShardId(234));
    }

    #[test]
    fn string_and_bytes_agree() {
        assert_eq!("abc".shard_hash(), b"abc".as_slice().shard_hash());
        assert_eq!(String::from("abc").shard_hash(), b"abc".to_vec().shard_hash());
    }

    #[test]
    fn integers_hash_little_endian_bytes() {
        assert_eq!(0x0102u16.shard_hash(), [2u8, 1].as_slice().shard_hash());
    }
}
