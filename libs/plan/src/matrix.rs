//! Matrix expansion and listing hygiene.

use std::collections::{BTreeMap, HashSet};

use crate::{Error, Result, TestId};

/// Cartesian product of the parameter lists: one map per combination, the first key varying
/// slowest (key order, then value order). No parameters give one empty combination. Errors
/// when a parameter has no values, or when the product exceeds `limit` (the error says how many
/// combinations it would have been).
pub fn expand_matrix(
    matrix: &BTreeMap<String, Vec<String>>,
    limit: usize,
) -> Result<Vec<BTreeMap<String, String>>> {
    let mut count: u128 = 1;
    for (key, values) in matrix {
        if values.is_empty() {
            return Err(Error::EmptyMatrixParameter(key.clone()));
        }
        count = count.saturating_mul(values.len() as u128);
    }
    if count > limit as u128 {
        return Err(Error::MatrixTooLarge { count, limit });
    }
    let mut combinations = vec![BTreeMap::new()];
    for (key, values) in matrix {
        combinations = combinations
            .into_iter()
            .flat_map(|combination| {
                values.iter().map(move |value| {
                    let mut next = combination.clone();
                    next.insert(key.clone(), value.clone());
                    next
                })
            })
            .collect();
    }
    Ok(combinations)
}

/// Duplicate ids in a listing: the listing deduplicated keeping first occurrences, and each
/// duplicated id once, in the order its first repeat appears.
pub fn dedup(listed: &[TestId]) -> (Vec<TestId>, Vec<TestId>) {
    let mut seen = HashSet::with_capacity(listed.len());
    let mut reported = HashSet::new();
    let mut unique = Vec::with_capacity(listed.len());
    let mut duplicates = Vec::new();
    for id in listed {
        if seen.insert(id.as_str()) {
            unique.push(id.clone());
        } else if reported.insert(id.as_str()) {
            duplicates.push(id.clone());
        }
    }
    (unique, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matrix(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[test]
    fn expands_in_key_then_value_order() {
        let m = matrix(&[
            ("os", &["linux", "mac"]),
            ("db", &["pg", "sqlite", "mysql"]),
        ]);
        let combos = expand_matrix(&m, 256).unwrap();
        let flat: Vec<String> = combos
            .iter()
            .map(|c| format!("{}/{}", c["db"], c["os"]))
            .collect();
        // Keys are ordered: "db" first (slowest), then "os".
        assert_eq!(
            flat,
            [
                "pg/linux",
                "pg/mac",
                "sqlite/linux",
                "sqlite/mac",
                "mysql/linux",
                "mysql/mac"
            ]
        );
        assert_eq!(
            expand_matrix(&BTreeMap::new(), 256).unwrap(),
            vec![BTreeMap::new()]
        );
    }

    #[test]
    fn too_large_says_how_large() {
        let values: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let values30: Vec<String> = (0..30).map(|i| i.to_string()).collect();
        let m: BTreeMap<String, Vec<String>> =
            [("a".to_owned(), values), ("b".to_owned(), values30)].into();
        let err = expand_matrix(&m, 256).unwrap_err();
        assert_eq!(
            err.to_string(),
            "matrix expands to 300 combinations, over the limit of 256: drop parameter values or raise the limit"
        );
        assert_eq!(expand_matrix(&m, 300).unwrap().len(), 300);
        let empty = matrix(&[("os", &[])]);
        assert_eq!(
            expand_matrix(&empty, 256).unwrap_err().to_string(),
            "matrix parameter \"os\" has no values: give it at least one value or remove it"
        );
    }

    #[test]
    fn dedup_reports_each_duplicate_once() {
        let listed: Vec<TestId> = ["a", "b", "a", "c", "b", "a"].map(String::from).to_vec();
        let (unique, dups) = dedup(&listed);
        assert_eq!(unique, ["a", "b", "c"]);
        assert_eq!(dups, ["a", "b"]);
    }

    proptest! {
        #[test]
        fn matrix_is_the_full_product(
            m in proptest::collection::btree_map("[a-d]", proptest::collection::vec("[x-z]", 1..4), 0..4),
        ) {
            let combos = expand_matrix(&m, 1000).unwrap();
            let product: usize = m.values().map(Vec::len).product();
            prop_assert_eq!(combos.len(), product);
            for c in &combos {
                prop_assert!(c.keys().eq(m.keys()));
            }
        }

        #[test]
        fn dedup_keeps_first_occurrences(listed in proptest::collection::vec("[a-e]", 0..30)) {
            let (unique, dups) = dedup(&listed);
            let mut seen = HashSet::new();
            let expected: Vec<String> = listed.iter().filter(|id| seen.insert(*id)).cloned().collect();
            prop_assert_eq!(unique, expected);
            for d in &dups {
                prop_assert!(listed.iter().filter(|id| *id == d).count() >= 2);
            }
        }
    }
}
