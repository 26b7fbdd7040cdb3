//! The losses of IDFD and cIDFD (METHOD.md): instance discrimination over full memory banks,
//! feature decorrelation, and the reference-salient term that keeps background-only images
//! from carrying salient features.

use candle_core::{DType, Result, Tensor};
use candle_nn::loss::cross_entropy;

use crate::config::TrainConfig;

/// The loss terms of one step (or their means over an epoch).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StepStats {
    pub loss: f32,
    pub id_target: f32,
    pub id_reference: f32,
    pub fd: f32,
    pub reference_salient: f32,
    pub reference_null: f32,
    pub xcov: f32,
    pub two_view: f32,
}

impl StepStats {
    /// Every term with its name, in the training log's column order.
    pub fn named(&self) -> [(&'static str, f32); 8] {
        [
            ("loss", self.loss),
            ("id_target", self.id_target),
            ("id_reference", self.id_reference),
            ("fd", self.fd),
            ("reference_salient", self.reference_salient),
            ("reference_null", self.reference_null),
            ("xcov", self.xcov),
            ("two_view", self.two_view),
        ]
    }

    pub(crate) fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        self.map2(self, |a, _| f(a))
    }

    pub(crate) fn map2(&self, other: &Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Self {
            loss: f(self.loss, other.loss),
            id_target: f(self.id_target, other.id_target),
            id_reference: f(self.id_reference, other.id_reference),
            fd: f(self.fd, other.fd),
            reference_salient: f(self.reference_salient, other.reference_salient),
            reference_null: f(self.reference_null, other.reference_null),
            xcov: f(self.xcov, other.xcov),
            two_view: f(self.two_view, other.two_view),
        }
    }
}

/// The terms of one step's loss, unweighted, as the step computed them (`None`: not part of
/// this run). [`LossTerms::total`] is the one place where they are weighed and summed.
#[derive(Debug, Default)]
pub struct LossTerms {
    /// Instance discrimination of the target batch against the salient (+ λ·background) bank.
    pub id_target: Option<Tensor>,
    /// Feature decorrelation of the salient batch (plus the background's with `fd_background`).
    pub fd: Option<Tensor>,
    /// Two-view contrast (knob `two_view_weight`).
    pub two_view: Option<Tensor>,
    /// Instance discrimination of the reference batch against the background bank (cIDFD).
    pub id_reference: Option<Tensor>,
    /// Reference-null energy ratio (knob `reference_null`).
    pub reference_null: Option<Tensor>,
    /// Reference-salient term 1 − ‖mean s(b)‖² (knob `beta`).
    pub reference_salient: Option<Tensor>,
    /// Salient/background cross-covariance (knob `gamma_xcov`).
    pub xcov: Option<Tensor>,
}

impl LossTerms {
    /// L = ID_t + α·FD + w₂·TV + [ID_b + w_null·NULL + β·R + γ·XCOV], the bracket being the
    /// terms that need the reference set (cIDFD). Weights come from `config`.
    pub fn total(&self, config: &TrainConfig) -> Result<Tensor> {
        let (Some(id_t), Some(fd)) = (&self.id_target, &self.fd) else {
            candle_core::bail!(
                "a step's loss needs its instance-discrimination and decorrelation terms"
            )
        };
        let mut total = (id_t + (fd * config.alpha)?)?;
        if let Some(tv) = &self.two_view {
            total = (total + (tv * config.two_view_weight)?)?;
        }
        if let Some(id_b) = &self.id_reference {
            let mut extra = id_b.clone();
            if let Some(null) = &self.reference_null {
                extra = (extra + (null * config.reference_null)?)?;
            }
            if let Some(r) = &self.reference_salient {
                extra = (extra + (r * config.beta)?)?;
            }
            if let Some(x) = &self.xcov {
                extra = (extra + (x * config.gamma_xcov)?)?;
            }
            total = (total + extra)?;
        }
        Ok(total)
    }

    /// The step's values for the training log (each term unweighted; absent terms 0).
    pub fn stats(&self, total: &Tensor) -> Result<StepStats> {
        let value = |t: &Option<Tensor>| -> Result<f32> {
            t.as_ref().map_or(Ok(0.0), |t| t.to_scalar::<f32>())
        };
        Ok(StepStats {
            loss: total.to_scalar::<f32>()?,
            id_target: value(&self.id_target)?,
            id_reference: value(&self.id_reference)?,
            fd: value(&self.fd)?,
            reference_salient: value(&self.reference_salient)?,
            reference_null: value(&self.reference_null)?,
            xcov: value(&self.xcov)?,
            two_view: value(&self.two_view)?,
        })
    }
}

/// Instance discrimination: mean over the batch of −log softmax(logits)[own index], a full
/// softmax over every bank row (no NCE sampling). `logits` are B×N and already divided by τ;
/// `targets` (u32, B) are the batch rows' own bank indices.
pub fn instance_discrimination(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    cross_entropy(logits, targets)
}

/// Feature decorrelation: L2-normalise each column of the batch matrix F (B×d) over the batch
/// (no centring), C = FᵀF / τ₂ (d×d), loss = cross_entropy(C, arange(d)).
pub fn feature_decorrelation(features: &Tensor, tau2: f64) -> Result<Tensor> {
    let column_norm = features
        .sqr()?
        .sum_keepdim(0)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    let f = features.broadcast_div(&column_norm)?;
    let c = (f.t()?.matmul(&f)? / tau2)?;
    let d = c.dim(0)?;
    let targets = Tensor::arange(0u32, d as u32, c.device())?;
    cross_entropy(&c, &targets)
}

/// Reference-salient term: 1 − ‖mean_j s_b,j‖². Zero when every background-only image maps to
/// the same salient direction, so the salient encoder cannot tell backgrounds apart.
pub fn reference_salient(salient_of_reference: &Tensor) -> Result<Tensor> {
    let mean = salient_of_reference.mean(0)?;
    let sq = mean.sqr()?.sum_all()?;
    Tensor::ones((), DType::F32, sq.device())?.to_dtype(sq.dtype())? - sq
}

/// Reference-null term (the contrastive-analysis principle in MM-cVAE's form): the salient
/// encoder's *un-normalised* features should vanish on background-only images and not on target
/// images, measured as the energy ratio mean‖u_b‖² / mean‖u_t‖². Scale-invariant, so it cannot be
/// met by shrinking every feature, and unlike 1 − ‖mean s_b‖² it does not ask the normalised
/// salient embeddings of anything to collapse to one direction.
pub fn reference_null(target_features: &Tensor, reference_features: &Tensor) -> Result<Tensor> {
    let energy = |u: &Tensor| -> Result<Tensor> { u.sqr()?.sum_keepdim(1)?.mean_all() };
    let target = (energy(target_features)? + 1e-8)?;
    energy(reference_features)?.div(&target)
}

/// Cross-covariance penalty between salient and background features of the same target batch:
/// ‖Cov(s, z)‖²_F, pushing the two encoders to carry different information.
pub fn cross_covariance(s: &Tensor, z: &Tensor) -> Result<Tensor> {
    let b = s.dim(0)? as f64;
    let s = s.broadcast_sub(&s.mean_keepdim(0)?)?;
    let z = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let cov = (s.t()?.matmul(&z)? / (b - 1.0).max(1.0))?;
    cov.sqr()?.sum_all()
}

/// NT-Xent (SimCLR) between two views of a batch of L2-normalised features (B×d each): every
/// row's positive is its other view, the other 2B − 2 rows are negatives.
pub fn two_view_contrast(a: &Tensor, b: &Tensor, tau: f64) -> Result<Tensor> {
    two_view_contrast_corrected(a, b, None, tau)
}

/// The two-view contrast with each pair's similarity corrected by a background similarity
/// (cIDFD's target-logit correction): logits (s_i·s_j + λ z_i·z_j) / τ, where `background`
/// holds λ and the two views' background rows (B×d_z each, constants: no gradient reaches g_z).
pub fn two_view_contrast_corrected(
    a: &Tensor,
    b: &Tensor,
    background: Option<(f64, &Tensor, &Tensor)>,
    tau: f64,
) -> Result<Tensor> {
    let n = a.dim(0)?;
    let z = Tensor::cat(&[a, b], 0)?;
    let mut sim = z.matmul(&z.t()?)?;
    if let Some((lambda, za, zb)) = background {
        let zz = Tensor::cat(&[za, zb], 0)?.detach();
        sim = (sim + (zz.matmul(&zz.t()?)? * lambda)?)?;
    }
    let sim = (sim / tau)?;
    // Mask self-similarity with a large negative number.
    let eye = Tensor::eye(2 * n, sim.dtype(), sim.device())?;
    let sim = (sim - (eye * 1e9)?)?;
    let targets: Vec<u32> = (0..2 * n as u32)
        .map(|i| (i + n as u32) % (2 * n as u32))
        .collect();
    let targets = Tensor::from_vec(targets, 2 * n, sim.device())?;
    cross_entropy(&sim, &targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(rows: &[&[f64]]) -> Tensor {
        let d = rows[0].len();
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f64 {
        x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn instance_discrimination_matches_a_hand_computed_value() {
        // f = [[1,0],[0,1]], bank = [[1,0],[0,1],[-1,0]], τ = 1: row 0 logits [1,0,-1],
        // row 1 logits [0,1,0]; CE0 = log(e + 1 + 1/e) − 1, CE1 = log(1 + e + 1) − 1.
        let f = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let bank = t(&[&[1.0, 0.0], &[0.0, 1.0], &[-1.0, 0.0]]);
        let logits = f.matmul(&bank.t().unwrap()).unwrap();
        let targets = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let e = std::f64::consts::E;
        let expected = ((e + 1.0 + 1.0 / e).ln() - 1.0 + (2.0 + e).ln() - 1.0) / 2.0;
        let got = scalar(&instance_discrimination(&logits, &targets).unwrap());
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }

    #[test]
    fn feature_decorrelation_matches_a_hand_computed_value() {
        // F = [[1,1],[0,1]]: columns normalised → c0 = [1,0], c1 = [1,1]/√2.
        // C = [[1, 1/√2],[1/√2, 1]] / τ₂ with τ₂ = 2 → both rows CE = log(e^{0.5} + e^{1/(2√2)}) − 0.5.
        let f = t(&[&[1.0, 1.0], &[0.0, 1.0]]);
        let a = 0.5f64;
        let b = 1.0 / (2.0 * 2f64.sqrt());
        let expected = (a.exp() + b.exp()).ln() - a;
        let got = scalar(&feature_decorrelation(&f, 2.0).unwrap());
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }

    #[test]
    fn reference_salient_is_zero_for_identical_rows_and_one_for_opposite_rows() {
        let same = t(&[&[0.6, 0.8], &[0.6, 0.8]]);
        assert!(scalar(&reference_salient(&same).unwrap()).abs() < 1e-12);
        let opposite = t(&[&[1.0, 0.0], &[-1.0, 0.0]]);
        assert!((scalar(&reference_salient(&opposite).unwrap()) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn reference_null_is_the_energy_ratio() {
        // mean‖u_t‖² = (1 + 4)/2 = 2.5, mean‖u_b‖² = (0.25 + 0)/2 = 0.125: ratio 0.05.
        let ut = t(&[&[1.0, 0.0], &[0.0, 2.0]]);
        let ub = t(&[&[0.3, 0.4], &[0.0, 0.0]]);
        assert!((scalar(&reference_null(&ut, &ub).unwrap()) - 0.05).abs() < 1e-9);
        assert!(scalar(&reference_null(&ut, &(ub.clone() * 0.0).unwrap()).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn cross_covariance_is_zero_for_independent_columns() {
        let s = t(&[&[1.0], &[-1.0], &[1.0], &[-1.0]]);
        let z = t(&[&[1.0], &[1.0], &[-1.0], &[-1.0]]);
        assert!(scalar(&cross_covariance(&s, &z).unwrap()).abs() < 1e-12);
        // z = s: Cov = Var(s) = 4/3, squared 16/9.
        assert!((scalar(&cross_covariance(&s, &s).unwrap()) - 16.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn two_view_contrast_matches_a_hand_computed_value() {
        // Two rows, views identical: a = b = [[1,0],[0,1]], τ = 1. Row 0's logits against
        // rows [0,1,2,3] are [masked, 0, 1, 0]: CE = log(1 + e + 1) − 1, same for every row.
        let a = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let e = std::f64::consts::E;
        let expected = (2.0 + e).ln() - 1.0;
        let got = scalar(&two_view_contrast(&a, &a, 1.0).unwrap());
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }

    #[test]
    fn two_view_background_correction_matches_a_hand_computed_value() {
        // As above, with λ = 1 and background rows equal to the salient rows: row 0's logits
        // become [masked, 0, 1 + 1, 0], CE = log(1 + e² + 1) − 2.
        let a = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let e2 = std::f64::consts::E.powi(2);
        let expected = (2.0 + e2).ln() - 2.0;
        let got = scalar(&two_view_contrast_corrected(&a, &a, Some((1.0, &a, &a)), 1.0).unwrap());
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        // Without a correction it is the plain contrast.
        let plain = scalar(&two_view_contrast(&a, &a, 1.0).unwrap());
        let none = scalar(&two_view_contrast_corrected(&a, &a, None, 1.0).unwrap());
        assert_eq!(plain, none);
    }

    #[test]
    fn two_view_background_rows_receive_no_gradient() {
        let a = Var::from_tensor(&t(&[&[0.6, 0.8], &[0.8, -0.6]])).unwrap();
        let z = Var::from_tensor(&t(&[&[1.0, 0.0], &[0.0, 1.0]])).unwrap();
        let loss = two_view_contrast_corrected(
            a.as_tensor(),
            a.as_tensor(),
            Some((1.0, z.as_tensor(), z.as_tensor())),
            0.5,
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(&a).is_some());
        assert!(
            grads.get(&z).is_none(),
            "the background bank rows are constants"
        );
    }

    /// Central finite differences in f64 against candle's backward pass.
    fn check_gradient(x0: &Tensor, loss: impl Fn(&Tensor) -> Result<Tensor>) {
        let var = Var::from_tensor(x0).unwrap();
        let grads = loss(var.as_tensor()).unwrap().backward().unwrap();
        let analytic: Vec<f64> = grads
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for i in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let x = Tensor::from_vec(v, x0.shape(), &Device::Cpu).unwrap();
                scalar(&loss(&x).unwrap())
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "component {i}: numeric {numeric}, analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn gradients_agree_with_finite_differences() {
        let f = t(&[&[0.3, -0.2, 0.5], &[0.1, 0.4, -0.6], &[-0.7, 0.2, 0.1]]);
        let bank = t(&[
            &[0.2, 0.1, -0.3],
            &[0.5, -0.5, 0.1],
            &[0.0, 0.3, 0.9],
            &[-0.4, 0.2, 0.2],
        ]);
        let targets = Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap();
        check_gradient(&f, |x| {
            let logits = crate::model::l2_normalize(x)?.matmul(&bank.t()?)?;
            instance_discrimination(&(logits / 0.5)?, &targets)
        });
        check_gradient(&f, |x| feature_decorrelation(x, 2.0));
        check_gradient(&f, |x| reference_salient(&crate::model::l2_normalize(x)?));
        let z = t(&[&[0.9, 0.1], &[-0.3, 0.3], &[0.2, -0.8]]);
        check_gradient(&f, |x| cross_covariance(x, &z));
        check_gradient(&f, |x| reference_null(x, &bank));
        check_gradient(&f, |x| reference_null(&bank, x));
        let views = t(&[&[0.2, -0.1, 0.4], &[0.3, 0.3, -0.2], &[-0.5, 0.1, 0.3]]);
        check_gradient(&f, |x| {
            let s = crate::model::l2_normalize(x)?;
            two_view_contrast_corrected(&s, &views, Some((0.7, &z, &z)), 0.5)
        });
    }
}
