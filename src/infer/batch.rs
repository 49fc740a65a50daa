//! Dynamic batching: which queued rows run together in one forward pass.
//!
//! Rows of adapters that can share a batch (LoRA and the other layer methods, and the base)
//! are mixed in one length-sorted batch (peft's `adapter_names=`); a prompt-learning adapter
//! (prefix tuning, prompt tuning) changes the sequence itself, so its rows run by themselves.
//! A batch holds at most `max_rows` rows and `max_tokens` padded tokens (rows × longest), at
//! least one row.

/// The batch group of a row: `None` mixes with every other `None` row, `Some(adapter)` only
/// with rows of the same adapter.
pub type Group = Option<String>;

/// The batches for rows `(length, group)`: indices into `rows`, each batch sorted longest first.
///
/// ```
/// use peftkit::infer::batch::plan;
/// let rows = [(5, None), (9, None), (7, Some("prefix".to_string()))];
/// assert_eq!(plan(&rows, 16, 1024), vec![vec![1, 0], vec![2]]);
/// ```
pub fn plan(rows: &[(usize, Group)], max_rows: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let max_rows = max_rows.max(1);
    let mut groups: Vec<(&Group, Vec<usize>)> = Vec::new();
    for (i, (_, g)) in rows.iter().enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == g) {
            Some((_, v)) => v.push(i),
            None => groups.push((g, vec![i])),
        }
    }
    let mut out = Vec::new();
    for (_, mut members) in groups {
        // Longest first (stable: equal lengths keep arrival order), so each batch pads little.
        members.sort_by(|a, b| rows[*b].0.cmp(&rows[*a].0));
        let mut batch: Vec<usize> = Vec::new();
        let mut longest = 0;
        for i in members {
            let len = rows[i].0.max(1);
            let width = longest.max(len);
            if !batch.is_empty()
                && (batch.len() >= max_rows || (batch.len() + 1).saturating_mul(width) > max_tokens)
            {
                out.push(std::mem::take(&mut batch));
                longest = 0;
            }
            longest = longest.max(len);
            batch.push(i);
        }
        if !batch.is_empty() {
            out.push(batch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Group {
        Some(s.to_string())
    }

    #[test]
    fn mixable_rows_share_batches_and_prompt_adapters_run_alone() {
        let rows = vec![
            (3, None),
            (10, g("prefix")),
            (8, None),
            (4, g("prompt")),
            (2, g("prefix")),
        ];
        assert_eq!(plan(&rows, 8, 1000), vec![vec![2, 0], vec![1, 4], vec![3]]);
    }

    #[test]
    fn budgets_cut_batches_and_a_long_row_still_runs() {
        let rows: Vec<(usize, Group)> = [10, 9, 8, 3, 2, 1, 100]
            .iter()
            .map(|&l| (l, None))
            .collect();
        // 100 tokens alone exceed the budget: a batch of its own.
        let batches = plan(&rows, 3, 30);
        assert_eq!(batches, vec![vec![6], vec![0, 1, 2], vec![3, 4, 5]]);
        for b in &batches {
            let width = b.iter().map(|&i| rows[i].0).max().unwrap();
            assert!(b.len() == 1 || b.len() * width <= 30);
        }
        assert_eq!(plan(&rows, 0, 0).len(), rows.len());
        assert!(plan(&[], 4, 4).is_empty());
        let all: usize = plan(&rows, 2, 25).iter().map(Vec::len).sum();
        assert_eq!(all, rows.len());
    }
}
