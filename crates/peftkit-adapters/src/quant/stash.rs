//! The quantized weight of a layer while an adapter is merged into it: merging dequantizes the
//! 4-bit weight (as peft merges into a bitsandbytes `Linear4bit`), and unmerging puts the
//! original packed weight back exactly.

use super::{quantize_4bit, Absmax, Packed4bit};
use crate::Result;
use peftkit_models::{Linear, PackedWeight};

/// The packed original of a merged layer, if its base was packed.
#[derive(Debug, Default)]
pub struct QuantStash {
    original: Option<Box<dyn PackedWeight>>,
}

impl QuantStash {
    /// Makes `base`'s weight dense (fp32) for merging, keeping the packed original (the first
    /// one, when merged several times).
    pub fn dequantize(&mut self, base: &mut Linear) {
        if base.packed().is_none() {
            return;
        }
        let packed = base.unpack().expect("packed");
        if self.original.is_none() {
            self.original = Some(packed);
        }
    }

    /// Puts the packed original back (dropping the merged weight); `false` when there is none.
    pub fn restore(&mut self, base: &mut Linear) -> bool {
        match self.original.take() {
            Some(p) => {
                base.repack(p);
                true
            }
            None => false,
        }
    }

    /// Quantizes `base`'s dense (merged) weight again with the original's settings, so memory
    /// stays at 4 bits (peft's merge into a 4-bit layer). No-op when the base was not packed.
    pub fn requantize(&self, base: &mut Linear) -> Result<()> {
        let Some(original) = self
            .original
            .as_ref()
            .and_then(|p| p.as_any().downcast_ref::<Packed4bit>())
        else {
            return Ok(());
        };
        if base.packed().is_some() {
            return Ok(());
        }
        let q = &original.weight;
        let (blocksize, quant_type, nested, compute) = (
            q.blocksize,
            q.quant_type,
            matches!(q.absmax, Absmax::Nested { .. }),
            original.compute_dtype,
        );
        base.pack(|w| -> Result<Box<dyn PackedWeight>> {
            Ok(Box::new(Packed4bit {
                weight: quantize_4bit(w, blocksize, quant_type, nested)?,
                compute_dtype: compute,
            }))
        })
    }
}
