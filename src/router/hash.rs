//! PostgreSQL's hash partitioning functions, bit for bit, so that a row's shard
//! equals the partition `PARTITION BY HASH (key)` with `MODULUS = shards` picks.
//!
//! PostgreSQL computes `hash_combine64(0, <type>_hash_extended(key, HASH_PARTITION_SEED))`
//! and takes it modulo the partition count (`compute_partition_hash_value` and
//! `get_partition_for_tuple` in its source). The per-type functions are Bob
//! Jenkins' lookup3 with a 64-bit seed (`hash_bytes_extended`,
//! `hash_bytes_uint32_extended` in `src/common/hashfn.c`).

use super::key::KeyValue;

/// `HASH_PARTITION_SEED` from PostgreSQL's `partition.h`.
const HASH_PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

fn seeded(init: u32, seed: u64) -> (u32, u32, u32) {
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

fn le32(k: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w[..k.len().min(4)].copy_from_slice(&k[..k.len().min(4)]);
    u32::from_le_bytes(w)
}

/// `hash_bytes_extended` (little-endian byte order, as on x86-64 and aarch64).
pub fn hash_bytes_extended(k: &[u8], seed: u64) -> u64 {
    let len = k.len() as u32;
    let (mut a, mut b, mut c) = seeded(
        0x9e37_79b9u32.wrapping_add(len).wrapping_add(3_923_095),
        seed,
    );
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(le32(&rest[0..4]));
        b = b.wrapping_add(le32(&rest[4..8]));
        c = c.wrapping_add(le32(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 0..=11 bytes; the lowest byte of c is reserved for the length
    // in the original, so c takes bytes 8..11 shifted up by one byte.
    let n = rest.len();
    if n > 8 {
        let mut w = [0u8; 4];
        w[1..1 + (n - 8)].copy_from_slice(&rest[8..]);
        c = c.wrapping_add(u32::from_le_bytes(w));
    }
    if n > 4 {
        b = b.wrapping_add(le32(&rest[4..n.min(8)]));
    }
    if n > 0 {
        a = a.wrapping_add(le32(&rest[0..n.min(4)]));
    }
    final_mix(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// `hash_bytes_uint32_extended`.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) =
        seeded(0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095), seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// `hashint8extended`: folds the high half in so equal values of int2/4/8 hash alike.
fn hash_int8_extended(v: i64, seed: u64) -> u64 {
    let mut lo = v as u32;
    let hi = (v >> 32) as u32;
    lo ^= if v >= 0 { hi } else { !hi };
    hash_uint32_extended(lo, seed)
}

/// The 64-bit row hash PostgreSQL's hash partitioning computes for one key column.
pub fn partition_hash(key: &KeyValue, is_int8: bool) -> u64 {
    let h = match key {
        KeyValue::Int(v) if is_int8 => hash_int8_extended(*v, HASH_PARTITION_SEED),
        // int2 and int4 are widened to int32 and hashed as such.
        KeyValue::Int(v) => hash_uint32_extended(*v as i32 as u32, HASH_PARTITION_SEED),
        KeyValue::Text(s) => hash_bytes_extended(s.as_bytes(), HASH_PARTITION_SEED),
        KeyValue::Uuid(u) => hash_bytes_extended(u, HASH_PARTITION_SEED),
    };
    // hash_combine64(0, h)
    h.wrapping_add(0x49a0_f4dd_15e5_a8e3)
}
