//! all-MiniLM-L6-v2 sentence embeddings on candle (CPU): BERT, mean pooling, L2 normalization.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use super::{normalize, Embed};

/// Longer inputs are truncated, as sentence-transformers does for this model.
const MAX_TOKENS: usize = 256;

pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    dims: usize,
    unk: Option<u32>,
}

impl MiniLm {
    /// Loads config.json, model.safetensors and tokenizer.json from `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let cpath = dir.join("config.json");
        let config = std::fs::read(&cpath).map_err(|e| format!("{}: {e}", cpath.display()))?;
        let config: Config =
            serde_json::from_slice(&config).map_err(|e| format!("{}: {e}", cpath.display()))?;
        let dims = config.hidden_size;

        let device = Device::Cpu;
        let wpath = dir.join("model.safetensors");
        let weights = candle_core::safetensors::load(&wpath, &device)
            .map_err(|e| format!("{}: {e}", wpath.display()))?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| format!("minilm: load: {e}"))?;

        let tpath = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tpath).map_err(|e| format!("{}: {e}", tpath.display()))?;
        // The file pads to 128 and truncates at 128; one text needs no padding.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| format!("{}: {e}", tpath.display()))?;

        let unk = tokenizer.token_to_id("[UNK]");
        Ok(Self {
            model,
            tokenizer,
            dims,
            unk,
        })
    }

    fn forward(&self, text: &str) -> candle_core::Result<Vec<f32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| candle_core::Error::Msg(format!("tokenize: {e}")))?;
        let device = &self.model.device;
        let ids = Tensor::new(enc.get_ids(), device)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let mask = Tensor::new(enc.get_attention_mask(), device)?.unsqueeze(0)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // [1, T, dims]

        // Mean over the tokens the mask keeps.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [1, T, 1]
        let sum = hidden.broadcast_mul(&mask)?.sum(1)?; // [1, dims]
        let count = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // [1, 1]
        sum.broadcast_div(&count)?.squeeze(0)?.to_vec1::<f32>()
    }
}

impl Embed for MiniLm {
    fn dims(&self) -> usize {
        self.dims
    }

    /// Fits the window, and at least half of its word pieces are in the vocabulary.
    fn comparable(&self, text: &str) -> bool {
        if text.len() > super::MAX_COMPARABLE_BYTES {
            return false;
        }
        let Ok(enc) = self.tokenizer.encode_fast(text, false) else {
            return false;
        };
        let ids = enc.get_ids();
        let unknown = ids.iter().filter(|&&id| Some(id) == self.unk).count();
        enc.get_overflowing().is_empty()
            && ids.len() <= MAX_TOKENS - 2
            && !ids.is_empty()
            && unknown * 2 < ids.len()
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let mut v = self.forward(text).map_err(|e| format!("minilm: {e}"))?;
        if v.len() != self.dims {
            return Err(format!(
                "minilm: got {} dims, expected {}",
                v.len(),
                self.dims
            ));
        }
        normalize(&mut v);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn model() -> MiniLm {
        let base = std::env::var("TOLLGATE_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
        let dir = base.join("minilm");
        assert!(
            dir.join("model.safetensors").exists(),
            "MiniLM model missing in {}: run scripts/fetch-models.sh",
            dir.display()
        );
        MiniLm::load(&dir).unwrap()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn close(got: &[f32], want: &[f32]) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-4, "component {i}: got {g}, want {w}");
        }
    }

    // Reference values from a numpy BERT forward pass over the same weights.
    #[test]
    fn matches_reference() {
        let m = model();
        assert_eq!(m.dims(), 384);
        let hello = m.embed("Hello world.").unwrap();
        assert_eq!(hello.len(), 384);
        close(&hello, &[-0.027708, 0.026686, -0.015977, 0.027548]);
        close(&hello[382..], &[0.042811, 0.026455]);
        let france = m.embed("What is the capital of France?").unwrap();
        close(&france, &[0.082048, 0.036055, -0.003893, -0.004881]);
        let bread = m.embed("A man is eating a piece of bread.").unwrap();
        close(&bread, &[0.052518, 0.055241, -0.011188, -0.005745]);
        assert!((dot(&hello, &hello) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn similarity_orders() {
        let m = model();
        let e = |t: &str| m.embed(t).unwrap();
        let food = e("A man is eating food.");
        let bread = e("A man is eating a piece of bread.");
        let reset = e("How do I reset my password");
        let change = e("How can I change my password?");
        let capital = e("What is the capital of France?");
        assert!(
            (dot(&food, &bread) - 0.7553).abs() < 1e-4,
            "{}",
            dot(&food, &bread)
        );
        assert!(
            (dot(&reset, &change) - 0.855038).abs() < 1e-4,
            "{}",
            dot(&reset, &change)
        );
        assert!(dot(&reset, &change) > dot(&reset, &capital) + 0.5);
    }

    #[test]
    fn edge_inputs() {
        let m = model();
        for text in ["", &"word ".repeat(600)] {
            let v = m.embed(text).unwrap();
            assert_eq!(v.len(), 384);
            assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn shared_across_threads() {
        let m = std::sync::Arc::new(model());
        let want = m.embed("Hello world.").unwrap();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || m.embed("Hello world.").unwrap())
            })
            .collect();
        for h in handles {
            close(&h.join().unwrap(), &want);
        }
    }
}
