//! Topic names, filters and patterns, shared by the ACLs, MQTT and the mirror: MQTT topic names
//! and filters (validation, matching, shared-subscription names), the subscription trie that
//! finds every subscriber of a topic in one walk (cost grows with the topic's depth and the
//! wildcards on its path, not with the number of subscribers), and the `*` globs that name log
//! topics in ACLs and mirror configs.

use std::collections::HashMap;
use std::hash::Hash;

/// Why a topic name or filter is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("topic longer than 65535 bytes")]
    TooLong,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("wildcard ('+' or '#') in a topic name")]
    WildcardInName,
    #[error("'#' must be the last level of a filter, alone")]
    BadHash,
    #[error("'+' must fill a whole level of a filter")]
    BadPlus,
    #[error(
        "shared subscription needs $share/<group>/<filter> with a group free of '/', '+' and '#'"
    )]
    BadShare,
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > 65535 {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name as it may appear in a PUBLISH.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a (non-shared) topic filter.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadPlus);
        }
    }
    Ok(())
}

/// A subscription filter as a client sent it: plain, or shared by a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Splits `$share/GROUP/filter` and validates both parts.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter)?;
        return Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        });
    }
    validate_filter(raw)?;
    Ok(ParsedFilter {
        share_group: None,
        filter: raw,
    })
}

/// Whether `filter` (valid, not shared) matches topic name `topic`. Filters starting with a
/// wildcard do not match topics starting with `$` (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Subscriptions by filter, each filter holding values by subscriber key.
#[derive(Debug)]
pub struct Trie<K, V> {
    root: Node<K, V>,
    len: usize,
}

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    /// Subscribers whose filter ends here.
    here: HashMap<K, V>,
    /// Subscribers whose filter ends here with `/#` (or is `#` at the root).
    rest: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            here: HashMap::new(),
            rest: HashMap::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.rest.is_empty()
    }
}

impl<K: Hash + Eq + Clone, V> Default for Trie<K, V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V> Trie<K, V> {
    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `key`'s subscription to `filter` (a valid filter).
    pub fn insert(&mut self, filter: &str, key: K, value: V) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                if node.rest.insert(key, value).is_none() {
                    self.len += 1;
                }
                return;
            }
            node = node.children.entry(level.into()).or_default();
        }
        if node.here.insert(key, value).is_none() {
            self.len += 1;
        }
    }

    /// Removes `key`'s subscription to `filter`; returns its value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let v = Self::remove_at(&mut self.root, &levels, key);
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    fn remove_at(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
        match levels {
            [] => node.here.remove(key),
            ["#"] => node.rest.remove(key),
            [first, rest @ ..] => {
                let child = node.children.get_mut(*first)?;
                let v = Self::remove_at(child, rest, key);
                if child.is_empty() {
                    node.children.remove(*first);
                }
                v
            }
        }
    }

    /// Calls `found` for every subscription whose filter matches topic name `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut found: impl FnMut(&'a K, &'a V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, &levels, dollar, true, &mut found);
    }

    fn walk<'a>(
        node: &'a Node<K, V>,
        levels: &[&str],
        dollar: bool,
        at_root: bool,
        found: &mut impl FnMut(&'a K, &'a V),
    ) {
        let wild_ok = !(at_root && dollar);
        if wild_ok {
            for (k, v) in &node.rest {
                found(k, v);
            }
        }
        let Some((first, rest)) = levels.split_first() else {
            for (k, v) in &node.here {
                found(k, v);
            }
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::walk(child, rest, dollar, false, found);
        }
        if wild_ok {
            if let Some(child) = node.children.get("+") {
                Self::walk(child, rest, dollar, false, found);
            }
        }
    }
}

/// A topic pattern: `*` matches any run of characters; everything else itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_filters() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("/").is_ok());
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert!(validate_filter("a/+/#").is_ok());
        assert!(validate_filter("#").is_ok());
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::BadHash));
        assert_eq!(validate_filter("a#"), Err(TopicError::BadHash));
        assert_eq!(validate_filter("a/b+"), Err(TopicError::BadPlus));
        let p = parse_filter("$share/g1/a/+").expect("shared");
        assert_eq!(p.share_group, Some("g1"));
        assert_eq!(p.filter, "a/+");
        assert_eq!(parse_filter("$share/g1"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share//a"), Err(TopicError::BadShare));
    }

    #[test]
    fn matching_rules() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+", ""));
        assert!(matches("+/+", "/"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("$s".to_string())
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("non-empty", |(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                let f = levels.join("/");
                validate_filter(&f).ok().map(|_| f)
            })
    }

    proptest! {
        /// The trie finds exactly the filters that `matches` accepts.
        #[test]
        fn trie_agrees_with_matches(
            filters in proptest::collection::vec(filter(), 1..20),
            topic in proptest::collection::vec(level(), 1..5),
        ) {
            let topic = topic.join("/");
            let mut trie = Trie::default();
            for (i, f) in filters.iter().enumerate() {
                trie.insert(f, i, ());
            }
            let mut got = Vec::new();
            trie.for_each_match(&topic, |k, _| got.push(*k));
            got.sort_unstable();
            let want: Vec<usize> = (0..filters.len()).filter(|&i| matches(&filters[i], &topic)).collect();
            prop_assert_eq!(got, want);
            for (i, f) in filters.iter().enumerate() {
                prop_assert!(trie.remove(f, &i).is_some());
            }
            prop_assert!(trie.is_empty());
            prop_assert!(trie.root.is_empty());
        }
    }
}
