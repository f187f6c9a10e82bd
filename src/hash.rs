//! The one stable 64-bit hash aviary uses where a hash must never change between runs,
//! machines or versions: the train/validation split, tweet keys, novelty n-grams.

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
