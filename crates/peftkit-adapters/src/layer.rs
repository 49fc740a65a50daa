//! The hook weight-based methods attach to a base [`Linear`] (peft's `BaseTunerLayer`): one
//! [`LayerAdapter`] per named adapter, the active one, which are merged into the base weight
//! (a 4-bit base is dequantized for that and restored exactly afterwards, see
//! [`crate::quant::QuantStash`]), and per-row adapter choice for mixed-adapter batches.

use crate::quant::QuantStash;
use crate::routing;
use crate::{AdapterError, Result};
use peftkit_models::{Linear, LinearHook};
use std::collections::BTreeMap;
use tch::Tensor;

/// The name of one tensor of a layer adapter: a module (`lora_A`) and, for modules that are
/// `nn.Linear`s in peft, a parameter (`weight`); IA³'s vectors are bare parameters (`ia3_l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorKey {
    /// `lora_A`, `lora_B`, `lora_magnitude_vector`, `ia3_l`.
    pub module: &'static str,
    /// `weight`, or `None` for a bare parameter.
    pub param: Option<&'static str>,
    /// Whether peft's saved key keeps the parameter name (DoRA's magnitude is saved as
    /// `lora_magnitude_vector`, held as `lora_magnitude_vector.default.weight`).
    pub saved_with_param: bool,
}

impl TensorKey {
    /// `module.param`, saved as such.
    pub const fn new(module: &'static str, param: Option<&'static str>) -> Self {
        Self {
            module,
            param,
            saved_with_param: true,
        }
    }

    /// `module.param` in the model, saved as `module` alone.
    pub const fn saved_bare(module: &'static str, param: &'static str) -> Self {
        Self {
            module,
            param: Some(param),
            saved_with_param: false,
        }
    }

    /// The in-model name under adapter `name` (`lora_A.default.weight`, `ia3_l.default`).
    pub fn in_model(&self, name: &str) -> String {
        match self.param {
            Some(p) => format!("{}.{name}.{p}", self.module),
            None => format!("{}.{name}", self.module),
        }
    }

    /// The saved key suffix (`lora_A.weight`, `ia3_l`, `lora_magnitude_vector`).
    pub fn saved(&self) -> String {
        match self.param {
            Some(p) if self.saved_with_param => format!("{}.{p}", self.module),
            _ => self.module.to_string(),
        }
    }
}

/// One adapter of one weight-based method at one layer.
pub trait LayerAdapter: std::fmt::Debug + Send {
    /// The layer's output for `x`; `base_out` is the base layer's output for `x` unless
    /// [`LayerAdapter::transforms_input`] (then `None`).
    fn forward(&self, base: &Linear, x: &Tensor, base_out: Option<Tensor>, train: bool) -> Tensor;
    /// Whether the adapter changes the base layer's input (IA³ on feed-forward layers), so that
    /// the base output cannot be shared with other rows.
    fn transforms_input(&self) -> bool {
        false
    }
    /// Its tensors.
    fn tensors(&self) -> Vec<(TensorKey, &Tensor)>;
    /// Its tensors, mutably (loading, freezing).
    fn tensors_mut(&mut self) -> Vec<(TensorKey, &mut Tensor)>;
    /// Called after its tensors were replaced by loaded ones.
    fn loaded(&mut self) {}
    /// Folds it into `base`'s weight and bias (dense: the host dequantizes a 4-bit base first).
    fn merge(&mut self, base: &mut Linear);
    /// Takes it back out of `base`'s weight and bias.
    fn unmerge(&mut self, base: &mut Linear);
    /// Whether it can be merged into a 4-bit base (dequantized, then restored exactly by the
    /// stash). IA³ cannot: it also rescales the bias, which the stash does not restore (peft
    /// refuses too).
    fn merges_into_packed(&self) -> bool {
        true
    }
    /// The layer as `Any`, for a method that needs its own layer type back (AdaLoRA's
    /// allocation); `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// An adapter's input: `dropout(x)` when training, in the compute dtype when one is set.
pub(crate) fn adapter_input(x: &Tensor, dropout: f64, train: bool) -> Tensor {
    let x = if train && dropout > 0.0 {
        peftkit_models::dropout(x, dropout, true)
    } else {
        x.shallow_clone()
    };
    match peftkit_models::compute_dtype() {
        Some(k) => x.to_kind(k),
        None => x,
    }
}

/// The hook: named layer adapters on one base linear.
#[derive(Debug, Default)]
pub struct AdapterLayer {
    adapters: BTreeMap<String, Box<dyn LayerAdapter>>,
    active: Option<String>,
    merged: Vec<String>,
    disabled: bool,
    stash: QuantStash,
}

impl AdapterLayer {
    /// A hook with one adapter, active (for using a layer on its own, e.g. in benchmarks).
    ///
    /// ```
    /// use peftkit_adapters::{AdapterLayer, LoraLayer};
    /// use tch::{Kind, Tensor};
    /// let opts = (Kind::Float, tch::Device::Cpu);
    /// let lora = LoraLayer::new(Tensor::randn([4, 16], opts), Tensor::zeros([8, 4], opts), 2.0, 0.0);
    /// let hook = AdapterLayer::single("default", Box::new(lora));
    /// assert_eq!(hook.names().collect::<Vec<_>>(), ["default"]);
    /// ```
    pub fn single(name: &str, layer: Box<dyn LayerAdapter>) -> Self {
        let mut adapters = BTreeMap::new();
        adapters.insert(name.to_string(), layer);
        Self {
            adapters,
            active: Some(name.to_string()),
            ..Self::default()
        }
    }

    /// Adds adapter `name`.
    pub fn insert(&mut self, name: &str, layer: Box<dyn LayerAdapter>) -> Result<()> {
        if self.adapters.contains_key(name) {
            return Err(AdapterError::Invalid(format!(
                "adapter `{name}` exists already in this layer"
            )));
        }
        self.adapters.insert(name.to_string(), layer);
        Ok(())
    }

    /// Adapter `name` of this layer.
    pub fn get(&self, name: &str) -> Option<&dyn LayerAdapter> {
        self.adapters.get(name).map(|b| b.as_ref())
    }

    /// Adapter `name` of this layer, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut (dyn LayerAdapter + 'static)> {
        self.adapters.get_mut(name).map(|b| b.as_mut())
    }

    /// Removes adapter `name`.
    pub fn remove(&mut self, name: &str) {
        self.adapters.remove(name);
        if self.active.as_deref() == Some(name) {
            self.active = None;
        }
    }

    /// Whether no adapter is left.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// The adapters' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    /// Makes `name` active (`None`: none).
    pub fn set_active(&mut self, name: Option<&str>) {
        self.active = name.map(str::to_string);
    }

    /// Computes the base layer alone (peft's `disable_adapters`).
    pub fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
    }

    /// Folds adapter `name` into `base`'s weight (no-op when merged already or absent here). A
    /// packed (4-bit) base is dequantized first and the packed original kept for an exact
    /// unmerge.
    pub fn merge(&mut self, base: &mut Linear, name: &str) {
        if self.merged.iter().any(|m| m == name) {
            return;
        }
        let Some(layer) = self.adapters.get_mut(name) else {
            return;
        };
        if base.packed().is_some() && !layer.merges_into_packed() {
            tracing::warn!(
                layer = base.path(),
                "this adapter cannot be merged into a 4-bit weight; it stays unmerged"
            );
            return;
        }
        self.stash.dequantize(base);
        layer.merge(base);
        self.merged.push(name.to_string());
    }

    /// Takes every merged adapter back out of `base` (the packed weight is restored when the
    /// base was quantized).
    pub fn unmerge(&mut self, base: &mut Linear) {
        if self.stash.restore(base) {
            self.merged.clear();
            return;
        }
        while let Some(name) = self.merged.pop() {
            if let Some(layer) = self.adapters.get_mut(&name) {
                layer.unmerge(base);
            }
        }
    }

    /// The quantized weight kept while an adapter is merged into a dense copy of it.
    pub fn stash(&self) -> &QuantStash {
        &self.stash
    }

    /// Whether any adapter is merged.
    pub fn is_merged(&self) -> bool {
        !self.merged.is_empty()
    }

    fn unmerged(&self, name: &str) -> Option<&dyn LayerAdapter> {
        if self.merged.iter().any(|m| m == name) {
            return None;
        }
        self.get(name)
    }

    fn apply(&self, layer: &dyn LayerAdapter, base: &Linear, x: &Tensor, train: bool) -> Tensor {
        let shared = (!layer.transforms_input()).then(|| base.base_forward(x));
        layer.forward(base, x, shared, train)
    }
}

impl LinearHook for AdapterLayer {
    fn forward(&self, base: &Linear, x: &Tensor, train: bool) -> Tensor {
        if self.disabled {
            return base.base_forward(x);
        }
        if let Some(rows) = routing::current() {
            return rows.route(x, base.base_forward(x), |name, xs, ys| {
                let layer = self.unmerged(name)?;
                Some(if layer.transforms_input() {
                    layer.forward(base, xs, None, train)
                } else {
                    layer.forward(base, xs, Some(ys), train)
                })
            });
        }
        match self.active.as_deref().and_then(|a| self.unmerged(a)) {
            Some(layer) => self.apply(layer, base, x, train),
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
