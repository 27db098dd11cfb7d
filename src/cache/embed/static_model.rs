//! Static token embeddings (model2vec style, the tokenlearn int8 model): a sentence vector is the
//! mean of per-token vectors, each a row of a quantized table scaled by a per-token weight.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tokenizers::{Model, NormalizedString, Normalizer, Tokenizer};

use super::{normalize, Embed};

/// Tokens past this are dropped, as the shipped encoder does.
const MAX_TOKENS: usize = 512;

pub struct StaticModel {
    tokenizer: Tokenizer,
    /// Plain ASCII text may skip the normalizer and pre-tokenizer (see `ascii_ids`).
    ascii_fast: bool,
    /// Added-token strings; text holding one takes the full tokenizer.
    added: Vec<String>,
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

        let ascii_fast = ascii_fast_path_ok(&tokenizer);
        let added = tokenizer
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content)
            .collect();
        Ok(Self {
            tokenizer,
            ascii_fast,
            added,
            table,
            dims,
            mapping,
            weights,
        })
    }

    /// Token ids from the full tokenizer pipeline, truncated.
    fn full_ids(&self, text: &str) -> Result<Vec<u32>, String> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| format!("static model: tokenize: {e}"))?;
        let ids = enc.get_ids();
        Ok(ids[..ids.len().min(MAX_TOKENS)].to_vec())
    }

    /// Token ids for plain ASCII text without the normalizer and pre-tokenizer, which on
    /// such text only split at whitespace and prefix each word with '▁' (checked at load).
    /// About 10x faster than `full_ids`; None when the text does not qualify.
    fn ascii_ids(&self, text: &str) -> Option<Result<Vec<u32>, String>> {
        let plain = text
            .bytes()
            .all(|b| matches!(b, b' '..=b'~' | b'\t' | b'\n' | b'\r'));
        if !self.ascii_fast || !plain || self.added.iter().any(|a| text.contains(a.as_str())) {
            return None;
        }
        let model = self.tokenizer.get_model();
        let mut ids = Vec::new();
        let mut word = String::new();
        for w in text.split_ascii_whitespace() {
            word.clear();
            word.push('\u{2581}');
            word.push_str(w);
            match model.tokenize(&word) {
                Ok(tokens) => ids.extend(tokens.iter().map(|t| t.id)),
                Err(e) => return Some(Err(format!("static model: tokenize: {e}"))),
            }
            if ids.len() >= MAX_TOKENS {
                ids.truncate(MAX_TOKENS);
                break;
            }
        }
        Some(Ok(ids))
    }
}

impl Embed for StaticModel {
    fn dims(&self) -> usize {
        self.dims
    }

    fn comparable(&self, text: &str) -> bool {
        if text.len() > super::MAX_COMPARABLE_BYTES {
            return false;
        }
        self.tokenizer
            .encode_fast(text, false)
            .is_ok_and(|e| !e.get_ids().is_empty() && e.get_ids().len() <= MAX_TOKENS)
    }

    /// An empty text (no tokens) gives the zero vector.
    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let ids = match self.ascii_ids(text) {
            Some(ids) => ids?,
            None => self.full_ids(text)?,
        };

        let mut out = vec![0f32; self.dims];
        for &id in &ids {
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

/// Whether `ascii_ids` matches the full tokenizer: the pre-tokenizer is whitespace split then
/// Metaspace ('▁' prepended to every word), and the normalizer, which works one grapheme at a
/// time, leaves printable ASCII as it is and keeps whitespace as whitespace.
fn ascii_fast_path_ok(tokenizer: &Tokenizer) -> bool {
    let want = serde_json::json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true}
        ]
    });
    if serde_json::to_value(tokenizer.get_pre_tokenizer()).ok() != Some(want) {
        return false;
    }
    let Some(norm) = tokenizer.get_normalizer() else {
        return true;
    };
    let kind = serde_json::to_value(norm).ok();
    if kind.as_ref().and_then(|v| v.get("type")?.as_str()) != Some("Precompiled") {
        return false;
    }
    let apply = |s: &str| {
        let mut n = NormalizedString::from(s);
        norm.normalize(&mut n).ok().map(|_| n.get().to_string())
    };
    let same = (b' '..=b'~').all(|b| {
        let s = (b as char).to_string();
        apply(&s).as_deref() == Some(s.as_str())
    });
    let spaces = ["\t", "\n", "\r", "\r\n"].iter().all(|s| {
        apply(s).is_some_and(|out| !out.is_empty() && out.chars().all(char::is_whitespace))
    });
    same && spaces
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
        assert_eq!(m.full_ids("Hello world.").unwrap(), [35376, 8997, 3]);
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
        assert_eq!(m.ascii_ids(&long).unwrap().unwrap().len(), MAX_TOKENS);
        assert_eq!(m.full_ids(&long).unwrap().len(), MAX_TOKENS);
        let v = m.embed(&long).unwrap();
        assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
    }

    // The ASCII shortcut must give the same ids as the full tokenizer.
    #[test]
    fn ascii_path_matches_full_tokenizer() {
        let m = model();
        assert!(
            m.ascii_fast,
            "ASCII fast path disabled for the shipped tokenizer"
        );
        let all: String = (b' '..=b'~').map(|b| b as char).collect();
        let mut texts = vec![
            String::new(),
            "   ".into(),
            "Hello world.".into(),
            "  Leading and trailing\t\r\n spaces  ".into(),
            "don't re-use e-mail@example.com (x+y)/2 == 3.14; [a] {b} #tag $5 100% ~ok`".into(),
            "CamelCaseWord snake_case_word kebab-case-word ALLCAPS 12345 0x1F".into(),
            "a\r\nb\nc\rd\te".into(),
            all.clone(),
            all.chars().rev().collect(),
            "word ".repeat(600),
        ];
        // Pseudo-random printable strings.
        let mut x: u32 = 12345;
        for _ in 0..300 {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            let len = (x >> 26) as usize;
            let t: String = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                    let b = (x >> 24) as u8 % 100;
                    match b {
                        0..=94 => (b' ' + b) as char,
                        _ => [' ', ' ', '\n', '\t', '\r'][(b - 95) as usize],
                    }
                })
                .collect();
            texts.push(t);
        }
        for t in &texts {
            let fast = m.ascii_ids(t).expect("plain ASCII").unwrap();
            assert_eq!(fast, m.full_ids(t).unwrap(), "text {t:?}");
        }
        // Not plain ASCII, or holding an added token: the full tokenizer.
        for t in [
            "Café au lait",
            "smart \u{2019}quotes\u{2019}",
            "a <pad> b",
            "x<unk>",
            "bell\u{7}",
        ] {
            assert!(m.ascii_ids(t).is_none(), "text {t:?}");
            let v = m.embed(t).unwrap();
            assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
        }
    }
}
