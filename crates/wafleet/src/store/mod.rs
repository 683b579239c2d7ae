//! Postgres tables. Each submodule owns one table (or a few that move together) and is the only
//! code that writes SQL for it.

pub mod account_state;
pub mod agents;
pub mod api_tokens;
pub mod channels;
pub mod conversations;
pub mod erasure;
pub mod knowledge;
pub mod replies;
pub mod settings;
pub mod usage;

/// One column of a batched statement: `f` of every item, to bind as an array and `unnest`.
pub(crate) fn column<'a, T, U>(items: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    items.iter().map(f).collect()
}

/// Splits `items` into consecutive runs in which no two items share a key, so that a statement
/// run once per run never has to touch one row twice. A batch of jobs in flight normally holds
/// one job per conversation, so it is one run.
pub(crate) fn distinct_runs<'a, T, K, I>(items: &'a [T], keys: impl Fn(&'a T) -> I) -> Vec<&'a [T]>
where
    K: Eq + std::hash::Hash,
    I: IntoIterator<Item = K>,
{
    let mut runs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut start = 0;
    for (i, item) in items.iter().enumerate() {
        let item_keys: Vec<K> = keys(item).into_iter().collect();
        if item_keys.iter().any(|k| seen.contains(k)) {
            runs.push(&items[start..i]);
            start = i;
            seen.clear();
        }
        seen.extend(item_keys);
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_break_where_a_key_repeats() {
        let items = [(1, 'a'), (2, 'b'), (1, 'c'), (3, 'c'), (4, 'd')];
        let runs = super::distinct_runs(&items, |(n, _)| [*n]);
        assert_eq!(runs, vec![&items[..2], &items[2..]]);
        // Either key repeating within a run breaks it; keys of earlier runs do not matter.
        let runs = super::distinct_runs(&items, |(n, c)| [n.to_string(), c.to_string()]);
        assert_eq!(runs, vec![&items[..2], &items[2..3], &items[3..]]);
        assert!(super::distinct_runs(&items[..0], |(n, _)| [*n]).is_empty());
    }
}
