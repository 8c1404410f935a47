//! Ordered include/exclude glob lists, for the branch, tag, repository and path filters of
//! webhook triggers.
//!
//! `["src/**", "!src/vendor/**"]`: patterns are read in order, a leading `!` excludes, the
//! last pattern that matches decides, and a list of exclusions only starts from
//! "everything". `*`, `?` and `[...]` stay within one `/`-separated segment; `**` as a
//! whole segment crosses any number of them (`docs/**`, `**/*.md`).

use glob::{MatchOptions, Pattern};

const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// A compiled list of globs.
#[derive(Debug, Clone)]
pub struct GlobList {
    rules: Vec<(bool, Pattern)>,
    any_include: bool,
}

impl GlobList {
    /// Compiles `patterns`; the error names the index of the first bad one and why.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<GlobList, (usize, String)> {
        let mut rules = Vec::with_capacity(patterns.len());
        for (i, raw) in patterns.iter().enumerate() {
            let raw = raw.as_ref();
            let (include, body) = match raw.strip_prefix('!') {
                Some(rest) => (false, rest),
                None => (true, raw),
            };
            if body.trim().is_empty() {
                return Err((i, format!("empty pattern `{raw}`")));
            }
            let pattern =
                Pattern::new(body).map_err(|e| (i, format!("invalid glob `{raw}`: {e}")))?;
            rules.push((include, pattern));
        }
        let any_include = rules.iter().any(|(inc, _)| *inc);
        Ok(GlobList { rules, any_include })
    }

    /// Whether the list has no patterns (and so filters nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `text` is included: the last matching pattern decides; with no matching
    /// pattern, included only when the list has no include patterns.
    pub fn matches(&self, text: &str) -> bool {
        let mut included = !self.any_include;
        for (include, pattern) in &self.rules {
            if pattern.matches_with(text, OPTIONS) {
                included = *include;
            }
        }
        included
    }

    /// Whether at least one of `texts` is included.
    pub fn matches_any<S: AsRef<str>>(&self, texts: &[S]) -> bool {
        texts.iter().any(|t| self.matches(t.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(p: &[&str]) -> GlobList {
        GlobList::new(p).unwrap()
    }

    #[test]
    fn branches() {
        let l = list(&["main", "release/*"]);
        assert!(l.matches("main"));
        assert!(l.matches("release/1.2"));
        assert!(
            !l.matches("release/1.2/hotfix"),
            "`*` stays within a segment"
        );
        assert!(!l.matches("feature/x"));
        assert!(!l.matches("mainline"));
    }

    #[test]
    fn paths_with_exclusions() {
        let l = list(&["src/**", "!src/vendor/**", "Cargo.toml"]);
        assert!(l.matches("src/lib.rs"));
        assert!(l.matches("src/a/b/c.rs"));
        assert!(!l.matches("src/vendor/x/y.rs"));
        assert!(l.matches("Cargo.toml"));
        assert!(!l.matches("docs/index.md"));
        assert!(l.matches_any(&["docs/a.md", "src/main.rs"]));
        assert!(!l.matches_any(&["docs/a.md", "README.md"]));
        assert!(!l.matches_any::<&str>(&[]));
    }

    #[test]
    fn only_exclusions_start_from_everything() {
        let l = list(&["!docs/**", "!**/*.md"]);
        assert!(l.matches("src/lib.rs"));
        assert!(!l.matches("docs/guide/intro.txt"));
        assert!(!l.matches("README.md"));
        assert!(!l.matches("src/notes/todo.md"));
    }

    #[test]
    fn last_match_wins() {
        let l = list(&["**", "!docs/**", "docs/api/**"]);
        assert!(l.matches("docs/api/v1.md"));
        assert!(!l.matches("docs/intro.md"));
        assert!(l.matches("a/b"));
    }

    #[test]
    fn bad_patterns_name_their_index() {
        let (i, e) = GlobList::new(&["main", "a/**b"]).unwrap_err();
        assert_eq!(i, 1);
        assert!(e.contains("invalid glob `a/**b`"), "{e}");
        assert_eq!(GlobList::new(&["!"]).unwrap_err().0, 0);
        assert_eq!(GlobList::new(&["ok", ""]).unwrap_err().0, 1);
    }

    proptest! {
        /// A path below an excluded directory never matches, whatever came before.
        #[test]
        fn excluded_directory_wins(segs in proptest::collection::vec("[a-z]{1,6}", 1..5)) {
            let path = format!("docs/{}", segs.join("/"));
            prop_assert!(!list(&["**", "src/**", "!docs/**"]).matches(&path));
            prop_assert!(list(&["**"]).matches(&path));
            prop_assert!(list(&["!src/**"]).matches(&path));
        }

        /// An empty list filters nothing, a literal matches only itself.
        #[test]
        fn literals_match_themselves(a in "[a-z]{1,8}(/[a-z]{1,8}){0,3}", b in "[a-z]{1,8}") {
            prop_assert!(list(&[a.as_str()]).matches(&a));
            prop_assert_eq!(list(&[a.as_str()]).matches(&b), a == b);
            prop_assert!(list(&[]).matches(&a));
        }
    }
}
