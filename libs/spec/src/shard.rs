//! Count-based shard split: the baseline every other strategy is measured against.

/// Splits `tests` into `n` contiguous shards whose sizes differ by at most one, preserving
/// order. The first `len % n` shards get the extra test. `n == 0` is treated as 1; when there
/// are fewer tests than shards the trailing shards are empty.
pub fn split_by_count<T: Clone>(tests: &[T], n: usize) -> Vec<Vec<T>> {
    let n = n.max(1);
    (0..n)
        .map(|i| tests[range(tests.len(), i, n)].to_vec())
        .collect()
}

/// Shard `index` (0-based) of `n` as [`split_by_count`] would produce it; empty when
/// `index >= n`.
pub fn shard_of_count<T: Clone>(tests: &[T], index: usize, n: usize) -> Vec<T> {
    let n = n.max(1);
    if index >= n {
        return Vec::new();
    }
    tests[range(tests.len(), index, n)].to_vec()
}

fn range(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let base = len / n;
    let extra = len % n;
    let start = i * base + i.min(extra);
    let size = base + usize::from(i < extra);
    start..start + size
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(
            split_by_count(&[1, 2, 3, 4, 5], 2),
            vec![vec![1, 2, 3], vec![4, 5]]
        );
        assert_eq!(split_by_count(&[1], 3), vec![vec![1], vec![], vec![]]);
        assert_eq!(split_by_count(&[1, 2], 0), vec![vec![1, 2]]);
        assert_eq!(shard_of_count(&[1, 2, 3, 4, 5], 1, 2), vec![4, 5]);
        assert!(shard_of_count(&[1, 2], 5, 2).is_empty());
        assert_eq!(split_by_count::<u8>(&[], 2), vec![Vec::<u8>::new(), vec![]]);
    }

    proptest! {
        #[test]
        fn every_test_once_in_order(tests in proptest::collection::vec(any::<u32>(), 0..200), n in 0usize..20) {
            let shards = split_by_count(&tests, n);
            prop_assert_eq!(shards.len(), n.max(1));
            let flat: Vec<u32> = shards.iter().flatten().copied().collect();
            prop_assert_eq!(&flat, &tests);
            let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
            prop_assert!(max - min <= 1);
            prop_assert_eq!(&split_by_count(&tests, n), &shards);
            for (i, shard) in shards.iter().enumerate() {
                prop_assert_eq!(&shard_of_count(&tests, i, n), shard);
            }
        }
    }
}
