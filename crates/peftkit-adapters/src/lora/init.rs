//! LoRA initialisations that start from the base weight (peft's `pissa_init` / `olora_init`):
//! the adapter takes the weight's principal part and the base keeps the residual, so the model
//! computes the same at the start and training moves the principal directions.

use crate::{AdapterError, Result};
use peftkit_models::{Linear, WeightLayout};
use tch::{Kind, Tensor};

/// A data-dependent initialisation (`init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightInit {
    /// `"pissa"`: the top-r singular triplets by a full SVD.
    Pissa,
    /// `"pissa_niter_K"`: the same by a randomized SVD with K subspace iterations (Halko et al.,
    /// `torch.svd_lowrank`).
    PissaNiter(i64),
    /// `"olora"`: the first r columns of a QR decomposition.
    Olora,
    /// `"loftq"`: the base becomes its NF4 quantization (blocksize 64, no double quantization)
    /// and the adapter the top-r SVD of the quantization error, alternated `iters` times (Li et
    /// al. 2023; peft's `loftq_init`, which runs on CUDA only; here on any device).
    LoftQ {
        /// `loftq_iter`.
        iters: i64,
    },
}

impl WeightInit {
    /// Parses peft's name; `None` for names that are not data-dependent.
    pub fn parse(name: &str) -> Option<Self> {
        if name == "pissa" {
            return Some(Self::Pissa);
        }
        if let Some(k) = name.strip_prefix("pissa_niter_") {
            return k
                .parse()
                .ok()
                .filter(|k: &i64| *k >= 0)
                .map(Self::PissaNiter);
        }
        name.eq_ignore_ascii_case("olora").then_some(Self::Olora)
    }

    /// The initialisation `config` asks for, if it is data-dependent (LoftQ reads its
    /// `loftq_config`).
    pub fn of(config: &super::config::LoraConfig) -> Option<Self> {
        match &config.init_lora_weights {
            super::config::InitLoraWeights::Named(n) if n == "loftq" => Some(Self::LoftQ {
                iters: config.loftq_config.get("loftq_iter").copied().unwrap_or(1),
            }),
            super::config::InitLoraWeights::Named(n) => Self::parse(n),
            _ => None,
        }
    }

    /// `(lora_A [r, in], lora_B [out, r])` for `linear`, whose weight becomes the residual
    /// `W − scale · B A`. The weight must be dense (not 4-bit).
    pub fn apply(self, linear: &mut Linear, r: i64, scale: f64) -> Result<(Tensor, Tensor)> {
        if linear.packed().is_some() {
            return Err(AdapterError::Invalid(format!(
                "{}: {self:?} initialisation needs the full-precision weight (not a 4-bit base)",
                linear.path()
            )));
        }
        let w = linear.weight_out_in(Kind::Float).detach();
        let (out, inp) = w.size2().expect("a weight matrix");
        if r > out.min(inp) {
            return Err(AdapterError::Invalid(format!(
                "{}: r {r} exceeds the weight's rank bound {} ([{out}, {inp}]) for {self:?} initialisation",
                linear.path(),
                out.min(inp)
            )));
        }
        let mut quantized = None;
        let (a, b) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            Ok(match self {
                WeightInit::Pissa => {
                    // torch.svd is linalg.svd (the same LAPACK call) returning Vh's transpose.
                    let (v, s, u) = w.svd(true, true);
                    pissa_factors(
                        &v.narrow(1, 0, r),
                        &s.narrow(0, 0, r),
                        &u.narrow(1, 0, r).tr(),
                        scale,
                    )
                }
                WeightInit::PissaNiter(k) => {
                    let (v, s, u) = svd_lowrank(&w, r, k);
                    pissa_factors(&v, &s, &u.tr(), scale)
                }
                WeightInit::LoftQ { iters } => {
                    let (a, b, deq) = loftq(&w, r, iters)?;
                    quantized = Some(deq);
                    (a, b)
                }
                WeightInit::Olora => {
                    let (q, rr) = Tensor::linalg_qr(&w, "reduced");
                    (
                        rr.narrow(0, 0, r).contiguous(),
                        q.narrow(1, 0, r).contiguous(),
                    )
                }
            })
        })?;
        // LoftQ's base is the dequantized weight itself (as peft: not divided by the scale, so
        // base + adapter reconstruct W best with lora_alpha = r).
        let residual = match quantized {
            Some(deq) => deq,
            None => tch::no_grad(|| &w - b.matmul(&a) * scale),
        };
        let stored = match linear.layout() {
            WeightLayout::OutIn => residual,
            WeightLayout::InOut => residual.tr().contiguous(),
        };
        let mut weight = linear.weight().shallow_clone();
        tch::no_grad(|| weight.copy_(&stored.to_kind(weight.kind())));
        Ok((a, b))
    }
}

/// peft's `loftq_init` (4 bits): `(A [r, in], B [out, r], dequantized W [out, in])`.
fn loftq(w: &Tensor, r: i64, iters: i64) -> Result<(Tensor, Tensor, Tensor)> {
    let mut res = w.shallow_clone();
    let mut out = None;
    for i in 0..iters {
        let q = crate::quant::quantize_4bit(&res, 64, crate::quant::QuantType::Nf4, false)?;
        let deq = q.dequantize(Kind::Float).view(w.size().as_slice());
        res = w - &deq;
        let (u, s, v) = res.svd(true, true);
        let root = s.narrow(0, 0, r).sqrt();
        let l = u.narrow(1, 0, r) * root.unsqueeze(0);
        let rr = root.unsqueeze(1) * v.narrow(1, 0, r).tr();
        if i + 1 < iters {
            res = w - l.matmul(&rr);
        }
        out = Some((rr.contiguous(), l.contiguous(), deq));
    }
    Ok(out.expect("at least one iteration"))
}

/// PiSSA's factors from `W ≈ V diag(S) Uh`: `A = diag(√(S/scale)) Uh`, `B = V diag(√(S/scale))`.
fn pissa_factors(v: &Tensor, s: &Tensor, uh: &Tensor, scale: f64) -> (Tensor, Tensor) {
    let root = (s / scale).sqrt();
    (
        (root.unsqueeze(1) * uh).contiguous(),
        (v * root.unsqueeze(0)).contiguous(),
    )
}

/// `torch.svd_lowrank(W, q, niter)` (Halko et al. 2009, Algorithm 5.1, without centering):
/// `(U [m, q], S [q], V [n, q])` with `W ≈ U diag(S) Vᵀ`, from the global generator.
fn svd_lowrank(w: &Tensor, q: i64, niter: i64) -> (Tensor, Tensor, Tensor) {
    let (m, n) = w.size2().expect("a matrix");
    if m < n {
        let (u, s, v) = svd_lowrank(&w.tr(), q, niter);
        return (v, s, u);
    }
    let qr = |x: &Tensor| Tensor::linalg_qr(x, "reduced").0;
    let r = Tensor::randn([n, q], (w.kind(), w.device()));
    let mut basis = qr(&w.matmul(&r));
    for _ in 0..niter {
        basis = qr(&w.tr().matmul(&basis));
        basis = qr(&w.matmul(&basis));
    }
    let b = basis.tr().matmul(w);
    let (u, s, v) = b.svd(true, true);
    (basis.matmul(&u), s, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_like_peft() {
        assert_eq!(WeightInit::parse("pissa"), Some(WeightInit::Pissa));
        assert_eq!(
            WeightInit::parse("pissa_niter_4"),
            Some(WeightInit::PissaNiter(4))
        );
        assert_eq!(WeightInit::parse("OLoRA"), Some(WeightInit::Olora));
        assert_eq!(WeightInit::parse("pissa_niter_x"), None);
        assert_eq!(WeightInit::parse("gaussian"), None);
    }

    #[test]
    fn randomized_svd_finds_a_low_rank_matrix() {
        let opts = (Kind::Float, tch::Device::Cpu);
        let w = Tensor::randn([40, 3], opts).matmul(&Tensor::randn([3, 24], opts));
        let (u, s, v) = svd_lowrank(&w, 3, 2);
        let back = u.matmul(&s.diag_embed(0, -2, -1)).matmul(&v.tr());
        let err = (back - &w).abs().max().double_value(&[]);
        assert!(err < 1e-3, "{err}");
    }
}
