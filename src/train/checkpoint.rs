//! Checkpoints: every tensor needed to continue training (parameters with batch-norm
//! statistics, memory banks, momentum buffers, the epoch), written atomically and restored by
//! `--resume`.

use candle_core::{Device, Tensor};

use super::bank::MemoryBank;
use super::Trainer;
use crate::error::{Error, Result};

const CHECKPOINT_EPOCH: &str = "state.epoch";

impl Trainer {
    /// Every tensor needed to continue training: parameters (with batch-norm statistics), banks,
    /// momentum buffers and the epoch count.
    fn checkpoint_tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut tensors = std::collections::HashMap::new();
        for (name, var) in self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::Invalid("internal: variable map poisoned".into()))?
            .iter()
        {
            tensors.insert(format!("param.{name}"), var.as_tensor().clone());
        }
        tensors.insert("bank.s".into(), self.bank_s.rows().clone());
        if let Some(b) = &self.bank_zt {
            tensors.insert("bank.zt".into(), b.rows().clone());
        }
        if let Some(b) = &self.bank_zb {
            tensors.insert("bank.zb".into(), b.rows().clone());
        }
        for (name, buf) in self.optim.buffers() {
            tensors.insert(format!("optim.{name}"), buf);
        }
        tensors.insert(
            CHECKPOINT_EPOCH.into(),
            Tensor::new(&[self.epoch as u32], &Device::Cpu)?,
        );
        Ok(tensors)
    }

    /// Writes a checkpoint atomically (temporary file in the same directory, then rename).
    pub fn save_checkpoint(&self, path: &std::path::Path) -> Result<()> {
        let tensors = self.checkpoint_tensors()?;
        let bytes = safetensors_bytes(&tensors)?;
        crate::atomic::write_bytes_atomically(path, &bytes)
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`] for the same configuration.
    pub fn load_checkpoint(&mut self, path: &std::path::Path) -> Result<()> {
        let mismatch = |what: String| Error::File {
            path: path.to_path_buf(),
            message: format!("checkpoint does not match this training configuration: {what}"),
        };
        let tensors =
            candle_core::safetensors::load(path, &self.device).map_err(|e| Error::File {
                path: path.to_path_buf(),
                message: format!("unreadable checkpoint ({e})"),
            })?;
        {
            let vars = self
                .varmap
                .data()
                .lock()
                .map_err(|_| Error::Invalid("internal: variable map poisoned".into()))?;
            for (name, var) in vars.iter() {
                let saved = tensors
                    .get(&format!("param.{name}"))
                    .ok_or_else(|| mismatch(format!("no parameter `{name}`")))?;
                if saved.shape() != var.shape() {
                    return Err(mismatch(format!(
                        "parameter `{name}` is {:?} there, {:?} here",
                        saved.dims(),
                        var.dims()
                    )));
                }
                var.set(saved)?;
            }
        }
        let bank = |key: &str, current: &MemoryBank| -> Result<MemoryBank> {
            let rows = tensors
                .get(key)
                .ok_or_else(|| mismatch(format!("no `{key}`")))?;
            if rows.shape() != current.rows().shape() {
                return Err(mismatch(format!(
                    "`{key}` is {:?} there, {:?} here (same tables?)",
                    rows.dims(),
                    current.rows().dims()
                )));
            }
            Ok(MemoryBank::from_rows(
                rows.clone(),
                self.config.bank_momentum,
            )?)
        };
        self.bank_s = bank("bank.s", &self.bank_s)?;
        if let Some(b) = &self.bank_zt {
            self.bank_zt = Some(bank("bank.zt", b)?);
        }
        if let Some(b) = &self.bank_zb {
            self.bank_zb = Some(bank("bank.zb", b)?);
        }
        self.optim
            .set_buffers(|name| tensors.get(&format!("optim.{name}")).cloned());
        let epoch = tensors
            .get(CHECKPOINT_EPOCH)
            .ok_or_else(|| mismatch("no epoch count".into()))?
            .to_vec1::<u32>()?;
        self.epoch = epoch.first().copied().unwrap_or(0) as usize;
        Ok(())
    }

    /// The model's parameters (both encoders, batch-norm statistics included) and the salient
    /// encoder's fixed input whitening, when it has one.
    pub fn parameters(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut tensors: std::collections::HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::Invalid("internal: variable map poisoned".into()))?
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        use crate::model::InputWhitening;
        match self.salient.input_whitening() {
            Some(InputWhitening::Kernel(filter)) => {
                tensors.insert(crate::model::INPUT_FILTER_TENSOR.into(), filter.clone());
            }
            Some(InputWhitening::Matrix { mean, matrix }) => {
                tensors.insert(crate::model::INPUT_MEAN_TENSOR.into(), mean.clone());
                tensors.insert(crate::model::INPUT_MATRIX_TENSOR.into(), matrix.clone());
            }
            None => {}
        }
        Ok(tensors)
    }
}

/// Serialises tensors in the safetensors format, in memory (so the file can be written atomically).
pub fn safetensors_bytes(tensors: &std::collections::HashMap<String, Tensor>) -> Result<Vec<u8>> {
    safetensors::serialize(tensors, None)
        .map_err(|e| Error::Invalid(format!("internal: cannot serialise tensors: {e}")))
}
