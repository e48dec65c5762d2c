//! Which partitions a key's rows go to: its leaderboard bucket and its history day.

use uuid::Uuid;

/// A profile's leaderboard bucket: a stable FNV-1a hash of its id, so every replica agrees.
pub fn bucket_of(profile_id: Uuid, buckets: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in profile_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % buckets.max(1) as u64) as i32
}

/// The UTC day of an event, the history partition.
pub fn day_of(micros: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        let id = Uuid::from_u128(0x6f1c2b1e_8c3a_4f7e_9a51_0c2d3e4f5a6b);
        assert_eq!(bucket_of(id, 16), bucket_of(id, 16));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u128 {
            let b = bucket_of(Uuid::from_u128(i * 7919), 16);
            assert!((0..16).contains(&b));
            seen.insert(b);
        }
        assert_eq!(seen.len(), 16, "all buckets used");
        assert_eq!(bucket_of(id, 1), 0);
    }

    #[test]
    fn day_is_utc() {
        // 2026-05-28T23:30:00-02:00 is 2026-05-29 in UTC.
        let t = chrono::DateTime::parse_from_rfc3339("2026-05-28T23:30:00-02:00").unwrap();
        assert_eq!(day_of(t.timestamp_micros()).to_string(), "2026-05-29");
    }
}
