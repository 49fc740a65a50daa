//! `modules_to_save` (peft's `ModulesToSaveWrapper`): each adapter trains its own copy of the
//! classification head (and any other listed linear); the original stays frozen and computes
//! when adapters are disabled or a row names `__base__`.

use crate::routing;
use crate::tuner::LoadMismatch;
use peftkit_models::{Linear, LinearHook, SequenceClassifier, WeightLayout};
use std::collections::BTreeMap;
use tch::Tensor;

/// One adapter's copy of one head linear (in the stored layout).
#[derive(Debug)]
struct HeadCopy {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl HeadCopy {
    fn forward(&self, base: &Linear, x: &Tensor) -> Tensor {
        base.dense_forward(x, &self.weight, self.bias.as_ref())
    }

    fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![("weight", &self.weight)];
        if let Some(b) = &self.bias {
            v.push(("bias", b));
        }
        v
    }

    fn tensors_mut(&mut self) -> Vec<(&'static str, &mut Tensor)> {
        let mut v = vec![("weight", &mut self.weight)];
        if let Some(b) = &mut self.bias {
            v.push(("bias", b));
        }
        v
    }
}

/// The hook on a head linear: per-adapter copies.
#[derive(Debug)]
pub(crate) struct HeadCopies {
    /// The module that was listed (`classifier`) and the linear's path below it (`dense`, or
    /// empty when the linear is the module): peft's in-model name is
    /// `{module}.modules_to_save.{adapter}.{rest}`.
    module: String,
    rest: String,
    copies: BTreeMap<String, HeadCopy>,
    active: Option<String>,
    disabled: bool,
}

impl HeadCopies {
    fn in_model(&self, adapter: &str, param: &str) -> String {
        if self.rest.is_empty() {
            format!("{}.modules_to_save.{adapter}.{param}", self.module)
        } else {
            format!(
                "{}.modules_to_save.{adapter}.{}.{param}",
                self.module, self.rest
            )
        }
    }
}

impl LinearHook for HeadCopies {
    fn forward(&self, base: &Linear, x: &Tensor, _: bool) -> Tensor {
        if self.disabled {
            return base.base_forward(x);
        }
        if let Some(rows) = routing::current() {
            return rows.route(x, base.base_forward(x), |name, xs, _| {
                Some(self.copies.get(name)?.forward(base, xs))
            });
        }
        match self.active.as_ref().and_then(|a| self.copies.get(a)) {
            Some(c) => c.forward(base, x),
            None => base.base_forward(x),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The listed module that `path` is or lies in, by peft's rule (a module whose name ends with
/// the listed name), and the rest of the path below it.
fn module_of(path: &str, modules: &[String]) -> Option<(String, String)> {
    let parts: Vec<&str> = path.split('.').collect();
    for end in 1..=parts.len() {
        let prefix = parts[..end].join(".");
        if modules
            .iter()
            .any(|m| prefix == *m || prefix.ends_with(&format!(".{m}")))
        {
            return Some((prefix, parts[end..].join(".")));
        }
    }
    None
}

/// The head of a classifier: which linears are saved with adapters, and their copies.
pub(crate) struct Heads;

impl Heads {
    /// Gives adapter `name` its copies of the linears in `modules` (the architecture's head
    /// always), made from the original weights. Returns the paths.
    pub fn add(base: &mut SequenceClassifier, name: &str, extra: &[String]) -> Vec<String> {
        let mut modules: Vec<String> = base
            .architecture()
            .head_modules()
            .iter()
            .map(|s| s.to_string())
            .collect();
        modules.extend(extra.iter().cloned());
        let mut paths = Vec::new();
        for linear in base.linears_mut() {
            let Some((module, rest)) = module_of(linear.path(), &modules) else {
                continue;
            };
            if linear.hook().is_some() && linear.hook_as::<HeadCopies>().is_none() {
                // An adapter layer (not a head): peft does not target modules_to_save either.
                continue;
            }
            // A packed (4-bit) linear listed in modules_to_save: its copy is trained in full
            // precision, from the dequantized weight in the stored layout.
            let weight = match linear.packed() {
                Some(_) => {
                    let w = linear.weight_out_in(tch::Kind::Float);
                    match linear.layout() {
                        WeightLayout::OutIn => w,
                        WeightLayout::InOut => w.tr().contiguous(),
                    }
                }
                None => linear.weight().shallow_clone(),
            };
            let copy = tch::no_grad(|| HeadCopy {
                weight: weight.detach().copy(),
                bias: linear.bias().map(|b| b.detach().copy()),
            });
            if linear.hook().is_none() {
                linear.set_hook(Box::new(HeadCopies {
                    module,
                    rest,
                    copies: BTreeMap::new(),
                    active: None,
                    disabled: false,
                }));
            }
            let h = linear.hook_as_mut::<HeadCopies>().expect("just set");
            h.copies.insert(name.to_string(), copy);
            paths.push(linear.path().to_string());
        }
        paths
    }

    fn each(base: &mut SequenceClassifier, mut f: impl FnMut(&mut HeadCopies)) {
        for linear in base.linears_mut() {
            if let Some(h) = linear.hook_as_mut::<HeadCopies>() {
                f(h);
            }
        }
    }

    /// Makes adapter `name`'s copies compute (the original where it has none).
    pub fn set_active(base: &mut SequenceClassifier, name: &str) {
        Self::each(base, |h| h.active = Some(name.to_string()));
    }

    /// The original head computes while `disabled`.
    pub fn set_disabled(base: &mut SequenceClassifier, disabled: bool) {
        Self::each(base, |h| h.disabled = disabled);
    }

    /// Only adapter `name`'s copies require gradients when `on`.
    pub fn set_trainable(base: &mut SequenceClassifier, name: &str, on: bool) {
        Self::each(base, |h| {
            if let Some(c) = h.copies.get_mut(name) {
                for (_, t) in c.tensors_mut() {
                    *t = t.detach().set_requires_grad(on);
                }
            }
        });
    }

    /// Removes adapter `name`'s copies.
    pub fn remove(base: &mut SequenceClassifier, name: &str) {
        Self::each(base, |h| {
            h.copies.remove(name);
            if h.active.as_deref() == Some(name) {
                h.active = None;
            }
        });
    }

    /// Adapter `name`'s copies under peft's in-model names (without the `base_model.model.`
    /// prefix).
    pub fn parameters(base: &SequenceClassifier, name: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for linear in base.linears() {
            let Some(h) = linear.hook_as::<HeadCopies>() else {
                continue;
            };
            if let Some(c) = h.copies.get(name) {
                for (p, t) in c.tensors() {
                    out.push((h.in_model(name, p), t.shallow_clone()));
                }
            }
        }
        out
    }

    /// Adapter `name`'s copies under the saved names (`{prefix}{path}.weight`).
    pub fn state_dict(
        base: &SequenceClassifier,
        name: &str,
        prefix: &str,
    ) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for linear in base.linears() {
            if let Some(c) = linear
                .hook_as::<HeadCopies>()
                .and_then(|h| h.copies.get(name))
            {
                for (p, t) in c.tensors() {
                    out.push((format!("{prefix}{}.{p}", linear.path()), t.detach()));
                }
            }
        }
        out
    }

    /// Takes adapter `name`'s copies out of a saved adapter's tensors.
    pub fn load(
        base: &mut SequenceClassifier,
        name: &str,
        prefix: &str,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), LoadMismatch> {
        for linear in base.linears_mut() {
            let path = linear.path().to_string();
            let Some(c) = linear
                .hook_as_mut::<HeadCopies>()
                .and_then(|h| h.copies.get_mut(name))
            else {
                continue;
            };
            for (p, slot) in c.tensors_mut() {
                let key = format!("{prefix}{path}.{p}");
                let t = tensors.remove(&key).ok_or_else(|| {
                    LoadMismatch::missing(
                        &key,
                        "a sequence-classification adapter must carry its trained head (modules_to_save)",
                    )
                })?;
                if t.size() != slot.size() {
                    return Err(LoadMismatch::shape(&key, &t.size(), &slot.size()));
                }
                tch::no_grad(|| slot.copy_(&t));
            }
        }
        Ok(())
    }

    /// The head biases peft also writes with `bias = "all"` (its state dict holds every `.bias`
    /// of the wrapper): `{module}.modules_to_save.{rest}.bias` (the copy's) and
    /// `{module}.original_module.{rest}.bias` (the frozen original's).
    pub fn bias_duplicates(
        base: &SequenceClassifier,
        name: &str,
        prefix: &str,
    ) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for linear in base.linears() {
            let Some(h) = linear.hook_as::<HeadCopies>() else {
                continue;
            };
            let (Some(copy), Some(original)) = (
                h.copies.get(name).and_then(|c| c.bias.as_ref()),
                linear.bias(),
            ) else {
                continue;
            };
            let rest = if h.rest.is_empty() {
                "bias".to_string()
            } else {
                format!("{}.bias", h.rest)
            };
            out.push((
                format!("{prefix}{}.modules_to_save.{rest}", h.module),
                copy.detach(),
            ));
            out.push((
                format!("{prefix}{}.original_module.{rest}", h.module),
                original.detach(),
            ));
        }
        out
    }

    /// Elements of every adapter's copies.
    pub fn numel(base: &SequenceClassifier) -> i64 {
        base.linears()
            .iter()
            .filter_map(|l| l.hook_as::<HeadCopies>())
            .flat_map(|h| h.copies.values())
            .flat_map(|c| c.tensors())
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// Writes adapter `name`'s copies into the original weights and removes every copy (for
    /// `merge_and_unload`).
    pub fn unload(base: &mut SequenceClassifier, name: &str) {
        for linear in base.linears_mut() {
            let Some(h) = linear.hook_as::<HeadCopies>() else {
                continue;
            };
            if let Some(c) = h.copies.get(name) {
                let (w, b) = (c.weight.detach(), c.bias.as_ref().map(|b| b.detach()));
                let mut weight = linear.weight().shallow_clone();
                tch::no_grad(|| weight.copy_(&w));
                if let (Some(bias), Some(b)) = (linear.bias(), b) {
                    let mut bias = bias.shallow_clone();
                    tch::no_grad(|| bias.copy_(&b));
                }
            }
            linear.take_hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::module_of;

    #[test]
    fn modules_to_save_match_like_peft() {
        let m = vec!["classifier".to_string(), "score".to_string()];
        assert_eq!(
            module_of("classifier.dense", &m),
            Some(("classifier".into(), "dense".into()))
        );
        assert_eq!(
            module_of("score", &m),
            Some(("score".into(), String::new()))
        );
        assert_eq!(module_of("bert.pooler.dense", &m), None);
        let p = vec!["pooler.dense".to_string()];
        assert_eq!(
            module_of("bert.pooler.dense", &p),
            Some(("bert.pooler.dense".into(), String::new()))
        );
    }
}
