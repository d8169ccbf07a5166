//! Typed, prefixed, time-sortable ids (`app_…`, `ep_…`, `msg_…`).
//!
//! An id is a prefix and 22 base62 characters encoding 6 bytes of milliseconds and
//! 10 random bytes. Base62 in ASCII order keeps ids sortable by creation time, which
//! lets pagination use the last id seen as its iterator.

use crate::UnixMs;

/// The prefixes of every kind of id Hookline hands out.
pub mod prefix {
    pub const APP: &str = "app";
    pub const ENDPOINT: &str = "ep";
    pub const MESSAGE: &str = "msg";
    pub const ATTEMPT: &str = "atmpt";
    pub const DELIVERY: &str = "dlv";
    pub const TASK: &str = "qtask";
    pub const TOKEN: &str = "tok";
    pub const SOURCE: &str = "src";
}

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters after an id's prefix and `_`.
pub const ENCODED_LEN: usize = 22;

/// Builds an id from its prefix, creation time and 10 random bytes.
pub fn new_id(prefix: &str, now: UnixMs, random: [u8; 10]) -> String {
    let mut raw = [0u8; 16];
    let ms = (now.max(0) as u64).to_be_bytes();
    raw[..6].copy_from_slice(&ms[2..]);
    raw[6..].copy_from_slice(&random);
    let mut value = u128::from_be_bytes(raw);
    let mut digits = [b'0'; ENCODED_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    let mut id = String::with_capacity(prefix.len() + 1 + ENCODED_LEN);
    id.push_str(prefix);
    id.push('_');
    id.push_str(std::str::from_utf8(&digits).expect("alphabet is ASCII"));
    id
}

/// The random part of an id made by a process that counts its ids: a counter first, so
/// ids made in the same millisecond still sort in creation order, then 6 random bytes.
pub fn counted_random(counter: u32, random: [u8; 6]) -> [u8; 10] {
    let mut bytes = [0u8; 10];
    bytes[..4].copy_from_slice(&counter.to_be_bytes());
    bytes[4..].copy_from_slice(&random);
    bytes
}

/// True when `s` looks like an id of this kind, so a lookup can choose between
/// the id and the user-given `uid` columns.
pub fn has_prefix(s: &str, prefix: &str) -> bool {
    s.len() == prefix.len() + 1 + ENCODED_LEN
        && s.starts_with(prefix)
        && s.as_bytes()[prefix.len()] == b'_'
        && s[prefix.len() + 1..].bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_then_randomness() {
        let a = new_id(prefix::MESSAGE, 1_700_000_000_000, [255; 10]);
        let b = new_id(prefix::MESSAGE, 1_700_000_000_001, [0; 10]);
        let c = new_id(prefix::MESSAGE, 1_700_000_000_001, [1; 10]);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), 4 + 22);
    }

    #[test]
    fn counted_ids_sort_within_one_millisecond() {
        let ids: Vec<String> =
            (0..100).map(|n| new_id(prefix::APP, 5, counted_random(n, [(99 - n) as u8; 6]))).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn prefix_check_rejects_uids_and_other_kinds() {
        let id = new_id(prefix::APP, 1, [7; 10]);
        assert!(has_prefix(&id, prefix::APP));
        assert!(!has_prefix(&id, prefix::ENDPOINT));
        assert!(!has_prefix("app_merchant-42", prefix::APP));
    }
}
