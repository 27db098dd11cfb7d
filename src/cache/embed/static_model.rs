//! Static token embeddings (model2vec style, the tokenlearn int8 model): a sentence vector is the
//! mean of per-token vectors, each a row of a quantized table scaled by a per-token weight.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tokenizers::Tokenizer;

use super::Embed;

/// Tokens past this are dropped, as the shipped encoder does.
const MAX_TOKENS: usize = 512;

pub struct StaticModel {
    tokenizer: Tokenizer,
    /// Row-major [rows, dims] table, dequantized once at load.
    table: Vec<f32>,
    dims: usize,
    /// Token id -> table row.
    mapping: Vec<u32>,
    /// Token id -> weight.
    weights: Vec<f32>,
}

impl StaticModel {
    /// Loads config.json, model.safetensors and tokenizer.json from `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let config = read(&dir.join("config.json"))?;
        let config: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?;
        if config.get("normalize").and_then(|v| v.as_bool()) == Some(false) {
            return Err("static model: config has normalize=false, expected true".into());
        }

        let path = dir.join("model.safetensors");
        let bytes = read(&path)?;
        let st =
            SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let tensor = |name: &str| {
            st.tensor(name)
                .map_err(|e| format!("{}: tensor {name}: {e}", path.display()))
        };

        // The int8 table was quantized with one global scale that is not stored; it cancels
        // out under L2 normalization, so the raw values serve as they are.
        let emb = tensor("embeddings")?;
        let (rows, dims) = match emb.shape() {
            [r, d] if *r > 0 && *d > 0 => (*r, *d),
            s => {
                return Err(format!(
                    "static model: embeddings shape {s:?}, expected 2-D"
                ))
            }
        };
        let table: Vec<f32> = match emb.dtype() {
            Dtype::I8 => emb.data().iter().map(|&b| b as i8 as f32).collect(),
            Dtype::F32 => f32s(emb.data()),
            d => {
                return Err(format!(
                    "static model: embeddings dtype {d:?} not supported"
                ))
            }
        };
        if table.len() != rows * dims {
            return Err("static model: embeddings data size does not match its shape".into());
        }

        let mapping = tensor("mapping")?;
        if mapping.dtype() != Dtype::I64 {
            return Err(format!(
                "static model: mapping dtype {:?}, expected I64",
                mapping.dtype()
            ));
        }
        let mapping = mapping
            .data()
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                let row = i64::from_le_bytes(b);
                if row >= 0 && (row as usize) < rows {
                    Ok(row as u32)
                } else {
                    Err(format!(
                        "static model: mapping row {row} out of range 0..{rows}"
                    ))
                }
            })
            .collect::<Result<Vec<u32>, String>>()?;

        let weights = tensor("weights")?;
        if weights.dtype() != Dtype::F32 {
            return Err(format!(
                "static model: weights dtype {:?}, expected F32",
                weights.dtype()
            ));
        }
        let weights = f32s(weights.data());
        if weights.len() != mapping.len() {
            return Err(format!(
                "static model: {} weights for {} mapped tokens",
                weights.len(),
                mapping.len()
            ));
        }

        let tpath = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tpath).map_err(|e| format!("{}: {e}", tpath.display()))?;
        // Truncation is done on the ids; the file's padding setting is not wanted.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| format!("{}: {e}", tpath.display()))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > mapping.len() {
            return Err(format!(
                "static model: tokenizer has {vocab} tokens, model maps {}",
                mapping.len()
            ));
        }

        Ok(Self {
            tokenizer,
            table,
            dims,
            mapping,
            weights,
        })
    }
}

impl Embed for StaticModel {
    fn dims(&self) -> usize {
        self.dims
    }

    /// An empty text (no tokens) gives the zero vector.
    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| format!("static model: tokenize: {e}"))?;
        let ids = enc.get_ids();
        let ids = &ids[..ids.len().min(MAX_TOKENS)];

        let mut out = vec![0f32; self.dims];
        for &id in ids {
            let id = id as usize;
            let (Some(&row), Some(&w)) = (self.mapping.get(id), self.weights.get(id)) else {
                return Err(format!("static model: token id {id} out of range"));
            };
            let start = row as usize * self.dims;
            let Some(v) = self.table.get(start..start + self.dims) else {
                return Err(format!("static model: row {row} out of range"));
            };
            for (o, x) in out.iter_mut().zip(v) {
                *o += x * w;
            }
        }
        if !ids.is_empty() {
            let n = ids.len() as f32;
            out.iter_mut().for_each(|o| *o /= n);
        }
        normalize(&mut out);
        Ok(out)
    }
}

/// Scales `v` to unit length; the zero vector stays zero.
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Instant;

    fn model() -> StaticModel {
        let base = std::env::var("TOLLGATE_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
        let dir = base.join("static");
        assert!(
            dir.join("model.safetensors").exists(),
            "static model missing in {}: run scripts/fetch-models.sh",
            dir.display()
        );
        StaticModel::load(&dir).unwrap()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn close(got: &[f32], want: &[f32]) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-4, "component {i}: got {g}, want {w}");
        }
    }

    // Reference values from the shipped encoder (static_model.get_embeddings).
    #[test]
    fn matches_reference() {
        let m = model();
        assert_eq!(m.dims(), 64);
        let hello = m.embed("Hello world.").unwrap();
        close(&hello, &[-0.2234682, -0.1503082, -0.2626614, -0.0635091]);
        close(
            &hello[60..],
            &[-0.0335006, -0.1800059, 0.0299454, 0.2043272],
        );
        let france = m.embed("What is the capital of France?").unwrap();
        close(&france, &[-0.342376, -0.159006, -0.211258, -0.0544956]);
        let reset = m.embed("How do I reset my password").unwrap();
        close(&reset, &[0.0109915, 0.0374102, 0.0155487, -0.1250015]);
        let bread = m.embed("A man is eating a piece of bread.").unwrap();
        close(&bread, &[-0.1636678, -0.1853243, 0.0015486, -0.0343264]);
        assert!((dot(&hello, &hello) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn similarity_orders() {
        let m = model();
        let e = |t: &str| m.embed(t).unwrap();
        let reset = e("How do I reset my password");
        let change = e("How can I change my password?");
        let capital = e("What is the capital of France?");
        let food = e("A man is eating food.");
        let bread = e("A man is eating a piece of bread.");
        // Cosines of the reference vectors.
        assert!(
            (dot(&reset, &change) - 0.713458).abs() < 1e-4,
            "{}",
            dot(&reset, &change)
        );
        assert!(
            (dot(&food, &bread) - 0.700834).abs() < 1e-4,
            "{}",
            dot(&food, &bread)
        );
        assert!(dot(&reset, &change) > dot(&reset, &capital));
    }

    #[test]
    fn empty_is_zero() {
        let m = model();
        let v = m.embed("").unwrap();
        assert_eq!(v.len(), 64);
        assert!(v.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn long_text_is_truncated() {
        let m = model();
        let long = "word ".repeat(600);
        let v = m.embed(&long).unwrap();
        assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
    }

    // Timing, printed only: cargo test --release --lib static_model::tests::timing -- --nocapture
    #[test]
    fn timing() {
        let m = model();
        let text = "How can I change my password?";
        for _ in 0..100 {
            m.embed(text).unwrap();
        }
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(m.embed(std::hint::black_box(text)).unwrap());
        }
        println!("static model: {:?} per short sentence", t.elapsed() / n);
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        let t = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(m.embed(&long).unwrap());
        }
        println!("static model: {:?} per 2.2 KB text", t.elapsed() / 100);
    }
}
