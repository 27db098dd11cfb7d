//! Embedders for the semantic cache layer: text in, a unit-length vector out.

pub mod minilm;
pub mod remote;
pub mod static_model;

/// A local embedding model. Vectors are L2-normalized, so cosine is a dot product.
pub trait Embed: Send + Sync {
    fn dims(&self) -> usize;
    fn embed(&self, text: &str) -> Result<Vec<f32>, String>;
    /// Whether the model sees all of `text` (it is not cut at the model's window) and knows
    /// most of it. Texts that differ only past the window, or only in tokens the model does not
    /// know, would embed alike: the cache compares only comparable texts.
    fn comparable(&self, text: &str) -> bool;
}

/// Longer texts are never compared by meaning (and never tokenized on the request path).
pub const MAX_COMPARABLE_BYTES: usize = 16 * 1024;

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}
