//! Mixed-adapter batches (peft's `adapter_names=[…]`): while a forward pass runs inside
//! [`with_routing`], every adapter layer and head computes each row with the adapter that row
//! names (`__base__`: none), in one batch.

use std::cell::RefCell;
use std::rc::Rc;
use tch::{Device, Tensor};

/// The adapter name of rows computed by the base model alone (peft's `"__base__"`).
pub const BASE_ADAPTER: &str = "__base__";

/// Which rows of the batch use which adapter.
#[derive(Debug)]
pub(crate) struct Routing {
    rows: i64,
    groups: Vec<(String, Tensor)>,
}

impl Routing {
    /// Groups the rows by the adapter they name; the row indexes live on `device`.
    pub(crate) fn new(names: &[&str], device: Device) -> Self {
        let mut groups: Vec<(String, Vec<i64>)> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match groups.iter_mut().find(|(g, _)| g == n) {
                Some((_, rows)) => rows.push(i as i64),
                None => groups.push((n.to_string(), vec![i as i64])),
            }
        }
        Self {
            rows: names.len() as i64,
            groups: groups
                .into_iter()
                .map(|(n, rows)| (n, Tensor::from_slice(&rows).to_device(device)))
                .collect(),
        }
    }

    /// `shared` (a tensor whose first dimension is the batch: the base output for every row)
    /// with the rows of each group replaced by `f(adapter, its rows of x, its rows of shared)`;
    /// `f` returns `None` to keep the shared rows.
    pub(crate) fn route(
        &self,
        x: &Tensor,
        shared: Tensor,
        mut f: impl FnMut(&str, &Tensor, Tensor) -> Option<Tensor>,
    ) -> Tensor {
        assert_eq!(
            x.size()[0],
            self.rows,
            "a mixed-adapter batch names an adapter for each of its rows"
        );
        let mut out = shared.shallow_clone();
        for (name, idx) in &self.groups {
            let xs = x.index_select(0, idx);
            if let Some(o) = f(name, &xs, shared.index_select(0, idx)) {
                out = out.index_copy(0, idx, &o.to_kind(out.kind()));
            }
        }
        out
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Routing>>> = const { RefCell::new(None) };
}

/// The routing of the forward pass running on this thread, if any.
pub(crate) fn current() -> Option<Rc<Routing>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with `routing` in force on this thread (restored afterwards, also on panic).
pub(crate) fn with_routing<R>(routing: Routing, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Rc<Routing>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CURRENT.with(|c| c.borrow_mut().replace(Rc::new(routing)));
    let _reset = Reset(prev);
    f()
}
